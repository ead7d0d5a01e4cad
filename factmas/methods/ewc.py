"""Elastic Weight Consolidation (Kirkpatrick et al., PNAS 2017) on the two-branch model.

After each task the importance is the diagonal empirical Fisher of the task,
F_i = (1/N) Σ_k (∂ℓ_k/∂θ_i)² over the task's training pairs, ℓ_k the per-pair wildcard regression
loss o_k · D(x_k, f_k) (``factmas.importance_extra.ewc_fisher``; exact per-sample gradients by hooks).
Training adds λ Σ_i F_i (θ_i − θ*_i)² (Eq. 3; the paper's λ/2 is folded into λ), with one anchor θ*,
the parameters after the latest task, and F summed over tasks (``ewc_gamma`` = 1; Kirkpatrick et al.
instead keep one penalty and anchor per earlier task, Huszár, PNAS 2018, argues for the single one),
or *online* EWC (Schwarz et al., ICML 2018): F ← γ F + F_t with γ < 1.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from factmas.importance_extra import as_pair_tuples, ewc_fisher
from factmas.methods.base import TaskContext
from factmas.methods.quadratic import QuadraticAnchor


class EWC(QuadraticAnchor):
    """EWC with the exact diagonal empirical Fisher of the per-pair regression loss.

    Args:
        reg_lambda: λ.  ewc_gamma: γ ∈ [0, 1], decay of the earlier tasks' Fisher before the new one is
            added (1: plain sum over tasks; < 1: online EWC).
        omega_max_samples: at most this many training pairs per task (None: the context's
            ``max_samples``, else all).  Other options: see ``QuadraticAnchor``.
    Raises:
        ValueError: γ outside [0, 1] (and see ``QuadraticAnchor``).
    """
    name = "ewc"

    def __init__(self, reg_lambda: float = 1.0, ewc_gamma: float = 1.0,
                 omega_max_samples: int | None = None, **options: Any) -> None:
        super().__init__(reg_lambda, **options)
        if not 0.0 <= float(ewc_gamma) <= 1.0:
            raise ValueError(f"ewc_gamma must be in [0, 1], got {ewc_gamma}")
        self.gamma, self.omega_max_samples = float(ewc_gamma), omega_max_samples

    def estimate_importance(self, model: nn.Module, ctx: TaskContext) -> dict[str, torch.Tensor]:
        """The Fisher diagonal of task ``ctx.task`` from its training pairs."""
        cap = self.omega_max_samples if self.omega_max_samples is not None else ctx.max_samples
        return ewc_fisher(model, as_pair_tuples(ctx.pair_batches()), max_samples=cap)

    def on_task_end(self, model: nn.Module, ctx: TaskContext) -> None:
        """Online EWC: F ← γ F before the new task's Fisher is added (then as ``QuadraticAnchor``)."""
        if self.gamma != 1.0:
            self.omega = {n: self.gamma * t for n, t in self.omega.items()}
        super().on_task_end(model, ctx)
