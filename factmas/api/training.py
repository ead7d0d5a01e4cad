"""Training from Python: ``train(config | **overrides) -> Run`` and ``resume(path) -> Run``.

Both call the continual trainer (``factmas.trainer.train`` / ``factmas.trainer.resume``) and return the
run directory as a ``Run``. ``make_config`` turns a config (a ``RunConfig``, a dict as in config.json,
or a JSON file) and keyword overrides into a checked ``RunConfig``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from factmas.api.run import Run

if TYPE_CHECKING:
    from factmas.config import RunConfig

SECTIONS = ("model", "loss", "train", "eval")


def make_config(config: Any = None, **overrides: Any) -> RunConfig:
    """A ``RunConfig`` from ``config`` with ``overrides`` applied; ``config`` is not changed.

    Args:
        config: None (the defaults), a ``RunConfig``, a dict (config.json's "config" layout: {"data",
            "out", "model": {...}, "train": {...}, ...}) or the path of such a JSON file.
        overrides: ``data=``, ``out=``; a section as a dict (``train={"epochs": 1}``, merged into
            that section); or a field of one section by its name (``epochs=1``, ``method="mas"``,
            ``reg_lambda=1.0``, ``backbone="small_cnn"``), which must name exactly one section's field.
    Raises:
        ConfigError: an unknown key or one that names fields of several sections (the message lists
            them), a value of the wrong type, an unreadable file.
    """
    from factmas.config import ConfigError, RunConfig
    if config is None:
        base = RunConfig().to_dict()
    elif isinstance(config, RunConfig):
        base = config.to_dict()
    elif isinstance(config, dict):
        base = RunConfig.from_dict(config).to_dict()
    elif isinstance(config, (str, Path)):
        base = RunConfig.from_json(config).to_dict()
    else:
        raise ConfigError(f"config: expected a RunConfig, a dict or a JSON file, got {type(config).__name__}")
    owners: dict[str, list[str]] = {}
    for section in SECTIONS:
        for name in base[section]:
            owners.setdefault(name, []).append(section)
    for key, value in overrides.items():
        if key in ("data", "out"):
            base[key] = "" if value is None else str(value)
        elif key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a dict of {key} settings, got {type(value).__name__}")
            base[key] = {**base[key], **value}
        elif len(owners.get(key, [])) == 1:
            base[owners[key][0]][key] = value
        elif key in owners:
            raise ConfigError(f"{key!r} is a field of {', '.join(owners[key])}; pass it as "
                              f"{owners[key][0]}={{{key!r}: ...}}")
        else:
            raise ConfigError(f"unknown key {key!r}; allowed: data, out, {', '.join(SECTIONS)} or a "
                              "field of one of them (factmas.config)")
    return RunConfig.from_dict(base)


def train(config: Any = None, /, *, overwrite: bool = False, limit_tasks: int | None = None,
          progress: bool = True, command: str = "", **overrides: Any) -> Run:
    """Train a run: the tasks of ``train.split`` in order with ``train.method``, evaluated after each.

    Args:
        config, overrides: the configuration (``make_config``); ``data`` (the HDF5 dataset) and
            ``out`` (the new run directory) are required.
        overwrite: delete an earlier run in ``out`` first.  limit_tasks: stop after the first N tasks
            (continue with ``resume``).  progress: progress bars.  command: recorded in config.json.
    Returns:
        The run (``Run``); ``Run.state`` holds the trainer's final ``RunState``.
    Raises:
        ConfigError, UsageError, RunDirError, DatasetError: a bad setting, a run already in ``out``,
            a bad dataset — before anything is written.  TrainingError, CheckpointError: while
            training (the completed tasks' checkpoints are kept).
    Source: the trainer, ``factmas.trainer`` (MAS: Aljundi et al., ECCV 2018; model: Elhoseiny et
    al., AAAI 2017).
    """
    from factmas.trainer import UsageError
    from factmas.trainer import train as _train
    cfg = make_config(config, **overrides)
    if not cfg.data or not cfg.out:
        raise UsageError("data (the dataset file) and out (the run directory) are required")
    cfg = dataclasses.replace(cfg, data=str(Path(cfg.data).resolve()))
    state = _train(cfg, command=command, overwrite=overwrite, limit_tasks=limit_tasks,
                   progress=progress)
    return _run_of(cfg.out, state, cfg)


def train_config(cfg: RunConfig, *, command: str = "", overwrite: bool = False,
                 limit_tasks: int | None = None, progress: bool = True) -> Run:
    """``train`` of a ready ``RunConfig`` as is (``factmas train`` resolves its options into one)."""
    from factmas.trainer import train as _train
    state = _train(cfg, command=command, overwrite=overwrite, limit_tasks=limit_tasks,
                   progress=progress)
    return _run_of(cfg.out, state, cfg)


def resume(path: str | Path, *, limit_tasks: int | None = None, device: str | None = None,
           threads: int | None = None, progress: bool = True, num_workers: int | None = None) -> Run:
    """Continue the run in ``path`` from its last checkpoint; ends with the same weights and metrics
    as an uninterrupted run.

    Args:
        limit_tasks: stop once N tasks are trained.  device: "auto", "cpu", "cuda" (default: the
            run's).  threads: torch CPU threads.  num_workers: DataLoader workers reading the
            image batches (default: the run's ``train.num_workers``; results do not depend on it).
    Raises:
        RunDirError: not a run, or its dataset changed.  UsageError, ConfigError: bad settings.
        CheckpointError, TrainingError: a checkpoint that cannot be used, or while training.
    """
    from factmas.trainer import resume as _resume
    state = _resume(path, limit_tasks=limit_tasks, device=device, threads=threads, progress=progress,
                    num_workers=num_workers)
    return _run_of(path, state)


def _run_of(path: str | Path, state: Any, cfg: RunConfig | None = None) -> Run:
    """The ``Run`` of a directory just trained, holding the trainer's state. A process other than
    rank 0 of a distributed run may not see config.json (rank 0 alone writes, maybe on another
    machine): its ``Run`` then holds ``cfg`` as its configuration."""
    from factmas.run.load import RunLoadError
    try:
        run = Run(path)
    except RunLoadError:
        if cfg is None:
            raise
        run = Run.__new__(Run)
        run.path, run.data_path, run.checkpoint, run.device = Path(path), None, "last.pt", "auto"
        run._config, run.record, run._loaded, run._with_images = cfg, {}, None, False
    run.state = state
    return run
