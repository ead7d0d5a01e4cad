"""Checkpoints of a continual run: ``RUN_DIR/checkpoints/task{s}.pt`` after each stage, and ``last.pt``.

A checkpoint is a dict of tensors and plain containers only, so it loads with
``torch.load(..., weights_only=True)``::

    format "factmas-checkpoint", version 1
    stage            int   index of the last completed training stage (a stage is one task, or all
                           tasks at once for joint training)
    completed_tasks  list[int]
    model            model.state_dict()
    optimizer        optimizer.state_dict() of the last stage (Adam moments)
    method           method.state_dict() (e.g. MAS: 'omega.<name>', 'anchor.<name>')
    method_name      str
    config           RunConfig.to_dict()
    history          list of evaluation rows (plain JSON data), "initial" first
    metrics_lines    int   number of metrics.jsonl lines written when the stage ended

Files are written to a temporary name and renamed (``factmas.io.atomic_path``), so a killed run
never leaves a half-written checkpoint.
"""
from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from factmas.io import atomic_write_bytes, finite_or_none
from factmas.errors import FactmasError

log = logging.getLogger(__name__)

FORMAT = "factmas-checkpoint"
VERSION = 1
REQUIRED = ("stage", "completed_tasks", "model", "optimizer", "method", "method_name", "config",
            "history", "metrics_lines")


class CheckpointError(FactmasError, RuntimeError):
    """A checkpoint is missing, unreadable, or not a factmas checkpoint; the message names the file."""


def checkpoint_dir(run_dir: str | Path) -> Path:
    """``RUN_DIR/checkpoints``."""
    return Path(run_dir) / "checkpoints"


def stage_path(run_dir: str | Path, stage: int) -> Path:
    """``RUN_DIR/checkpoints/task{stage}.pt``."""
    return checkpoint_dir(run_dir) / f"task{stage}.pt"


def last_path(run_dir: str | Path) -> Path:
    """``RUN_DIR/checkpoints/last.pt``: a copy of the newest stage checkpoint."""
    return checkpoint_dir(run_dir) / "last.pt"


def plain(obj: Any) -> Any:
    """``obj`` as plain JSON-able Python (numpy/torch scalars and arrays → float/int/lists).

    NaN and ±inf floats are kept (``torch.load(weights_only=True)`` reads them back).
    """
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return plain(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return plain(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint: {obj!r}")


def task_names(tasks: list[int]) -> str:
    """0-based task indices as a user reads them, 1-based: [0, 1] → "T1, T2" ("none" if empty)."""
    return ", ".join(f"T{int(t) + 1}" for t in tasks) or "none"


def save_checkpoint(run_dir: str | Path, stage: int, *, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, method: Any, completed_tasks: list[int],
                    config: dict, history: list, metrics_lines: int) -> Path:
    """Write ``task{stage}.pt`` and ``last.pt`` atomically; returns the stage checkpoint's path.

    Raises:
        TypeError: ``history`` or ``config`` holds something that is not plain data.
    """
    state = {
        "format": FORMAT, "version": VERSION, "stage": int(stage),
        "completed_tasks": [int(t) for t in completed_tasks],
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "method": dict(method.state_dict()), "method_name": str(method.name),
        "config": plain(config), "history": plain(history), "metrics_lines": int(metrics_lines),
    }
    path = stage_path(run_dir, stage)
    buf = io.BytesIO()            # serialized in memory, so that a full disk or a file-size limit is an
    torch.save(state, buf)        # OSError naming the file (torch's zip writer says "unexpected pos")
    data = buf.getvalue()
    for target in (path, last_path(run_dir)):
        atomic_write_bytes(target, data)
    log.info("checkpoint saved: %s (tasks done: %s)", path, task_names(state["completed_tasks"]))
    return path


def mismatch_message(path: str | Path, ckpt: dict, model_cfg: dict, error: Exception) -> str:
    """One readable line for weights that do not fit a model: the checkpoint's recorded backbone
    (and other differing ``model`` settings) against the run's, e.g. "this checkpoint is small_cnn,
    the run is efficientnet_lite0", instead of torch's list of every key (kilobytes)."""
    recorded = ((ckpt.get("config") or {}).get("model") or {}) if isinstance(ckpt, dict) else {}
    diff = [k for k in sorted(set(recorded) | set(model_cfg))
            if k in recorded and k in model_cfg and recorded[k] != model_cfg[k]]
    if "backbone" in diff:
        return (f"{path}: this checkpoint is {recorded['backbone']}, the run is "
                f"{model_cfg['backbone']}; use a checkpoint of this run")
    if diff:
        shown = ", ".join(f"model.{k} {recorded[k]!r} in the checkpoint, {model_cfg[k]!r} in the run"
                          for k in diff[:4])
        return f"{path}: the checkpoint's model differs from the run's ({shown})"
    first = str(error).strip().splitlines()
    text = " ".join(line.strip() for line in first[:3])
    return (f"{path}: the weights do not fit the run's model ({text[:300]}"
            f"{' ...' if len(text) > 300 or len(first) > 3 else ''})")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with ``weights_only=True`` onto ``map_location``.

    Raises:
        CheckpointError: the file is missing, unreadable, not a factmas checkpoint, of another
            version, or lacks a key (the message names the file and the key).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read checkpoint: {e.strerror or e}") from e
    if head != b"PK\x03\x04":     # torch.save writes a zip archive; anything else is not ours
        raise CheckpointError(f"{path}: not a factmas checkpoint (a checkpoint is the zip archive "
                              f"torch.save writes; this file starts with {head!r}); name one of the "
                              "run's checkpoints, e.g. last.pt or task0")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types (pickle, zip, runtime errors)
        raise CheckpointError(f"{path}: cannot read checkpoint: {e}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a factmas checkpoint (no format={FORMAT!r})")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {state.get('version')!r}, expected {VERSION}")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks key {missing[0]!r}")
    return state


def stage_of(path: str | Path) -> int | None:
    """The stage s of a checkpoint file named ``task{s}.pt``; None for any other name (``last.pt``)."""
    p = Path(path)
    suffix = p.stem[len("task"):] if p.stem.startswith("task") and p.suffix == ".pt" else ""
    return int(suffix) if suffix.isdigit() else None


def stage_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """[(stage, RUN_DIR/checkpoints/task{stage}.pt)] of the stage checkpoints present, by stage."""
    found = ((stage_of(p), p) for p in checkpoint_dir(run_dir).glob("task*.pt"))
    return sorted((s, p) for s, p in found if s is not None)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The stage checkpoint with the highest stage number in ``RUN_DIR/checkpoints``, or None.

    ``last.pt`` is not trusted for this: the numbered files are each written atomically, and the
    highest one is the last completed stage.
    """
    stages = stage_checkpoints(run_dir)
    return stages[-1][1] if stages else None


def has_checkpoints(run_dir: str | Path) -> bool:
    """True when ``RUN_DIR/checkpoints`` holds any ``.pt`` file."""
    d = checkpoint_dir(run_dir)
    return d.is_dir() and any(d.glob("*.pt"))


def dumps_line(record: dict) -> str:
    """One metrics.jsonl line: ``record`` as compact JSON, NaN and ±inf written as null."""
    return json.dumps(finite_or_none(plain(record)))
