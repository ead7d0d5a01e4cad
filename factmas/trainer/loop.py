"""The continual loop: training stages in order, each followed by the method's update, an evaluation
and an atomic checkpoint.

A *stage* is one experience of the method's stream (``factmas.data.experience``): one task per
stage for sequential continual learning; joint training (the upper bound) is one experience holding
every task. For each stage s, as ``factmas.methods.base`` describes::

    torch.manual_seed(stage_seed(seed, s))          # a resumed run draws what an uninterrupted one does
    method.on_task_start(model, ctx)
    for epoch e, step i:  loss = fact_loss(φ, ψ, order, positive) + method.penalty(model)
                                 + method.extra_loss(model, batch, out)
                          (non-finite loss → TrainingError naming task, epoch and step)
                          backward; method.before_step; optimizer step (train.optimizer: Adam or SGD); method.after_step
                          [train.swa_start_epoch: the weights added to a running mean, factmas.trainer.average]
    [train.swa_start_epoch: the model takes the mean of the averaged steps' weights (SWA)]
    method.on_task_end(model, ctx)                  # model in eval mode; e.g. MAS: Ω += ..., θ* = θ
    evaluation row (val loss, retrieval R row); metrics.jsonl line; checkpoint task{s}.pt + last.pt

The initial model is evaluated once before stage 0 (row "initial", the forward-transfer baseline).
Adam is re-created at each stage by default (``train.optimizer_reset``), as is usual in continual
learning; its state is saved in every checkpoint either way.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from factmas.config import RunConfig
from factmas.data.dataset import FactData
from factmas.data.experience import Experience
from factmas.distributed import is_main, shard, shard_bounds, size
from factmas.distributed.step import DistributedForward, shard_batcher
from factmas.space.loss import fact_loss, uses_candidates
from factmas.methods.base import Method, TaskContext
from factmas.progress import progress_bar, switched_off
from factmas.run.checkpoint import (CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint,
                                   task_names)
from factmas.run.rundir import RunDir
from factmas.trainer.augment import augment_images
from factmas.trainer.average import WeightAverage
from factmas.trainer.batches import PURPOSE_CONTEXT, Batcher, batch_bounds, make_rng, stage_seed
from factmas.trainer.evalhook import EvalHook, finite_mean
from factmas.errors import FactmasError
from factmas.trainer.tensorboard import TensorBoardLog

log = logging.getLogger(__name__)


class TrainingError(FactmasError, RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message names task, epoch and step."""

    exit_code = 1


@dataclass
class RunState:
    """What a checkpoint restores: stages done, tasks done, evaluation rows, optimizer state."""
    next_stage: int = 0
    completed_tasks: list[int] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    optimizer_state: dict | None = None
    metrics_lines: int = 0


def forward_loss(model: nn.Module, batch: dict, cfg: RunConfig) -> tuple[torch.Tensor, dict, dict]:
    """The task loss of a pair batch: (loss scalar, parts dict of floats, out {"phi", "psi"})."""
    phi = model.image_branch(batch["images"])
    psi = model.fact_branch(batch["tokens"], batch["order"])
    cand = batch.get("candidates")
    if cand is not None and uses_candidates(cfg.loss):
        cand = {**cand, "psi": model.fact_branch(cand["tokens"], cand["order"])}
    else:
        cand = None
    loss, parts = fact_loss(phi, psi, batch["order"], batch["positive"], cfg.loss, cand)
    return loss, parts, {"phi": phi, "psi": psi}


