"""Memory Aware Synapses (Aljundi et al., ECCV 2018) on the two-branch model, with exact Ω.

After each task, Ω_t = (1/N) Σ_k |∂‖F(x_k)‖₂²/∂θ| per sample (Eq. 2, ℓ2 output variant, "global"),
F the raw output of each branch: image-branch parameters from the task's images, fact-branch
parameters from the task's facts (``mas_importance``). Ω accumulates over tasks
(sum by default) and training adds λ Σ Ω (θ − θ*)² (Eq. 3; ``QuadraticAnchor``).

The estimator (``mas_importance``) and its references live here:

MAS (Eq. 2, with the squared ℓ2 norm of the output, Sec. 3 "global" variant)::

    Ω_ij = (1/N) Σ_k | ∂ ‖F(x_k; θ)‖₂² / ∂θ_ij |

with F the *raw* (not L2-normalized) embedding [B, 3, d] of a branch: image-branch parameters from the
task's images (F = φ), fact-branch parameters from the task's facts (F = ψ, absent slots are zeros).
A parameter gets the sum of the two branch means; one that only a branch touches gets that branch's
mean only. Raw, because after normalization ‖F̂‖² = 1 for every input and the gradient is zero.

Estimators (same inputs, dict name → Ω shaped like the parameter):

Each takes the per-sample routine as a function (``estimator``, default the hooks'
``abs_grad_sums``); the names below fix one:

- ``mas_importance``: exact per sample, by hooks (``factmas.persample.hooks``).
- ``loop_mas_importance``: exact, naive per-sample loop (reference).
- ``vmap_mas_importance``: exact, ``torch.func.vmap``; image branch only where the fact branch's
  forward reads tensor values (pass ``fact_batches=None``).
- ``batch_approx_mas_importance``: (1/N) Σ_batches |∂ Σ_{k∈batch} ‖F(x_k)‖² / ∂θ| — what the official
  MAS code (batch size > 1), Avalanche and FACIL compute; ≤ the exact Ω elementwise.

The model is put in eval mode while Ω is estimated (samples independent; modes restored after).

Distributed (torchrun): each process sums over its share of the task's images and facts (the
trainer's ``TaskContext`` hands each rank its share), ``factmas.distributed.reduce_sums`` adds the sums
and the counts, Ω = sum / N on every rank: the one-process Ω up to the order of float additions.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from itertools import chain
from typing import Any, Callable, ClassVar, Iterable, Iterator, Optional

import torch
from torch import nn
from tqdm import tqdm

from factmas.distributed import is_main, reduce_sums
from factmas.methods.base import MethodOptions, TaskContext
from factmas.methods.quadratic import AnchorOptions, QuadraticAnchor, eval_mode
from factmas.persample.hooks import abs_grad_sums, trainable
from factmas.persample.reference import batch_abs_grad_sums, loop_abs_grad_sums, vmap_abs_grad_sums

log = logging.getLogger(__name__)

IMAGE_SPLITS = ("train", "val", "test")


def squared_norm(z: torch.Tensor) -> torch.Tensor:
    """‖F(x_k)‖₂² per sample: float [B, ...] → float [B] (sum of squares over all but dim 0)."""
    return z.pow(2).flatten(1).sum(1)


def image_norm_loss(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """‖φ(x_k)‖² of raw image embeddings: images float [B, 3, H, W] → float [B]."""
    device = next(model.parameters()).device
    return squared_norm(model.image_branch(images.to(device)))


def fact_norm_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """‖ψ(f_k)‖² of raw fact embeddings: (tokens int [B, 3, L], order int [B]) → float [B]."""
    device = next(model.parameters()).device
    tokens, order = batch
    return squared_norm(model.fact_branch(tokens.to(device), order.to(device)))


def mas_omega(model: nn.Module, image_batches: Iterable[Any] | None, fact_batches: Iterable[Any] | None,
              max_samples: int | None = None, estimator: Callable = abs_grad_sums
              ) -> dict[str, torch.Tensor]:
    """MAS Ω (module docstring) with ``estimator``, a per-sample routine with the signature of
    ``factmas.persample.hooks.abs_grad_sums`` (or one of ``factmas.persample.reference``'s); the
    arguments and the result are those of ``mas_importance``."""
    label = estimator.__name__
    omega = {n: torch.zeros_like(p) for n, p in trainable(model).items()}
    branches = (("image", image_norm_loss, image_batches), ("fact", fact_norm_loss, fact_batches))
    with eval_mode(model):
        for what, loss_fn, batches in branches:
            if batches is None:
                continue
            start = time.perf_counter()
            with tqdm(total=max_samples, unit=what, desc=f"MAS Ω ({what}s, {label})",
                      disable=None if is_main() else True, leave=False) as bar:
                sums, n = estimator(model, loss_fn, batches, max_samples, progress=bar.update)
            sums, n = reduce_sums(sums, n)     # several processes: every rank's sums and counts
            if n == 0:
                raise ValueError(f"MAS importance: no {what}s to estimate Ω from (empty batches)")
            for name, s in sums.items():
                omega[name].add_(s / n)
            seconds = time.perf_counter() - start
            log.info("MAS Ω from %d %ss (%s): %.1f %ss/s", n, what, label,
                     n / max(seconds, 1e-9), what)
    return omega


def mas_importance(model: nn.Module, image_batches: Iterable[torch.Tensor] | None,
                   fact_batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None,
                   max_samples: int | None = None) -> dict[str, torch.Tensor]:
    """Exact per-sample MAS Ω (module docstring) by hook-based per-sample gradients.

    Args:
        model: a ``TwoBranchModel`` (``image_branch``, ``fact_branch``); ``p.grad`` untouched.
        image_batches: iterable of float [B, 3, H, W] preprocessed images (None: skip the branch).
        fact_batches: iterable of (tokens int64 [B, 3, L], order int64 [B]) (None: skip).
        max_samples: at most this many images and at most this many facts (None: all).
    Returns:
        name → Ω float tensor shaped like the parameter (every trainable parameter; ≥ 0).
    Raises:
        ValueError: a branch's batches are empty.
    """
    return mas_omega(model, image_batches, fact_batches, max_samples, abs_grad_sums)


def loop_mas_importance(model: nn.Module, image_batches, fact_batches, max_samples=None):
    """Exact MAS Ω by a per-sample loop of forward + backward (reference; same API as above)."""
    return mas_omega(model, image_batches, fact_batches, max_samples, loop_abs_grad_sums)


def vmap_mas_importance(model: nn.Module, image_batches, fact_batches, max_samples=None):
    """Exact MAS Ω by ``torch.func`` vmap (same API; the fact branch's input checks break vmap)."""
    return mas_omega(model, image_batches, fact_batches, max_samples, vmap_abs_grad_sums)


def batch_approx_mas_importance(model: nn.Module, image_batches, fact_batches, max_samples=None):
    """Approximate Ω = (1/N) Σ_batches |∂ Σ_{k∈batch} ‖F(x_k)‖² / ∂θ| (official code, Avalanche,
    FACIL); ≤ the exact Ω elementwise, equal for batches of one sample. Same API as above."""
    return mas_omega(model, image_batches, fact_batches, max_samples, batch_abs_grad_sums)


def parse_omega_data(which: str) -> list[str]:
    """'train', 'test', 'train+test', ... → the image splits to chain. Raises ValueError."""
    parts = which.split("+")
    if not which or any(p not in IMAGE_SPLITS for p in parts) or len(set(parts)) != len(parts):
        raise ValueError(f"omega_data: expected image splits joined by '+' from {list(IMAGE_SPLITS)} "
                         f"(e.g. 'train', 'test', 'train+test'), got {which!r}")
    return parts


@dataclass(frozen=True)
class MASOptions(AnchorOptions):
    """Options of MAS and ℓ-MAS (and ``AnchorOptions``'s).

    Attributes:
        data: image splits Ω is estimated on: "train" (default), "test", "train+test", ...;
            config key ``train.omega_data``.
        max_samples: at most this many images and this many facts per task (None: all);
            ``train.omega_max_samples``.
    Raises:
        ValueError: a bad ``data``, ``max_samples`` < 1 (and see ``AnchorOptions``).
    """
    data: str = "train"
    max_samples: Optional[int] = None
    CONFIG_KEYS: ClassVar[dict[str, str]] = {**AnchorOptions.CONFIG_KEYS, "data": "omega_data",
                                             "max_samples": "omega_max_samples"}

    def __post_init__(self) -> None:
        super().__post_init__()
        parse_omega_data(self.data)
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"omega_max_samples must be >= 1 or None, got {self.max_samples}")


class MAS(QuadraticAnchor):
    """MAS with exact per-sample importance.

    Args:
        reg_lambda: λ of the penalty.  options: ``MASOptions`` (or its fields as keywords).
    Raises:
        ValueError: an unknown option or one out of range (see ``MASOptions``), λ < 0.
    """
    name = "mas"
    Options: ClassVar[type[MethodOptions]] = MASOptions
    importance: ClassVar[Callable] = staticmethod(mas_importance)   # (model, images, facts, max_samples)

    def __init__(self, reg_lambda: float = 1.0, options: MASOptions | None = None,
                 **values: Any) -> None:
        super().__init__(reg_lambda, options, **values)
        self.image_splits = parse_omega_data(self.options.data)

    def _images(self, ctx: TaskContext) -> Iterator[torch.Tensor]:
        return chain.from_iterable(ctx.image_batches(which) for which in self.image_splits)

    def estimate_importance(self, model: nn.Module, ctx: TaskContext) -> dict[str, torch.Tensor]:
        """Ω of task ``ctx.task`` by the class's ``importance`` function (MAS: exact, module
        docstring) from the task's images (``options.data``) and facts."""
        return type(self).importance(model, self._images(ctx), ctx.fact_batches(),
                                     max_samples=self.options.max_samples)
