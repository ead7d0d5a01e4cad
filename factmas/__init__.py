"""factmas: continual fact learning with a two-branch embedding and Memory Aware Synapses.

The public API (``factmas.api``; walk-through in docs/api.md)::

    import factmas
    run = factmas.train(data="data/flickr8k.h5", out="runs/mas", method="mas", reg_lambda=1.0)
    run = factmas.load_run("runs/main/mas")          # or factmas.resume(path)
    run.results.R["fact_to_image_map"]               # float64 [stages, tasks]
    run.query(["photo.jpg"], k=5)                    # [Answer(fact, distance, probability), ...]
    run.search("dog, run through, grass", k=10)      # [Hit(image, distance, true), ...]
    run.evaluate(image_split="val")                  # Results; writes nothing into the run

``import factmas`` imports nothing else: each public name is looked up in the plain dict ``API``
(name → module) the first time it is used, so ``factmas --help`` starts as quickly as before the API
existed (bench/cli_startup.py).

The trainer itself is the package ``factmas.trainer``; ``factmas.train`` is the API's function.
"""
from __future__ import annotations

import importlib

TYPE_CHECKING = False                   # typing.TYPE_CHECKING, without importing typing (start-up time)

__version__ = "0.1.0"

# public name -> the module that defines it (the API of docs/api.md; tests/api/test_api.py checks it)
API = {name: "factmas.api.records" for name in
       ("Answer", "CheckpointMetrics", "Comparison", "Embeddings", "Hit", "Results")}
API |= {"EvaluateError": "factmas.api.evaluate", "Run": "factmas.api.run", "load_run": "factmas.api.run",
        "build_feature_cache": "factmas.api.tools", "compare": "factmas.api.tools",
        "make_gallery": "factmas.api.tools", "read_dataset": "factmas.api.tools",
        "make_config": "factmas.api.training", "resume": "factmas.api.training",
        "train": "factmas.api.training"}

__all__ = sorted(API) + ["__version__"]

if TYPE_CHECKING:                       # what static checkers and IDEs see
    from factmas.api import (Answer, CheckpointMetrics, Comparison, Embeddings,  # noqa: F401
                             EvaluateError, Hit, Results, Run, build_feature_cache, compare,
                             load_run, make_config, make_gallery, read_dataset, resume, train)


def __getattr__(name: str) -> object:
    """A public name of ``API``, imported on first use (``train`` loads torch)."""
    if name in API:
        value = getattr(importlib.import_module(API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'factmas' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
