"""The trainer's evaluation hook: what is measured before the first task and after each stage.

Two measurements, both on data never trained on:

- the **validation loss** of every task: the task loss (``factmas.space.loss.fact_loss``) on the task's
  pairs whose image is in the "val" image split (held-out training images; these are what a method's
  λ is chosen on, never the test set), in fixed unshuffled batches of the training batch size;
- the **retrieval metrics** of ``factmas.evaluation.evaluator.Evaluator`` on the test images, when
  ``cfg.eval.enabled``; a ``factmas.evaluation.recorder.Recorder`` keeps them as the rows of the
  accuracy matrix R and writes results.json / results.md / plots at the end.

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

from factmas.data.experience import Experience
from factmas.distributed import gather_rows
from factmas.evaluation.recorder import Recorder
from factmas.run.checkpoint import plain
from factmas.run.rundir import RunDir
from factmas.trainer.batches import Batcher, batch_bounds

log = logging.getLogger(__name__)


class EvalHook:
    """Validation loss per task, plus the retrieval Evaluator when given.

    Args:
        tasks: the experience of each task (its "val" pairs are measured).
        batcher: makes the batches.
        embedding_loss: callable(phi, psi, order, positive) -> (loss, parts), the task loss on
            embeddings (``fact_loss`` with the run's LossConfig).
        batch_size: pairs per validation batch.  embed_batch: images or facts per forward pass.
        evaluator: a ``factmas.evaluation.evaluator.Evaluator`` or None (validation loss only).
        recorder: keeps the evaluator's rows and writes the report (default
            ``Recorder.for_evaluator(evaluator)``; unused without an evaluator).
    """

    def __init__(self, tasks: list[Experience], batcher: Batcher,
                 embedding_loss: Callable[..., tuple[torch.Tensor, dict]], batch_size: int,
                 embed_batch: int = 256, evaluator: Any = None, recorder: Recorder | None = None) -> None:
        self.embedding_loss = embedding_loss
        self.batcher = batcher
        self.batch_size, self.embed_batch = batch_size, embed_batch
        self.evaluator = evaluator
        if recorder is None and evaluator is not None:
            recorder = Recorder.for_evaluator(evaluator)
        self.recorder = recorder
        self.val_pairs = [e.pairs["val"] for e in tasks]
        empty = [t for t, p in enumerate(self.val_pairs) if len(p) == 0]
        if empty:
            log.warning("tasks %s have no validation pairs: their val_loss is null",
                        ", ".join(f"T{t + 1}" for t in empty))
        allp = np.concatenate(self.val_pairs) if self.val_pairs else np.zeros((0, 2), np.int32)
        self.images = np.unique(allp[:, 0]).astype(np.int64)
        self.facts = np.unique(allp[:, 1]).astype(np.int64)

    @torch.no_grad()
    def validation_loss(self, model: nn.Module) -> list[float | None]:
        """Mean task loss over each task's validation pairs, None for a task without any.

        Each validation image and fact is embedded once (an image carries several facts); the loss
        is then taken on fixed, unshuffled batches of ``batch_size`` pairs, as in training, and
        averaged over pairs.
        """
        if not len(self.images):
            return [None] * len(self.val_pairs)
        b = self.batcher
        # several processes: each rank embeds its share, every rank gets all rows (factmas.distributed)
        phi = gather_rows(lambda ids: torch.cat([model.image_branch(x) for x in b.image_batches(
            ids, self.embed_batch)]), self.images)
        psi = gather_rows(lambda ids: torch.cat([model.fact_branch(t, o) for t, o in b.fact_batches(
            ids, self.embed_batch)]), self.facts)
        out: list[float | None] = []
        for pairs in self.val_pairs:
            if len(pairs) == 0:
                out.append(None)
                continue
            total, n = 0.0, 0
            for lo, hi in batch_bounds(len(pairs), self.batch_size):
                img, fact = pairs[lo:hi, 0], pairs[lo:hi, 1]
                rows_i = torch.as_tensor(np.searchsorted(self.images, img), device=phi.device)
                rows_f = torch.as_tensor(np.searchsorted(self.facts, fact), device=psi.device)
                positive = torch.as_tensor(b.index.positive_matrix(img, fact), device=phi.device)
                order = b.order[torch.as_tensor(fact.astype(np.int64)).to(b.order.device)]
                loss, _ = self.embedding_loss(phi[rows_i], psi[rows_f], order.to(phi.device), positive)
                total, n = total + float(loss) * (hi - lo), n + (hi - lo)
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
            self.recorder.record(label, result)
            row["retrieval"] = plain(result)
        row["seconds"] = time.perf_counter() - t0
        when = "of the initial model" if stage < 0 else f"after stage {stage + 1}"
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
                self.recorder.record(row["label"], row["retrieval"])

    def write(self, run_dir: str | Path) -> list[Path]:
        """Write the report (results.json, results.md, plots; "run" from the run's config.json);
        [] without an evaluator."""
        if self.evaluator is None:
            return []
        return list(self.recorder.write(run_dir, run=RunDir(run_dir).meta()) or [])


def finite_mean(values: list[float | None]) -> float:
    """Mean of the non-None values (nan if there are none)."""
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else float("nan")
