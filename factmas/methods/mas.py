"""Memory Aware Synapses (Aljundi et al., ECCV 2018) on the two-branch model, with exact Ω.

After each task, Ω_t = (1/N) Σ_k |∂‖F(x_k)‖₂²/∂θ| per sample (Eq. 2, ℓ2 output variant, "global"),
F the raw output of each branch: image-branch parameters from the task's images, fact-branch
parameters from the task's facts (``mas_importance``). Ω accumulates over tasks
(sum by default) and training adds λ Σ Ω (θ − θ*)² (Eq. 3; ``QuadraticAnchor``).

The importance function (``mas_importance``), its references and the Ω estimators live here:

MAS (Eq. 2, with the squared ℓ2 norm of the output, Sec. 3 "global" variant)::

    Ω_ij = (1/N) Σ_k | ∂ ‖F(x_k; θ)‖₂² / ∂θ_ij |

with F the *raw* (not L2-normalized) embedding [B, 3, d] of a branch: image-branch parameters from the
task's images (F = φ), fact-branch parameters from the task's facts (F = ψ, absent slots are zeros).
A parameter gets the sum of the two branch means; one that only a branch touches gets that branch's
mean only. Raw, because after per-slot normalization ‖F̂‖² is constant (3 for an image, the fact's
order for a fact) and the gradient is zero.

The ablation ``train.omega_output: normalized`` (``normalized_mas_importance``, the estimator
``NormalizedOutputOmega``) measures how the *per-slot normalized* output F̂ (what the distance D of
``factmas.space`` reads) moves instead. Its squared norm is constant, so Eq. 2's gradient is zero; it
takes the sensitivity along a random direction u_k ~ N(0, I) of R^{3×d}, drawn once per sample from
a seeded generator (one per branch, keyed by task, so the facts' directions do not depend on how
many images were read):

    Ω_ij = (1/N) Σ_k | ∂ (u_k · F̂(x_k; θ)) / ∂θ_ij |,

whose expectation over u is √(2/π) · (1/N) Σ_k ‖∂F̂(x_k)/∂θ_ij‖₂ (E|u·g| = √(2/π)‖g‖ for a Gaussian
u): the size of θ_ij's Jacobian column, i.e. MAS's Eq. 2 with the paper's per-output gradients
g_ij (Eq. 1) before the squared-ℓ2 shortcut, by a random projection instead of the 3d backward
passes per sample that the full Jacobian would take. Its scale differs from the raw Ω's: λ is
searched apart. On several processes each rank draws its own directions, so Ω equals the
one-process Ω in expectation over u, not up to float rounding as for the raw output.

Ω estimators of a method (``MAS.estimators``, chosen by ``train.omega_output``; a method without an
estimator for the option refuses it in ``MAS.__init__``, the one place that checks the pair):

- ``OutputOmega(importance)``: Ω by an importance function of the signature of ``mas_importance``;
  MAS's "raw" (Eq. 2 on the raw output), ℓ-MAS's only one (each layer's own output).
- ``NormalizedOutputOmega``: MAS's "normalized" ablation, directions keyed by (seed, task, rank).

Importance functions (same inputs, dict name → Ω shaped like the parameter). Each is ``mas_omega``
with a per-sample routine (its argument ``estimator``, default the hooks' ``abs_grad_sums``); the
names below fix one:

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
from typing import Any, Callable, ClassVar, Iterable, Iterator, Optional, Protocol

import numpy as np
import torch
from torch import nn

from factmas.distributed import is_main, rank, reduce_sums
from factmas.methods.base import (MethodOptions, TaskContext, bad_option, check_choice,
                                  check_int_at_least, option)
from factmas.methods.quadratic import AnchorOptions, QuadraticAnchor, eval_mode
from factmas.persample.hooks import abs_grad_sums, trainable
from factmas.persample.reference import batch_abs_grad_sums, loop_abs_grad_sums, vmap_abs_grad_sums
from factmas.progress import progress_bar
from factmas.space import normalize_slots

log = logging.getLogger(__name__)

IMAGE_SPLITS = ("train", "val", "test")
OUTPUTS = ("raw", "normalized")
DIRECTION_SEED = 20180908       # the random directions u_k of the normalized-output ablation


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


def projected_image_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """u_k · φ̂(x_k) (module docstring, normalized output): (images float [B, 3, H, W], u float
    [B, 3, d]) → float [B]; φ̂ = ``normalize_slots``(φ)."""
    images, u = batch
    device = next(model.parameters()).device
    phi = normalize_slots(model.image_branch(images.to(device)))
    return (u.to(device, phi.dtype) * phi).flatten(1).sum(1)


def projected_fact_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """u_k · ψ̂(f_k): (tokens int [B, 3, L], order int [B], u float [B, 3, d]) → float [B]; absent
    slots of ψ are zeros and stay zero after ``normalize_slots``."""
    tokens, order, u = batch
    device = next(model.parameters()).device
    psi = normalize_slots(model.fact_branch(tokens.to(device), order.to(device)))
    return (u.to(device, psi.dtype) * psi).flatten(1).sum(1)


def with_directions(batches: Iterable[Any] | None, embed_dim: int,
                    generator: torch.Generator) -> Iterator[tuple] | None:
    """Each batch of ``batches`` (a tensor, or a tuple of tensors with samples along dim 0) with
    u float32 [B, 3, embed_dim] ~ N(0, I) appended, drawn from ``generator`` batch after batch."""
    if batches is None:
        return None

    def gen() -> Iterator[tuple]:
        for batch in batches:
            parts = tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)
            u = torch.randn(len(parts[0]), 3, embed_dim, generator=generator)
            yield parts + (u,)
    return gen()


def mas_omega(model: nn.Module, image_batches: Iterable[Any] | None, fact_batches: Iterable[Any] | None,
              max_samples: int | None = None, estimator: Callable = abs_grad_sums,
              loss_fns: tuple[Callable, Callable] = (image_norm_loss, fact_norm_loss)
              ) -> dict[str, torch.Tensor]:
    """MAS Ω (module docstring) with ``estimator``, a per-sample routine with the signature of
    ``factmas.persample.hooks.abs_grad_sums`` (or one of ``factmas.persample.reference``'s), and the
    per-sample outputs ``loss_fns`` (image, fact; default ‖φ‖², ‖ψ‖²); the other arguments and the
    result are those of ``mas_importance``."""
    label = estimator.__name__
    omega = {n: torch.zeros_like(p) for n, p in trainable(model).items()}
    branches = (("image", loss_fns[0], image_batches), ("fact", loss_fns[1], fact_batches))
    with eval_mode(model):
        for what, loss_fn, batches in branches:
            if batches is None:
                continue
            start = time.perf_counter()
            with progress_bar(total=max_samples, unit=what, desc=f"MAS Ω ({what}s, {label})",
                              enabled=is_main(), leave=False) as bar:
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


def direction_generator(*key: int) -> torch.Generator:
    """A torch CPU generator seeded from the integers ``key`` (numpy's SeedSequence: distinct keys
    give independent streams)."""
    seed = int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


def normalized_mas_importance(model: nn.Module, image_batches, fact_batches, max_samples=None,
                              key: tuple[int, ...] = (DIRECTION_SEED,),
                              estimator: Callable = abs_grad_sums) -> dict[str, torch.Tensor]:
    """Ω of the normalized output, (1/N) Σ_k |∂(u_k · F̂(x_k))/∂θ| (module docstring), exact per
    sample for the drawn u_k. Same API as ``mas_importance``; the images' u come from
    ``direction_generator(*key, 0)``, the facts' from ``direction_generator(*key, 1)``, batch after
    batch; ``estimator`` as in ``mas_omega`` (a reference for tests)."""
    d = model.fact_branch.embed_dim
    return mas_omega(model, with_directions(image_batches, d, direction_generator(*key, 0)),
                     with_directions(fact_batches, d, direction_generator(*key, 1)),
                     max_samples, estimator, (projected_image_loss, projected_fact_loss))


class OmegaEstimator(Protocol):
    """How a MAS-family method turns one task's images and facts into Ω (name → float tensor shaped
    like the parameter, ≥ 0)."""

    def __call__(self, model: nn.Module, image_batches: Iterable[Any] | None,
                 fact_batches: Iterable[Any] | None, max_samples: int | None,
                 task: int) -> dict[str, torch.Tensor]: ...


@dataclass(frozen=True)
class OutputOmega:
    """Ω by ``importance(model, image_batches, fact_batches, max_samples=...)`` (e.g.
    ``mas_importance``: Eq. 2 on the raw output; the task does not enter)."""
    importance: Callable[..., dict[str, torch.Tensor]]

    def __call__(self, model: nn.Module, image_batches: Iterable[Any] | None,
                 fact_batches: Iterable[Any] | None, max_samples: int | None,
                 task: int) -> dict[str, torch.Tensor]:
        return self.importance(model, image_batches, fact_batches, max_samples=max_samples)


@dataclass(frozen=True)
class NormalizedOutputOmega:
    """Ω of the per-slot normalized output (module docstring), ``normalized_mas_importance`` with the
    directions keyed by (``seed``, task, rank): other tasks and other processes draw other u_k."""
    seed: int = DIRECTION_SEED

    def __call__(self, model: nn.Module, image_batches: Iterable[Any] | None,
                 fact_batches: Iterable[Any] | None, max_samples: int | None,
                 task: int) -> dict[str, torch.Tensor]:
        return normalized_mas_importance(model, image_batches, fact_batches, max_samples,
                                         key=(self.seed, task, rank()))


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
            flag ``--omega-data`` (old key ``train.omega_data``).
        max_samples: at most this many images and this many facts per task (None: all);
            ``--omega-max-samples``.
        output: "raw" (Eq. 2 on the raw output, the default) or "normalized" (the ablation on the
            per-slot normalized output, module docstring); ``--omega-output``. MAS only.
    Raises:
        ValueError: a bad ``data``, ``max_samples`` < 1, an unknown ``output`` (and see
            ``AnchorOptions``).
    """
    data: str = option("train", "omega-data", "images Ω is estimated on: image splits train, val, "
                       "test joined by '+' ('test' reads unlabelled test images, i.e. is "
                       "transductive)")
    max_samples: Optional[int] = option(None, "omega-max-samples", "at most this many samples per "
                                        "task for Ω (MAS, ℓ-MAS: images and facts; EWC: pairs)")
    output: str = option("raw", "omega-output", "MAS Ω of the raw output (Eq. 2) or of the "
                         "normalized output along random directions (ablation)", OUTPUTS)

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            parse_omega_data(self.data)
        except (ValueError, TypeError, AttributeError):
            raise bad_option("data", self.data, "image splits from "
                             f"{list(IMAGE_SPLITS)} joined by '+' (e.g. 'train', 'test', "
                             "'train+test')") from None
        check_choice("output", self.output, OUTPUTS)
        check_int_at_least("max_samples", self.max_samples, 1, optional=True)


