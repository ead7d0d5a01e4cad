"""The run directory: ``config.json`` (written once, atomically) and ``metrics.jsonl`` (one line per event).

Layout::

    RUN_DIR/config.json        {"config": RunConfig.to_dict(), "seed", "versions", "git_commit",
                                "command", "data_provenance", "created"}
    RUN_DIR/metrics.jsonl      one JSON object per line: "event" is "initial", "epoch", "task_end"
                               or "error"
    RUN_DIR/checkpoints/       task{s}.pt, last.pt (``factmas.train.checkpoint``)
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from ..config import ConfigError, RunConfig
from ..io import atomic_write_json, atomic_write_text, git_commit, package_versions
from .checkpoint import checkpoint_dir, dumps_line, has_checkpoints

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (e.g. it holds a run and neither resume nor
    overwrite was requested, or it is not a factmas run directory when resuming)."""


def prepare_run_dir(run_dir: str | Path, cfg: RunConfig, *, command: str,
                    data_provenance: dict | None = None, overwrite: bool = False) -> Path:
    """Create ``run_dir`` for a new run and write its ``config.json`` atomically.

    Raises:
        RunDirError: ``run_dir`` already holds checkpoints and ``overwrite`` is False.
    With ``overwrite``, the old checkpoints and ``metrics.jsonl`` are deleted first.
    """
    run_dir = Path(run_dir)
    if has_checkpoints(run_dir) and not overwrite:
        raise RunDirError(f"{run_dir} holds the checkpoints of a run; continue it with "
                          f"`factmas train --resume {run_dir}` or start over with --overwrite")
    if overwrite:
        for p in list(checkpoint_dir(run_dir).glob("*.pt")) + [run_dir / METRICS_NAME]:
            if p.is_file():
                log.info("overwrite: removing %s", p)
                p.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "config": cfg.to_dict(),
        "seed": cfg.train.seed,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "command": command,
        "data_provenance": data_provenance or {},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_json(run_dir / CONFIG_NAME, record)
    return run_dir


def read_run_config(run_dir: str | Path) -> tuple[RunConfig, dict[str, Any]]:
    """The ``RunConfig`` and the whole record of ``RUN_DIR/config.json``.

    Raises:
        RunDirError: no config.json, or it is not a factmas run record.
        ConfigError: its "config" has unknown keys or wrong types (names the file and key).
    """
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise RunDirError(f"{run_dir}: no {CONFIG_NAME}; is this a factmas run directory?")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise RunDirError(f"{path}: cannot read: {e}") from e
    if not isinstance(record, dict) or "config" not in record:
        raise RunDirError(f"{path}: lacks the key 'config'")
    try:
        return RunConfig.from_dict(record["config"]), record
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


class MetricsLog:
    """Appends JSON lines to ``RUN_DIR/metrics.jsonl`` and counts them.

    ``lines`` is stored in each checkpoint; on resume, ``truncate(lines)`` drops what a killed run
    wrote after its last checkpoint, so a resumed run's file equals an uninterrupted run's.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / METRICS_NAME
        self.lines = 0

    def append(self, record: dict) -> None:
        """Write ``record`` as one line (NaN/inf → null) and flush."""
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(dumps_line(record) + "\n")
        self.lines += 1

    def truncate(self, lines: int) -> None:
        """Keep only the first ``lines`` lines (atomic rewrite). Raises RunDirError if fewer exist."""
        old = self.path.read_text(encoding="utf-8").splitlines() if self.path.is_file() else []
        if len(old) < lines:
            raise RunDirError(f"{self.path}: has {len(old)} lines, the checkpoint expects {lines}")
        atomic_write_text(self.path, "".join(line + "\n" for line in old[:lines]))
        self.lines = lines

    def read(self) -> list[dict]:
        """All records written so far."""
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line]
