"""Loading a trained run: its configuration, its dataset and its model with the weights of a checkpoint.

Every command that reads a finished run (``query``, ``search``, ``gallery``, ``evaluate``) goes through
``load_run``. Importing this module loads no torch (the commands' ``--help`` stays quick).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any
from factmas.errors import FactmasError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


class RunLoadError(FactmasError, RuntimeError):
    """The run directory, its checkpoint or its dataset cannot be used; the message names which."""


def checkpoint_file(run_dir: str | Path, name: str | None) -> Path:
    """Path of checkpoint ``name`` of a run: "last.pt" (default), "task2.pt", "task2", "last", or a
    path (``RunDir.checkpoint``)."""
    from factmas.run.rundir import RunDir
    return RunDir(run_dir).checkpoint(name)


def load_run(run_dir: str | Path, data_path: str | None = None, checkpoint: str | None = None,
             device: str = "auto", load_images: bool = False) -> tuple[Any, Any, torch.nn.Module, dict]:
    """(RunConfig, FactData, model in eval mode on ``device``, checkpoint dict) of a trained run.

    Raises:
        RunLoadError: no config.json, an invalid config, a missing/unreadable dataset or checkpoint,
            or weights that do not fit the configured model (the message names the file).
    """
    from factmas.config import ConfigError
    from factmas.data.dataset import DatasetError, read_dataset
    from factmas.model import build_model
    from factmas.machine.device import UsageError, resolve_device
    from factmas.run.checkpoint import CheckpointError, load_checkpoint
    from factmas.run.rundir import RunDir, RunDirError

    run = RunDir(run_dir)
    try:
        cfg, record = run.read_config()
        data = read_dataset(data_path or cfg.data, load_images=load_images)
        if _content(record.get("data_provenance")) != _content(data.provenance):
            log.warning("%s differs from the dataset run %s was trained on (build options or counts "
                        "in config.json's data_provenance): facts, vocabulary or images may not match",
                        data.path, run_dir)
        dev = resolve_device(device)
        ckpt = load_checkpoint(run.checkpoint(checkpoint), map_location=dev)
    except (RunDirError, ConfigError, DatasetError, CheckpointError, UsageError) as e:
        raise RunLoadError(str(e)) from e
    model = build_model(cfg.model, len(data.vocab))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        from factmas.run.checkpoint import mismatch_message
        raise RunLoadError(mismatch_message(run.checkpoint(checkpoint), ckpt, cfg.to_dict()["model"], e)
                           + f" (config.json, dataset {data.path}: {len(data.vocab)} words)") from e
    return cfg, data, model.to(dev).eval(), ckpt


def _content(provenance: Any) -> dict:
    """The parts of a dataset's provenance that fix its content (build options and counts)."""
    p = provenance if isinstance(provenance, dict) else {}
    return {k: p[k] for k in ("options", "counts") if k in p}
