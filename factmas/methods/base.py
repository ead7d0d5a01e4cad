"""The interface between the continual trainer and a continual-learning method.

The trainer (``factmas.train``) calls, for each task t in order::

    method.on_task_start(model, ctx)
    for each step:  loss = task_loss + method.penalty(model) + method.extra_loss(model, batch, out)
                    loss.backward(); method.before_step(model); optimizer.step(); method.after_step(model)
    method.on_task_end(model, ctx)          # e.g. MAS: Ω += importance on task t, θ* = θ
    save checkpoint with method.state_dict()

A method's state (Ω, θ*, ...) is a flat dict of tensors keyed by parameter name so that it is saved
in checkpoints and loaded with ``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn


@dataclass
class TaskContext:
    """What a method may look at when a task starts or ends.

    Attributes:
        task: index of the task (0-based).  device: where the model lives.
        image_batches: callable(which: str) -> iterator of float [B, 3, H, W] preprocessed images of
            this task's images in image split ``which`` ("train", "val", "test"), unshuffled.
        fact_batches: callable() -> iterator of (tokens int64 [B, 3, L], order int64 [B]) for the
            facts of this task.
        pair_batches: callable() -> iterator of training batches (the trainer's batch dict: keys
            "images" float [B, 3, H, W], "tokens" int64 [B, 3, L], "order" int64 [B],
            "positive" bool [B, B]).
        loss_fn: callable(model, batch) -> (scalar loss, dict of parts); the task loss.
        config: the resolved run configuration (``factmas.config.RunConfig``).
        max_samples: cap on samples for importance estimation (None: all).
    """
    task: int
    device: torch.device
    image_batches: Callable[[str], Iterator[torch.Tensor]]
    fact_batches: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]
    pair_batches: Callable[[], Iterator[dict]]
    loss_fn: Callable[[nn.Module, dict], tuple[torch.Tensor, dict]]
    config: Any = None
    max_samples: int | None = None
    extra: dict = field(default_factory=dict)


class Method:
    """Finetune: the base method, which does nothing beyond the task loss.

    Subclasses override the hooks they need; every hook has a no-op default.
    """
    name = "finetune"

    def __init__(self, reg_lambda: float = 0.0, **options: Any) -> None:
        self.reg_lambda = float(reg_lambda)
        self.options = options

    def on_task_start(self, model: nn.Module, ctx: TaskContext) -> None:
        """Called before the first step of a task."""

    def penalty(self, model: nn.Module) -> torch.Tensor | float:
        """Regularization term added to the loss (already multiplied by λ); 0.0 for none."""
        return 0.0

    def extra_loss(self, model: nn.Module, batch: dict, out: dict) -> torch.Tensor | float:
        """Further loss term from the batch (e.g. LwF distillation); 0.0 for none."""
        return 0.0

    def before_step(self, model: nn.Module) -> None:
        """Called after backward, before the optimizer step (gradients are in ``p.grad``)."""

    def after_step(self, model: nn.Module) -> None:
        """Called after the optimizer step."""

    def on_task_end(self, model: nn.Module, ctx: TaskContext) -> None:
        """Called after the last step of a task, before the checkpoint is saved."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat dict of tensors (keys like 'omega.<param name>') saved in the checkpoint."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what ``state_dict`` returned."""


def to_numpy(x: torch.Tensor) -> np.ndarray:
    """Detach, move to CPU and convert to numpy."""
    return x.detach().cpu().numpy()
