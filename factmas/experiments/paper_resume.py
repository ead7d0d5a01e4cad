"""Which runs of ``eval/paper_table.py`` can be reused: a finished run read back, an unfinished one
continued from its last task checkpoint.

A run is reused only when its ``config.json`` records the settings the job asks for (all but the
paths, through ``RunConfig`` so that a key added since compares at its default), the fingerprint of
the dataset now loaded (``factmas.run.rundir.data_fingerprint``) and, with fixed fact targets, the
same word vectors. Imports: ``factmas.config``, ``factmas.run``, ``factmas.model.word_targets``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from factmas.config import RunConfig


def same_word_vectors(record: dict, cfg: RunConfig) -> bool:
    """Whether a run's config.json ``record`` names the fixed fact targets ``cfg`` would train with:
    the word vectors' fingerprint (``fact_targets.word_vectors_sha256``) equals that of the file
    ``cfg.model.word_vectors`` (same path, other vectors: e.g. made on another machine before
    ``data_prep.word2vec`` pinned its BLAS kernel), or neither uses word vectors. An unreadable file
    counts as not."""
    from factmas.model.word_targets import load_word_vectors
    old = (record.get("fact_targets") or {}).get("word_vectors_sha256")
    if cfg.model.fact_targets != "word2vec":
        return not old
    try:
        return old == load_word_vectors(cfg.model.word_vectors).sha256
    except (OSError, ValueError):
        return False


def same_run(out: Path, cfg: RunConfig, data: Any) -> bool:
    """Whether the finished run in ``out`` was trained with ``cfg`` (all of it but the paths) on
    ``data`` (the loaded ``FactData``; ``data_fingerprint``) and, with fixed fact targets, the same word vectors
    (``same_word_vectors``); a missing or unreadable config.json counts as not."""
    from factmas.run.rundir import RunDir, data_fingerprint, same_fingerprint
    record = RunDir(out).record()
    if not record:
        return False
    paths = ("data", "out")
    try:        # through RunConfig, so that a key added since (at its default) compares equal
        resolved = RunConfig.from_dict(record.get("config") or {}).to_dict()
    except (ValueError, TypeError):
        return False
    old = {k: v for k, v in resolved.items() if k not in paths}
    new = {k: v for k, v in cfg.to_dict().items() if k not in paths}
    fp = record.get("data_fingerprint") or {}
    return old == new and bool(fp.get("sha256")) and same_fingerprint(
        fp, data_fingerprint(data, cfg.train.split)) and same_word_vectors(record, cfg)


def resumable_tasks(out: Path, cfg: RunConfig, data: Any) -> int:
    """How many tasks an unfinished run in ``out`` has checkpointed, when it was started with
    ``cfg`` on ``data`` (``same_run``); 0 when there is nothing to continue (no run, no
    checkpoint, other settings or data), and the job is trained from the start.

    ``factmas.trainer.resume`` then ends with the weights and metrics of an uninterrupted run (it
    re-seeds every task), so a stop loses at most the task in progress, not the whole run; the
    run's ``timing.json`` then counts only the resumed part's seconds."""
    from factmas.run.checkpoint import stage_checkpoints
    if not same_run(out, cfg, data):
        return 0
    stages = stage_checkpoints(out)
    return stages[-1][0] + 1 if stages else 0


__all__ = ["resumable_tasks", "same_run", "same_word_vectors"]
