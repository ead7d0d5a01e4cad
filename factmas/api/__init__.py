"""The public Python API of factmas: what ``import factmas`` offers, and what the commands call.

- ``training``: ``train(config | **overrides) -> Run``, ``resume(path) -> Run``, ``make_config``.
- ``run``: ``Run`` (a run directory: ``config``, ``results``, ``evaluate``, ``query``, ``search``,
  ``embed_images``, ``embed_facts``) and ``load_run(path) -> Run``.
- ``evaluate``: evaluating a finished run again (``Run.evaluate``, ``factmas evaluate``).
- ``tools``: ``compare``, ``make_gallery``, ``build_feature_cache``, ``read_dataset``.
- ``records``: the frozen dataclasses returned (``Answer``, ``Hit``, ``Embeddings``, ``Results``,
  ``CheckpointMetrics``, ``Comparison``).

Importing this package loads neither torch nor numpy (``factmas --help`` stays quick): every module
here imports the library inside its functions. Walk-through: docs/api.md.

May import: every library package of factmas (e.g. ``factmas.trainer``, ``run``, ``evaluation``,
``experiments``, ``explore``, ``data``, ``model``, ``config``).
Never ``factmas.cli`` (the commands build on this package), and no library package imports from here.
"""
from factmas.api.evaluate import EvaluateError
from factmas.api.records import Answer, CheckpointMetrics, Comparison, Embeddings, Hit, Results
from factmas.api.run import Run, load_run
from factmas.api.tools import build_feature_cache, compare, make_gallery, read_dataset
from factmas.api.training import make_config, resume, train

__all__ = ["Answer", "CheckpointMetrics", "Comparison", "Embeddings", "EvaluateError", "Hit", "Results",
           "Run", "build_feature_cache", "compare", "load_run", "make_config", "make_gallery",
           "read_dataset", "resume", "train"]
