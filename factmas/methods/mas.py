"""Memory Aware Synapses (Aljundi et al., ECCV 2018) on the two-branch model, with exact Ω.

After each task, Ω_t = (1/N) Σ_k |∂‖F(x_k)‖₂²/∂θ| per sample (Eq. 2, ℓ2 output variant, "global"),
F the raw output of each branch: image-branch parameters from the task's images, fact-branch
parameters from the task's facts (``factmas.importance.mas_importance``). Ω accumulates over tasks
(sum by default) and training adds λ Σ Ω (θ − θ*)² (Eq. 3; ``QuadraticAnchor``).
"""
from __future__ import annotations

from itertools import chain
from typing import Any, Iterator

import torch
from torch import nn

from factmas.importance import mas_importance
from factmas.methods.base import TaskContext
from factmas.methods.quadratic import QuadraticAnchor

IMAGE_SPLITS = ("train", "val", "test")


def parse_omega_data(which: str) -> list[str]:
    """'train', 'test', 'train+test', ... → the image splits to chain. Raises ValueError."""
    parts = which.split("+")
    if not which or any(p not in IMAGE_SPLITS for p in parts) or len(set(parts)) != len(parts):
        raise ValueError(f"omega_data: expected image splits joined by '+' from {list(IMAGE_SPLITS)} "
                         f"(e.g. 'train', 'test', 'train+test'), got {which!r}")
    return parts


class MAS(QuadraticAnchor):
    """MAS with exact per-sample importance.

    Args:
        reg_lambda: λ of the penalty.  omega_accumulate, omega_alpha: see ``QuadraticAnchor``.
        omega_data: image splits Ω is estimated on: "train" (default), "test" or "train+test".
        omega_max_samples: at most this many images and this many facts per task (None: the
            context's ``max_samples``, else all).
    Raises:
        ValueError: a bad ``omega_data`` (and see ``QuadraticAnchor``).
    """
    name = "mas"

    def __init__(self, reg_lambda: float = 1.0, omega_data: str = "train",
                 omega_max_samples: int | None = None, **options: Any) -> None:
        super().__init__(reg_lambda, **options)
        self.image_splits = parse_omega_data(omega_data)
        self.omega_data, self.omega_max_samples = omega_data, omega_max_samples

    def _images(self, ctx: TaskContext) -> Iterator[torch.Tensor]:
        return chain.from_iterable(ctx.image_batches(which) for which in self.image_splits)

    def estimate_importance(self, model: nn.Module, ctx: TaskContext) -> dict[str, torch.Tensor]:
        """Exact MAS Ω of task ``ctx.task`` (see the module docstring)."""
        cap = self.omega_max_samples if self.omega_max_samples is not None else ctx.max_samples
        return mas_importance(model, self._images(ctx), ctx.fact_batches(), max_samples=cap)
