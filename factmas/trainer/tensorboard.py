"""TensorBoard events of a run (``train.tensorboard: true`` or ``factmas train --tensorboard``).

Written with ``torch.utils.tensorboard.SummaryWriter`` into ``RUN_DIR/tensorboard/`` (view with
``tensorboard --logdir RUN_DIR``, or the folder of several runs). ``tensorboard`` is an optional
dependency (``pip install 'factmas[tb]'``); ``factmas.config_check`` refuses the key without it.

Tags (x axis in brackets):

* ``loss/total``, ``loss/task``, ``loss/penalty``, ``loss/extra``, ``loss/regression``,
  ``loss/contrastive``: the parts of each training step's loss (``factmas.trainer.loop.train_step``)
  [optimizer step, counted over the whole stream].
* ``epoch/loss_total``, ``epoch/loss_task``, ``epoch/penalty``: an epoch's means, and
  ``speed/images_per_s``: its training images per second [optimizer step at the epoch's end].
* ``<metric>/T1`` … ``<metric>/Tk`` and ``<metric>/all`` for each retrieval metric of the
  evaluation (every entry with an "all" value: ``factmas.evaluation.metrics.METRICS``, LFL's;
  fact→image mAP is ``fact_to_image_map``),
  and ``val_loss/T1`` …: after every task [tasks trained: 0 = the initial model, 1 = after task 1].
* ``R/<headline metric>``: the accuracy matrix R so far as an image (rows: after task i, columns:
  task j, values in %) [tasks trained].

A resumed run opens the folder again with ``purge_step`` = the first optimizer step it trains, so
the steps of the task that was interrupted are not shown twice.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from factmas.run.rundir import TENSORBOARD

TB_DIR = TENSORBOARD
STEP_PARTS = ("total", "task", "penalty", "extra", "regression", "contrastive")


class TensorBoardError(RuntimeError):
    """The tensorboard package is missing (install ``factmas[tb]``)."""


def _value(d: dict, key: Any) -> float | None:
    """``d[key]`` where task keys may be ints or (after JSON) strings; None if absent or not finite."""
    v = d.get(key, d.get(str(key)))
    return None if v is None or not math.isfinite(float(v)) else float(v)


def r_matrix(history: list[dict], metric: str, num_tasks: int) -> np.ndarray:
    """The accuracy matrix R of ``metric`` from evaluation rows (``factmas.trainer.evalhook``): float64
    [stages evaluated, num_tasks], R[i, j] = metric of task j after stage i (NaN where missing); the
    row "initial" (stage -1) is left out."""
    rows = [r for r in history if r.get("stage", -1) >= 0 and r.get("retrieval")]
    R = np.full((len(rows), num_tasks), np.nan)
    for i, r in enumerate(rows):
        per_task = r["retrieval"].get(metric) or {}
        for j in range(num_tasks):
            v = _value(per_task, j)
            R[i, j] = np.nan if v is None else v
    return R


def r_figure(R: np.ndarray, metric: str):
    """A matplotlib figure of R (values in %, annotated; NaN cells blank)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = R.shape
    fig, ax = plt.subplots(figsize=(1.1 * cols + 1.6, 0.8 * rows + 1.4))
    vmax = max(1.0, float(np.nanmax(100 * R)) if np.isfinite(R).any() else 1.0)
    ax.imshow(np.ma.masked_invalid(100 * R), cmap="viridis", vmin=0, vmax=vmax)
    for i in range(rows):
        for j in range(cols):
            if np.isfinite(R[i, j]):
                ax.text(j, i, f"{100 * R[i, j]:.1f}", ha="center", va="center", fontsize=9,
                        color="k" if 100 * R[i, j] > 0.6 * vmax else "w")
    ax.set_xticks(range(cols), [f"T{j + 1}" for j in range(cols)])
    ax.set_yticks(range(rows), [f"after stage {i + 1}" for i in range(rows)])
    ax.set_xlabel("task evaluated")
    ax.set_title(f"R: {metric} (%)", fontsize=10)
    fig.tight_layout()
    return fig


class TensorBoardLog:
    """The SummaryWriter of one run (module docstring for the tags).

    Args:
        run_dir: the run directory (events go to ``run_dir/tensorboard``).
        steps_done: optimizer steps already done (a resumed run; 0: a new run); events of later
            steps left by the interrupted run are hidden (SummaryWriter's ``purge_step``).
    Raises:
        TensorBoardError: the tensorboard package is not installed.
    """

    def __init__(self, run_dir: str | Path, steps_done: int = 0) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:        # torch raises ImportError naming tensorboard
            raise TensorBoardError(f"train.tensorboard needs the tensorboard package ({e}); install it "
                                   "with pip install 'factmas[tb]'") from e
        self.dir = Path(run_dir) / TB_DIR
        self.writer = SummaryWriter(str(self.dir), purge_step=steps_done + 1)   # steps count from 1

    def step(self, global_step: int, parts: dict[str, float]) -> None:
        """The loss parts of one training step (``train_step``'s step parts)."""
        for k in STEP_PARTS:
            if k in parts:
                self.writer.add_scalar(f"loss/{k}", parts[k], global_step)

    def epoch(self, global_step: int, means: dict[str, float], images_per_s: float) -> None:
        """An epoch's mean loss parts and images/s."""
        self.writer.add_scalar("epoch/loss_total", means["total"], global_step)
        self.writer.add_scalar("epoch/loss_task", means["task"], global_step)
        self.writer.add_scalar("epoch/penalty", means["penalty"], global_step)
        if math.isfinite(images_per_s):
            self.writer.add_scalar("speed/images_per_s", images_per_s, global_step)

    def evaluation(self, row: dict, history: list[dict], tasks_trained: int, num_tasks: int,
                   headline: str) -> None:
        """The metrics of one evaluation row (per task and "all"), its validation losses and, after
        a task, the R matrix of ``headline`` so far as an image."""
        for metric, per_task in (row.get("retrieval") or {}).items():
            if not isinstance(per_task, dict) or "all" not in per_task:    # counts, timing, ...
                continue
            for key in list(range(num_tasks)) + ["all"]:
                v = _value(per_task, key)
                if v is not None:
                    name = "all" if key == "all" else f"T{key + 1}"
                    self.writer.add_scalar(f"{metric}/{name}", v, tasks_trained)
        for j, v in enumerate(row.get("val_loss") or []):
            if v is not None and math.isfinite(v):
                self.writer.add_scalar(f"val_loss/T{j + 1}", v, tasks_trained)
        if tasks_trained > 0 and row.get("retrieval"):
            import matplotlib.pyplot as plt
            fig = r_figure(r_matrix(history, headline, num_tasks), headline)
            self.writer.add_figure(f"R/{headline}", fig, tasks_trained, close=True)
            plt.close(fig)
        self.writer.flush()

    def close(self) -> None:
        """Close the writer and list its event files in the run's manifest (``factmas.outdir``), so
        that ``--overwrite`` deletes them with the rest of the run."""
        from factmas.outdir import record_written
        self.writer.close()
        for p in sorted(self.dir.rglob("*")):
            if p.is_file():
                record_written(p)


__all__ = ["TB_DIR", "TensorBoardError", "TensorBoardLog", "r_matrix"]