def make_optimizer(params, tc) -> torch.optim.Optimizer:
    """The optimizer of ``train.optimizer``: Adam (Kingma & Ba 2015; the default) or SGD with
    momentum ``train.momentum`` (PyTorch's heavy-ball form v ← μv + g, θ ← θ − lr·v; SGD with
    momentum 0.9 is what the official MAS (Aljundi et al. 2018) and Lifelong Fact Learning code
    train with). Both with ``train.lr`` and ``train.weight_decay``. Raises ValueError on another name."""
    if tc.optimizer == "adam":
        return torch.optim.Adam(params, lr=tc.lr, weight_decay=tc.weight_decay)
    if tc.optimizer == "sgd":
        return torch.optim.SGD(params, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
    raise ValueError(f"train.optimizer: {tc.optimizer!r}; valid: ['adam', 'sgd']")


def scheduled_lr(base: float, schedule: str, step: int, total: int) -> float:
    """The learning rate of step ``step`` (0-based) of a task's ``total`` steps.

    "constant": ``base``. "cosine": ``base · ½ (1 + cos(π · step / total))``, cosine annealing without
    restarts (Loshchilov & Hutter, ICLR 2017, Eq. 5 with η_min = 0, T_cur = step, T_i = total), once per
    task: each task starts again at ``base``. Raises ValueError on another schedule or total < 1.
    """
    if total < 1:
        raise ValueError(f"scheduled_lr: total must be >= 1, got {total}")
    if schedule == "constant":
        return base
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    raise ValueError(f"train.lr_schedule: {schedule!r}; valid: ['constant', 'cosine']")


def train_step(model: nn.Module, method: Method, optimizer: torch.optim.Optimizer, batch: dict,
               cfg: RunConfig, forward: Callable = forward_loss) -> tuple[float, dict, dict]:
    """One training step on a pair batch: loss = task loss + method penalty + method extra loss,
    backward, ``method.before_step``, optimizer step, ``method.after_step``.

    Returns (total loss value, step parts {"total", "task", "penalty", "extra", "regression",
    "contrastive"} as floats, the task loss parts of ``fact_loss``). A non-finite total is returned
    before backward, with the model and optimizer untouched, so that the caller can stop.
    ``forward``: ``forward_loss`` or, on several processes, ``factmas.distributed.step.DistributedForward``.
    ``bench/train_overhead.py`` times this function against a plain PyTorch loop.
    """
    optimizer.zero_grad(set_to_none=True)
    task_loss, parts, out = forward(model, batch, cfg)
    penalty = method.penalty(model)
    extra = method.extra_loss(model, batch, out)
    loss = task_loss + penalty + extra
    value = float(loss.detach())
    step_parts = {"total": value, "task": parts["loss"], "penalty": _as_float(penalty),
                  "extra": _as_float(extra), "regression": parts["regression"],
                  "contrastive": parts["contrastive"]}
    if not math.isfinite(value):
        return value, step_parts, parts
    loss.backward()
    method.before_step(model)
    optimizer.step()
    method.after_step(model)
    return value, step_parts, parts


def _counted(batches: Iterator, counter: dict, key: str, size: Callable[[Any], int]) -> Iterator:
    """Yield ``batches`` unchanged, adding each batch's ``size`` to ``counter[key]``."""
    for batch in batches:
        counter[key] += size(batch)
        yield batch


def _as_float(x: torch.Tensor | float) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


class ContinualTrainer:
    """Runs the stages of one run directory.

    Args:
        cfg: the resolved run configuration.  data: the dataset in memory.  run_dir: output folder
        (its config.json is written by the caller).  model: built and seeded by the caller.
        method: a ``factmas.methods`` method.  device: where training happens.
        tasks: the experience of each task of ``cfg.train.split`` (``factmas.data.experience``).
        evaluator: a ``factmas.evaluation.evaluator.Evaluator`` or None (validation loss only).
        recorder: the ``factmas.evaluation.recorder.Recorder`` of the evaluator's rows (None: a
            default one).  progress: show progress (``factmas.progress``: a bar on a terminal, a line
            every 30 s in a log).
        inputs: the image input source (``factmas.model.features.image_inputs``; None: pixels).
    """

    def __init__(self, cfg: RunConfig, data: FactData, run_dir: str | Path, model: nn.Module,
                 method: Method, device: torch.device, tasks: list[Experience], evaluator: Any = None,
                 progress: bool = True, inputs: Any = None, recorder: Any = None) -> None:
        self.cfg, self.data, self.run_dir = cfg, data, Path(run_dir)
        self.model, self.method, self.device = model.to(device), method, device
        self.tasks = tasks
        self.num_tasks = len(tasks)
        self.progress = progress and is_main()          # progress and logs from rank 0 only
        self.batcher = Batcher(data, device, inputs, tasks[0].relevance if tasks else None)
        # several processes (torchrun): each loads and embeds its rows of the global batch, DDP
        self.step_batcher = shard_batcher(self.batcher)
        self.forward = DistributedForward(self.model, device) if size() > 1 else forward_loss
        self.pixel_input = getattr(model, "image_stem", None) is None
        self.hook = EvalHook(tasks, self.batcher,
                             lambda phi, psi, order, positive: fact_loss(phi, psi, order, positive,
                                                                         cfg.loss),
                             cfg.train.batch_size, cfg.train.aux_batch_size, evaluator, recorder)
        self.metrics = RunDir(self.run_dir).metrics_log() if is_main() else _NoMetrics()
        self.tb: TensorBoardLog | None = None           # train.tensorboard: opened by run()
        self.global_step = 0                             # optimizer steps over the stream (TensorBoard)

    # ---- resume -------------------------------------------------------------------------------
    def restore(self, path: str | Path) -> RunState:
        """Load a checkpoint into the model and method; cut metrics.jsonl back to it."""
        ckpt = load_checkpoint(path, map_location=self.device)
        if ckpt["method_name"] != self.method.name:
            raise TrainingError(f"{path}: checkpoint of method {ckpt['method_name']!r}, "
                                f"this run uses {self.method.name!r}")
        try:
            self.model.load_state_dict(ckpt["model"])
            self.method.load_state_dict(ckpt["method"])
        except (RuntimeError, ValueError, KeyError) as e:
            from factmas.run.checkpoint import mismatch_message
            raise CheckpointError(mismatch_message(path, ckpt, self.cfg.to_dict()["model"], e)) from e
        self.metrics.truncate(ckpt["metrics_lines"])
        self.hook.restore(ckpt["history"])
        log.info("resuming from %s: tasks %s done", path, task_names(ckpt["completed_tasks"]))
        return RunState(next_stage=ckpt["stage"] + 1, completed_tasks=list(ckpt["completed_tasks"]),
                        history=list(ckpt["history"]), optimizer_state=ckpt["optimizer"],
                        metrics_lines=ckpt["metrics_lines"])

    # ---- the loop -----------------------------------------------------------------------------
    def run(self, stages: list[Experience], state: RunState | None = None,
            limit: int | None = None) -> RunState:
        """Train ``stages[state.next_stage : limit]``; write the report when the loop ends.

        Raises:
            TrainingError: a non-finite loss or a stage without training pairs; the checkpoints of
                the completed stages are kept untouched.
        """
        state = state or RunState()
        self.global_step = self.steps_before(stages, state.next_stage)
        if self.cfg.train.tensorboard and is_main():
            self.tb = TensorBoardLog(self.run_dir, steps_done=self.global_step)
        try:
            with switched_off(not self.progress):         # also the methods' bars (MAS Ω, ...)
                return self._run(stages, state, limit)
        finally:
            if self.tb is not None:
                self.tb.close()
                self.tb = None

    def steps_before(self, stages: list[Experience], index: int) -> int:
        """Optimizer steps of ``stages[:index]`` (epochs × batches of each stage's training pairs)."""
        tc = self.cfg.train
        return sum(tc.epochs * len(batch_bounds(len(s.pairs["train"]), tc.batch_size))
                   for s in stages[:index])

    def _log_evaluation(self, row: dict, history: list[dict], tasks_trained: int) -> None:
        if self.tb is not None:
            from factmas.evaluation.metrics import HEADLINE
            self.tb.evaluation(row, history, tasks_trained, self.num_tasks, HEADLINE)

    def _run(self, stages: list[Experience], state: RunState, limit: int | None) -> RunState:
        if not state.history:
            row = self.hook.evaluate(self.model, "initial", -1, [])
            state.history.append(row)
            self.metrics.append({"event": "initial", **row})
            self._log_evaluation(row, state.history, 0)
        end = len(stages) if limit is None else min(limit, len(stages))
        trained = state.next_stage < end
        for stage in stages[state.next_stage:end]:
            t0 = time.perf_counter()
            optimizer, end_seconds = self.train_stage(stage, state)
            state.completed_tasks += stage.tasks
            row = self.hook.evaluate(self.model, stage.label, stage.index, state.completed_tasks)
            state.history.append(row)
            self._log_evaluation(row, state.history, stage.index + 1)
            self.metrics.append({"event": "task_end", **row, "task_end_seconds": end_seconds,
                                 "stage_seconds": time.perf_counter() - t0})
            state.optimizer_state = optimizer.state_dict()
            if is_main():                                # every rank holds the same state
                save_checkpoint(self.run_dir, stage.index, model=self.model, optimizer=optimizer,
                                method=self.method, completed_tasks=state.completed_tasks,
                                config=self.cfg.to_dict(), history=state.history,
                                metrics_lines=self.metrics.lines)
            state.next_stage = stage.index + 1
        for p in (self.hook.write(self.run_dir) if is_main() else []):
            log.info("wrote %s", p)
        if (is_main() and self.cfg.eval.enabled and self.cfg.eval.calibrate
                and (trained or not RunDir(self.run_dir).calibration_path.is_file())):
            self.calibrate()
        return state

    def calibrate(self) -> Path | None:
        """Fit P(fact true | D) and the abstention threshold of the current weights on the val
        images and write ``RUN_DIR/calibration.json`` (``factmas.explore.calibrate``); None (with a
        warning) when the dataset has no val images."""
        from factmas.explore.calibrate import describe, fit_run_calibration
        from factmas.evaluation.calibration import CalibrationError, save_calibrator
        try:
            cal = fit_run_calibration(self.model, self.data, self.batcher.inputs, self.device,
                                      self.cfg, checkpoint="last.pt")
        except CalibrationError as e:
            log.warning("no calibration.json: %s", e)
            return None
        path = save_calibrator(RunDir(self.run_dir).calibration_path, cal)
        log.info("wrote %s: %s", path, describe(cal))
        return path

    def _optimizer(self, state: RunState) -> torch.optim.Optimizer:
        tc = self.cfg.train
        opt = make_optimizer(self.model.parameters(), tc)
        if not tc.optimizer_reset and state.optimizer_state is not None:
            opt.load_state_dict(state.optimizer_state)
        return opt

    def context(self, stage: Experience, reads: dict[str, int]) -> TaskContext:
        """The TaskContext of ``stage``: image, fact and pair batches of its experience; what a
        method reads through them is counted in ``reads`` ("images", "facts", "pairs") for the log; on
        several processes each rank's batches hold its share (``_share``) of the samples."""
        tc, b = self.cfg.train, self.batcher
        return TaskContext(
            task=stage.tasks[-1] if len(stage.tasks) == 1 else stage.index,
            device=self.device,
            image_batches=lambda which: _counted(b.image_batches(
                self._share(stage.images[which]), tc.aux_batch_size), reads, "images", len),
            fact_batches=lambda: _counted(b.fact_batches(self._share(stage.facts), tc.aux_batch_size),
                                          reads, "facts", lambda x: len(x[1])),
            pair_batches=lambda: _counted(self._pair_batches(
                stage.pairs["train"], make_rng(tc.seed, stage.index, 0, PURPOSE_CONTEXT)),
                reads, "pairs", lambda x: len(x["fact_idx"])))

    def _share(self, items: np.ndarray) -> np.ndarray:
        """One process: ``items``. Several: this rank's share of the first ``max_samples`` (the
        method's option, None: all; the methods' per-sample sums are then all-reduced:
        ``factmas.distributed.reduce_sums``)."""
        if size() == 1:
            return items
        return shard(items[:getattr(self.method.options, "max_samples", None)])

    def _pair_batches(self, pairs: np.ndarray, rng: np.random.Generator) -> Iterator[dict]:
        """The training pairs shuffled by ``rng`` in batches; several processes: this rank's share
        (sums over pairs do not depend on how the pairs are batched)."""
        if size() == 1:
            return self.batcher.pair_batches(pairs, self.cfg.train.batch_size, rng)
        return self.batcher.pair_batches(self._share(pairs[rng.permutation(len(pairs))]),
                                         self.cfg.train.batch_size)

    def train_stage(self, stage: Experience, state: RunState) -> tuple[torch.optim.Optimizer, float]:
        """Train one stage; returns (optimizer, seconds of method.on_task_end)."""
        tc = self.cfg.train
        torch.manual_seed(stage_seed(tc.seed, stage.index))
        pairs = stage.pairs["train"]
        name = self._name(stage)
        self.batcher.candidates = self.step_batcher.candidates = (
            stage.facts if uses_candidates(self.cfg.loss) else None)
        if len(pairs) == 0:
            raise TrainingError(f"{name} of split {tc.split!r} has no training pairs")
        log.info("%s: %s training pairs, %s images, %s facts", name, f"{len(pairs):,}",
                 f"{len(np.unique(pairs[:, 0])):,}", f"{len(np.unique(pairs[:, 1])):,}")
        reads = {"images": 0, "facts": 0, "pairs": 0}     # what the method read, for the log
        ctx = self.context(stage, reads)
        self.model.train()
        self.method.on_task_start(self.model, ctx)
        optimizer = self._optimizer(state)
        # SWA over epochs k..epochs; k > epochs (e.g. the default 2 with --epochs 1) averages nothing
        swa = tc.swa_start_epoch is not None and tc.swa_start_epoch <= tc.epochs
        average = WeightAverage(self.model, tc.swa_start_epoch) if swa else None
        if tc.swa_start_epoch is not None and not swa:
            log.info("%s: no weights averaged (train.swa_start_epoch %d > train.epochs %d)", name,
                     tc.swa_start_epoch, tc.epochs)
        for epoch in range(tc.epochs):
            self._epoch(stage, epoch, pairs, optimizer, state, average)
        if average is not None:
            log.info("%s: weights averaged over the %s steps of epochs %d-%d (SWA)", name,
                     f"{average.apply(self.model):,}", tc.swa_start_epoch, tc.epochs)
        self.model.eval()
        reads.update(images=0, facts=0, pairs=0)
        t0 = time.perf_counter()
        self.method.on_task_end(self.model, ctx)
        seconds = time.perf_counter() - t0
        if any(reads.values()):
            read = ", ".join(f"{v:,} {k}" for k, v in reads.items() if v)
            log.info("%s: end-of-task update of %s read %s in %.1f s", name,
                     self.method.name.upper(), read, seconds)
        return optimizer, seconds

    def _name(self, stage: Experience) -> str:
        if len(stage.tasks) == 1:
            return f"task {stage.tasks[0] + 1}/{self.num_tasks}"
        return f"stage {stage.index + 1} (tasks {', '.join(str(t + 1) for t in stage.tasks)})"

    def _epoch(self, stage: Experience, epoch: int, pairs: np.ndarray, optimizer: torch.optim.Optimizer,
               state: RunState, average: WeightAverage | None = None) -> None:
        tc, model, method = self.cfg.train, self.model, self.method
        name = self._name(stage)
        rng = make_rng(tc.seed, stage.index, epoch)
        sums: dict[str, float] = {}
        n_seen, t0 = 0, time.perf_counter()
        bar = progress_bar(total=len(pairs), unit="img", unit_scale=True, leave=False,
                           desc=f"{name} epoch {epoch + 1}/{tc.epochs}", enabled=self.progress)
        with bar:
            flip = tc.augment_flip and not self.pixel_input     # stem models: cached mirror images
            per_epoch = len(batch_bounds(len(pairs), tc.batch_size))
            for step, batch in enumerate(self.step_batcher.pair_batches(pairs, tc.batch_size, rng, flip), 1):
                lr = scheduled_lr(tc.lr, tc.lr_schedule, epoch * per_epoch + step - 1, tc.epochs * per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if self.pixel_input and (tc.augment_shift or tc.augment_flip):
                    B = len(batch["fact_idx"])      # the global batch; the images: this rank's rows
                    batch["images"] = augment_images(batch["images"], rng, tc.augment_shift, tc.augment_flip,
                                                     total=B, start=shard_bounds(B)[0])
                value, step_parts, parts = train_step(model, method, optimizer, batch, self.cfg,
                                                      self.forward)
                if not math.isfinite(value):
                    self._fail(stage, epoch, step, value, parts)
                if average is not None and average.averaging(epoch):
                    average.update(model)
                b = len(batch["fact_idx"])
                n_seen += b
                self.global_step += 1
                if self.tb is not None:
                    self.tb.step(self.global_step, step_parts)
                for k, v in step_parts.items():
                    sums[k] = sums.get(k, 0.0) + v * b
                bar.update(b)
                bar.set_postfix(loss=f"{value:.4f}")
        seconds = time.perf_counter() - t0
        means = {k: v / n_seen for k, v in sums.items()}
        rate = n_seen / seconds if seconds > 0 else float("nan")
        log.info("%s epoch %d/%d: train loss %.4f (task %.4f, penalty %.4g), %.0f images/s",
                 name, epoch + 1, tc.epochs, means["total"], means["task"], means["penalty"], rate)
        if self.tb is not None:
            self.tb.epoch(self.global_step, means, rate)
        self.metrics.append({"event": "epoch", "stage": stage.index, "tasks": stage.tasks,
                             "epoch": epoch, "steps": step, "pairs": n_seen,
                             **{f"train_{k}": v for k, v in means.items()},
                             "seconds": seconds, "images_per_s": rate})

    def _fail(self, stage: Experience, epoch: int, step: int, value: float, parts: dict) -> None:
        last = latest_checkpoint(self.run_dir)
        kept = f"the last good checkpoint {last} is kept" if last else "no task was completed yet"
        msg = (f"non-finite loss {value} in {self._name(stage)}, epoch {epoch + 1}/"
               f"{self.cfg.train.epochs}, step {step} (task loss parts {parts}); training stopped, "
               f"{kept}")
        self.metrics.append({"event": "error", "stage": stage.index, "epoch": epoch, "step": step,
                             "message": msg})
        raise TrainingError(msg)


class _NoMetrics:
    """metrics.jsonl on ranks other than 0: nothing is written (rank 0 writes the run's file)."""
    lines = 0

    def append(self, record: dict) -> None:
        self.lines += 1

    def truncate(self, lines: int) -> None:
        self.lines = lines


__all__ = ["ContinualTrainer", "RunState", "TrainingError", "finite_mean", "forward_loss", "train_step"]
