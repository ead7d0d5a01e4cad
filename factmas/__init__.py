"""factmas: continual fact learning with a two-branch embedding and Memory Aware Synapses.

The public API (``factmas.api``; walk-through in docs/api.md)::

    import factmas
    run = factmas.train(data="data/flickr8k.h5", out="runs/mas", method="mas", reg_lambda=1.0)
    run = factmas.load_run("runs/main/mas")          # or factmas.resume(path)
    run.results.R["fact_to_image_map"]               # float64 [stages, tasks]
    run.query(["photo.jpg"], k=5)                    # [Answer(fact, distance, probability), ...]
    run.search("dog, run through, grass", k=10)      # [Hit(image, distance, true), ...]
    run.evaluate(image_split="val")                  # Results; writes nothing into the run

``import factmas`` loads neither torch nor numpy; they load when a function needs them.

``factmas.train`` is both the trainer's package (``factmas.train.loop``, ...) and, called, the API's
``factmas.api.train``: the package's module class forwards a call (``factmas/train/__init__.py``), so
that ``factmas.train(...)`` works however the package was imported first.
"""
from factmas.api import (Answer, CheckpointMetrics, Comparison, Embeddings, EvaluateError, Hit, Results,
                         Run, build_feature_cache, compare, load_run, make_config, make_gallery,
                         read_dataset, resume)

__version__ = "0.1.0"

__all__ = ["Answer", "CheckpointMetrics", "Comparison", "Embeddings", "EvaluateError", "Hit", "Results",
           "Run", "__version__", "build_feature_cache", "compare", "load_run", "make_config",
           "make_gallery", "read_dataset", "resume", "train"]


def __getattr__(name: str):
    """``factmas.train``: the trainer package, callable as ``factmas.api.train`` (loads torch on
    first use; module docstring)."""
    if name == "train":
        import importlib
        return importlib.import_module("factmas.train")
    raise AttributeError(f"module 'factmas' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"train"})
