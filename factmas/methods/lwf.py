"""Learning without Forgetting (Li & Hoiem, ECCV 2016 / TPAMI 2017), adapted to embeddings.

LwF keeps the previous model's responses on the new task's data: before task t > 0 a frozen copy of
the model after task t − 1 is kept; every training step adds the distillation term

    λ · (1/B) Σ_k ‖φ̂_new(x_k) − φ̂_old(x_k)‖²,      φ̂ = ``normalize_slots``(φ)   (sum over S, P, O)

on the images x_k of the batch (the new task's training images). Embeddings replace the paper's
class probabilities (there are no classes here): the squared distance of the per-slot unit vectors,
the quantity retrieval compares (``factmas.space``), replaces the temperature-scaled cross-entropy
(Eq. in Sec. 3 of the paper). Only the image branch is distilled; the fact branch is free.

Memory: a full copy of the model (both branches) is held during every task after the first, and each
step runs one more forward pass of the image branch (no backward through the copy).
No checkpoint state: the copy is the model as it is at the start of the task, which a resumed run
restores from the previous task's checkpoint.

Distributed (torchrun): nothing to reduce. Each process distills on its rows of the global batch (its
``batch["images"]`` and ``out["phi"]``); DistributedDataParallel averages the gradients, which is the
mean over the global batch when the processes hold equally many rows.
"""
from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn

from factmas.space import normalize_slots
from factmas.methods.base import Method, TaskContext

log = logging.getLogger(__name__)


def distillation_loss(phi_new: torch.Tensor, phi_old: torch.Tensor) -> torch.Tensor:
    """(1/B) Σ_k ‖normalize_slots(φ_new_k) − normalize_slots(φ_old_k)‖²: float [B, 3, d] twice →
    scalar in [0, 12] (gradient flows into ``phi_new`` only). Raises ValueError on different shapes."""
    if phi_new.shape != phi_old.shape or phi_new.ndim != 3:
        raise ValueError(f"LwF: expected two [B, 3, d] embeddings, got {tuple(phi_new.shape)} and "
                         f"{tuple(phi_old.shape)}")
    diff = normalize_slots(phi_new) - normalize_slots(phi_old.detach())
    return diff.square().flatten(1).sum(1).mean()


class LwF(Method):
    """LwF on image embeddings; ``reg_lambda`` is the distillation weight λ (≥ 0)."""
    name = "lwf"
    title = "LwF"
    paper_grid = (0.0, 0.3, 3.0, 30.0)

    def __init__(self, reg_lambda: float = 1.0, options: Any = None, **values: Any) -> None:
        super().__init__(reg_lambda, options, **values)
        if self.reg_lambda < 0:
            raise ValueError(f"reg_lambda must be >= 0, got {reg_lambda}")
        self.old: nn.Module | None = None

    def on_task_start(self, model: nn.Module, ctx: TaskContext) -> None:
        """From the second task on, keep a frozen copy of the model (eval mode, no gradients)."""
        if ctx.task == 0 or self.reg_lambda == 0.0:
            self.old = None
            return
        self.old = copy.deepcopy(model).eval()
        for p in self.old.parameters():
            p.requires_grad_(False)
        size = sum(p.numel() for p in self.old.parameters())
        log.info("LwF: task %d: frozen copy of the previous model kept (%d parameters)", ctx.task + 1, size)

    def extra_loss(self, model: nn.Module, batch: dict, out: dict) -> torch.Tensor | float:
        """λ · distillation_loss(φ_new, φ_old) on the batch's images (0.0 on the first task)."""
        if self.old is None:
            return 0.0
        with torch.no_grad():
            phi_old = self.old.image_branch(batch["images"])
        return self.reg_lambda * distillation_loss(out["phi"], phi_old)

    def on_task_end(self, model: nn.Module, ctx: TaskContext) -> None:
        """Drop the copy (the next task copies the model anew)."""
        self.old = None
