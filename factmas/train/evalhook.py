"""The trainer's evaluation hook: what is measured before the first task and after each stage.

Two measurements, both on data never trained on:

- the **validation loss** of every task: the task loss (``factmas.loss.fact_loss``) on the task's
  pairs whose image is in the "val" image split (held-out training images; these are what a method's
  λ is chosen on, never the test set), in fixed unshuffled batches;
- the **retrieval metrics** of ``factmas.evaluate.Evaluator`` on the test images (fills the accuracy
  matrix R and writes results.json / results.md / plots at the end), when ``cfg.eval.enabled``.

Each evaluation returns one plain-data row ``{"label", "stage", "trained_tasks", "val_loss",
"retrieval", "seconds"}``; the rows are kept in every checkpoint so that a resumed run can rebuild the
evaluator's record and write the same report.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..dataset import FactData
from .batches import Batcher
from .checkpoint import plain

log = logging.getLogger(__name__)


class EvalHook:
    """Validation loss per task, plus the retrieval Evaluator when given.

    Args:
        data, split: the dataset and task split.  num_tasks: k.
        batcher: makes the batches.  loss_fn: callable(model, batch) -> (loss, parts).
        batch_size: pairs per validation batch.
        evaluator: a ``factmas.evaluate.Evaluator`` or None (validation loss only).
    """

    def __init__(self, data: FactData, split: str, num_tasks: int, batcher: Batcher,
                 loss_fn: Callable[[nn.Module, dict], tuple[torch.Tensor, dict]], batch_size: int,
                 evaluator: Any = None) -> None:
        self.loss_fn = loss_fn
        self.batcher = batcher
        self.batch_size = batch_size
        self.evaluator = evaluator
        self.val_pairs = [data.task_pairs(split, t, "val") for t in range(num_tasks)]
        empty = [t for t, p in enumerate(self.val_pairs) if len(p) == 0]
        if empty:
            log.warning("tasks %s have no validation pairs: their val_loss is null", empty)

    @torch.no_grad()
    def validation_loss(self, model: nn.Module) -> list[float | None]:
        """Mean task loss over each task's validation pairs (weighted by batch size); None if none."""
        out: list[float | None] = []
        for pairs in self.val_pairs:
            if len(pairs) == 0:
                out.append(None)
                continue
            total, n = 0.0, 0
            for batch in self.batcher.pair_batches(pairs, self.batch_size):
                loss, _ = self.loss_fn(model, batch)
                b = len(batch["fact_idx"])
                total, n = total + float(loss) * b, n + b
            out.append(total / n)
        return out

    def evaluate(self, model: nn.Module, label: str, stage: int, trained_tasks: list[int]) -> dict:
        """Measure ``model`` (put in eval mode) and return the plain-data row (module docstring)."""
        model.eval()
        t0 = time.perf_counter()
        row: dict[str, Any] = {"label": label, "stage": int(stage),
                               "trained_tasks": [int(t) for t in trained_tasks],
                               "val_loss": self.validation_loss(model), "retrieval": None}
        if self.evaluator is not None:
            result = self.evaluator.evaluate(model)
            self.evaluator.record(label, result)
            row["retrieval"] = plain(result)
        row["seconds"] = time.perf_counter() - t0
        when = "of the initial model" if stage < 0 else f"after stage {stage + 1} (row {label})"
        val = [None if v is None else round(v, 4) for v in row["val_loss"]]
        log.info("evaluation %s: validation loss of tasks 1..%d %s (%.1f s)", when, len(val), val,
                 row["seconds"])
        return row

    def restore(self, history: list[dict]) -> None:
        """Replay the rows of a checkpoint into the evaluator's record (on resume)."""
        if self.evaluator is None:
            return
        for row in history:
            if row.get("retrieval") is not None:
                self.evaluator.record(row["label"], row["retrieval"])

    def write(self, run_dir: str | Path) -> list[Path]:
        """Write the evaluator's report (results.json, results.md, plots); [] without an evaluator."""
        if self.evaluator is None:
            return []
        return list(self.evaluator.write(run_dir) or [])


def finite_mean(values: list[float | None]) -> float:
    """Mean of the non-None values (nan if there are none)."""
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else float("nan")
