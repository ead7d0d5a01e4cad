"""Elastic Weight Consolidation (Kirkpatrick et al., PNAS 2017) on the two-branch model.

After each task the importance is the diagonal empirical Fisher of the task,
F_i = (1/N) Σ_k (∂ℓ_k/∂θ_i)² over the task's training pairs, ℓ_k the per-pair wildcard regression
loss o_k · D(x_k, f_k) (``ewc_fisher``; exact per-sample gradients by hooks).
Training adds λ Σ_i F_i (θ_i − θ*_i)² (Eq. 3; the paper's λ/2 is folded into λ), with one anchor θ*,
the parameters after the latest task, and F summed over tasks (``ewc_gamma`` = 1; Kirkpatrick et al.
instead keep one penalty and anchor per earlier task, Huszár, PNAS 2018, argues for the single one),
or *online* EWC (Schwarz et al., ICML 2018): F ← γ F + F_t with γ < 1.

The estimator:

- ``ewc_fisher`` (Kirkpatrick et al., PNAS 2017, Eq. 3 and its supplement): the diagonal of the
  *empirical* Fisher, F_i = (1/N) Σ_k (∂ℓ_k/∂θ_i)², from exact per-sample gradients
  (``factmas.persample.hooks.abs_grad_sums`` with ``power=2``) of the per-pair loss ℓ_k = o_k · D(x_k, f_k),
  the summand of Sherlock's wildcard regression (``factmas.space.loss.pair_regression_losses``) for training pair k
  (image x_k, its true fact f_k of order o_k). Empirical: the observed fact, not one sampled from a
  model distribution (this model has no likelihood). The contrastive term of the task loss couples the
  samples of a batch, so it has no per-sample gradient and is left out.

Distributed (torchrun): each process sums (∂ℓ_k/∂θ)² over its share of the task's training pairs;
``factmas.distributed.reduce_sums`` adds the sums and the counts (F = sum / N on every rank).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterable, Optional

import torch
from torch import nn

from factmas.distributed import reduce_sums
from factmas.space.loss import pair_regression_losses as loss_per_pair
from factmas.methods.base import MethodOptions, TaskContext, check_int_at_least, check_number, option
from factmas.methods.quadratic import AnchorOptions, QuadraticAnchor, eval_mode
from factmas.persample.hooks import abs_grad_sums

log = logging.getLogger(__name__)

PairBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]   # images, tokens, order


def pair_regression_losses(model: nn.Module, batch: PairBatch) -> torch.Tensor:
    """ℓ_k = o_k · D(x_k, f_k) per pair of the model's embeddings: (images float [B,3,H,W], tokens
    int64 [B,3,L], order int64 [B]) → float [B] (``factmas.space.loss.pair_regression_losses``)."""
    images, tokens, order = batch
    return loss_per_pair(model.image_branch(images), model.fact_branch(tokens, order), order)


def as_pair_tuples(batches: Iterable[dict]) -> Iterable[PairBatch]:
    """The trainer's pair-batch dicts → (images, tokens, order) tuples (drops the [B, B] matrix)."""
    for b in batches:
        yield b["images"], b["tokens"], b["order"]


def ewc_fisher(model: nn.Module, pair_batches: Iterable[PairBatch], max_samples: int | None = None,
               estimator: Callable = abs_grad_sums) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher F = (1/N) Σ_k (∂ℓ_k/∂θ)² of the per-pair regression loss.

    Args:
        model: a ``TwoBranchModel``; put in eval mode meanwhile; ``p.grad`` untouched.
        pair_batches: iterable of (images, tokens, order) batches of training pairs.
        max_samples: at most this many pairs (None: all).
        estimator: ``abs_grad_sums`` (hooks, default) or a reference with its signature
            (``factmas.persample.reference.loop_abs_grad_sums``).
    Returns:
        name → F float tensor shaped like the parameter (every trainable parameter).
    Raises:
        ValueError: no pairs.
    """
    t0 = time.perf_counter()
    with eval_mode(model):
        sums, n = estimator(model, pair_regression_losses, pair_batches, max_samples, power=2)
    sums, n = reduce_sums(sums, n)             # several processes: every rank's sums and counts
    if n == 0:
        raise ValueError("EWC Fisher: no training pairs to estimate it from (empty batches)")
    log.info("EWC Fisher from %d pairs: %.1f pairs/s", n, n / max(time.perf_counter() - t0, 1e-9))
    return {name: s / n for name, s in sums.items()}


@dataclass(frozen=True)
class EWCOptions(AnchorOptions):
    """Options of EWC (and ``AnchorOptions``'s).

    Attributes:
        gamma: γ ∈ [0, 1], decay of the earlier tasks' Fisher before the new one is added (1: plain
            sum over tasks; < 1: online EWC); flag ``--ewc-gamma`` (old key ``train.ewc_gamma``).
        max_samples: at most this many training pairs per task (None: all); ``--omega-max-samples``.
    Raises:
        ValueError: γ outside [0, 1], ``max_samples`` < 1 (and see ``AnchorOptions``).
    """
    gamma: float = option(1.0, "ewc-gamma", "EWC: decay γ ∈ [0, 1] of the earlier Fisher (1: sum "
                          "over tasks, < 1: online EWC)")
    max_samples: Optional[int] = option(None, "omega-max-samples", "at most this many samples per "
                                        "task for Ω (MAS, ℓ-MAS: images and facts; EWC: pairs)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("gamma", self.gamma, 0.0, 1.0)
        check_int_at_least("max_samples", self.max_samples, 1, optional=True)


class EWC(QuadraticAnchor):
    """EWC with the exact diagonal empirical Fisher of the per-pair regression loss.

    Args:
        reg_lambda: λ.  options: ``EWCOptions`` (or its fields as keywords).
    Raises:
        ValueError: an unknown option or one out of range (see ``EWCOptions``), λ < 0.
    """
    name = "ewc"
    title = "EWC"
    paper_grid = (0.0, 1e3, 1e4, 1e5)
    Options: ClassVar[type[MethodOptions]] = EWCOptions

    def estimate_importance(self, model: nn.Module, ctx: TaskContext) -> dict[str, torch.Tensor]:
        """The Fisher diagonal of task ``ctx.task`` from its training pairs."""
        return ewc_fisher(model, as_pair_tuples(ctx.pair_batches()), max_samples=self.options.max_samples)

    def on_task_end(self, model: nn.Module, ctx: TaskContext) -> None:
        """Online EWC: F ← γ F before the new task's Fisher is added (then as ``QuadraticAnchor``)."""
        gamma = float(self.options.gamma)
        if gamma != 1.0:
            self.omega = {n: gamma * t for n, t in self.omega.items()}
        super().on_task_end(model, ctx)