class MAS(QuadraticAnchor):
    """MAS with exact per-sample importance.

    Args:
        reg_lambda: λ of the penalty.  options: ``MASOptions`` (or its fields as keywords).
    Raises:
        ValueError: an unknown option or one out of range (see ``MASOptions``), an ``output`` that the
            class has no estimator for (``estimators``), λ < 0.
    """
    name = "mas"
    title = "MAS"
    paper_grid = (0.0, 1.0, 10.0, 100.0)
    Options: ClassVar[type[MethodOptions]] = MASOptions
    # options.output → the Ω estimator; a subclass replaces the dict (ℓ-MAS: {"raw": its own})
    estimators: ClassVar[dict[str, OmegaEstimator]] = {"raw": OutputOmega(mas_importance),
                                                       "normalized": NormalizedOutputOmega()}

    def __init__(self, reg_lambda: float = 1.0, options: MASOptions | None = None,
                 **values: Any) -> None:
        super().__init__(reg_lambda, options, **values)
        self.image_splits = parse_omega_data(self.options.data)
        if self.options.output not in self.estimators:
            raise ValueError(f"omega_output: {self.options.output!r} has no Ω estimator in method "
                             f"{self.name!r}; valid: {sorted(self.estimators)}")
        self.estimator: OmegaEstimator = self.estimators[self.options.output]

    def _images(self, ctx: TaskContext) -> Iterator[torch.Tensor]:
        return chain.from_iterable(ctx.image_batches(which) for which in self.image_splits)

    def estimate_importance(self, model: nn.Module, ctx: TaskContext) -> dict[str, torch.Tensor]:
        """Ω of task ``ctx.task`` from the task's images (``options.data``) and facts, by the
        estimator ``options.output`` selects (``estimators``)."""
        return self.estimator(model, self._images(ctx), ctx.fact_batches(), self.options.max_samples,
                              ctx.task)
