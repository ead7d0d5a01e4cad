"""Importance estimates of the comparison methods: EWC's Fisher, SI's normalization, local MAS.

All return dict parameter name → float tensor shaped like the parameter (≥ 0), for the trainable
parameters of the model, as ``factmas.importance.mas_importance`` does.

- ``ewc_fisher`` (Kirkpatrick et al., PNAS 2017, Eq. 3 and its supplement): the diagonal of the
  *empirical* Fisher, F_i = (1/N) Σ_k (∂ℓ_k/∂θ_i)², from exact per-sample gradients
  (``factmas.persample.hooks.abs_grad_sums`` with ``power=2``) of the per-pair loss ℓ_k = o_k · D(x_k, f_k),
  the summand of Sherlock's wildcard regression (``factmas.loss.regression_loss``) for training pair k
  (image x_k, its true fact f_k of order o_k). Empirical: the observed fact, not one sampled from a
  model distribution (this model has no likelihood). The contrastive term of the task loss couples the
  samples of a batch, so it has no per-sample gradient and is left out.
- ``si_importance`` (Zenke et al., ICML 2017, Eq. 5): Ω_i = ω_i / ((Δ_i)² + ξ), ω_i the path integral
  Σ_steps −g_i Δθ_i of the task (Eq. 4, accumulated by ``factmas.methods.si``), Δ_i = θ_i(end) −
  θ_i(start); negative values are set to 0 (a quadratic penalty needs Ω ≥ 0).
- ``local_mas_importance`` (Aljundi et al., ECCV 2018, Sec. 4.3 "local"): each parametrized layer l
  gets Ω_l = (1/N) Σ_k |∂‖F_l(x_k)‖₂²/∂θ_l|, F_l the output of that layer alone (the module owning the
  parameters, before any following activation), the gradient taken with respect to that layer's own
  parameters only. With y = F_l(a; θ_l) the gradient of ‖y_k‖² at the output is 2 y_k, so the
  per-sample closed forms of ``factmas.persample.layers`` apply with δ = 2y (for a Linear layer:
  |2 y_k a_kᵀ|, the Hebbian product of the paper). Image-branch layers from images, fact-branch layers
  from facts; in the fact branch's per-slot MLPs only the facts that have that slot count (absent
  slots run on an all-pad input and are masked out of ψ, so they are not part of the learned function).
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any, Callable, Iterable

import torch
from torch import nn

from factmas.importance import eval_mode
from factmas.persample.hooks import DEFAULT_BUDGET, abs_grad_sums, batch_size, capped, trainable
from factmas.persample.layers import (embedding_abs_sum, embedding_entries, layer_grads, sum_magnitude,
                               unsupported_reason)
from factmas.space import paired_wildcard_distance

log = logging.getLogger(__name__)

PairBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]   # images, tokens, order


# ---- EWC ----------------------------------------------------------------------------------------
def pair_regression_losses(model: nn.Module, batch: PairBatch) -> torch.Tensor:
    """ℓ_k = o_k · D(x_k, f_k) per pair: (images float [B,3,H,W], tokens int64 [B,3,L], order int64
    [B]) → float [B] (the summands of ``factmas.loss.regression_loss``; samples independent)."""
    images, tokens, order = batch
    phi = model.image_branch(images)
    psi = model.fact_branch(tokens, order)
    return order.to(phi.dtype) * paired_wildcard_distance(phi, psi, order)


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
    if n == 0:
        raise ValueError("EWC Fisher: no training pairs to estimate it from (empty batches)")
    log.info("EWC Fisher from %d pairs: %.1f pairs/s", n, n / max(time.perf_counter() - t0, 1e-9))
    return {name: s / n for name, s in sums.items()}


# ---- SI -----------------------------------------------------------------------------------------
def si_importance(path: dict[str, torch.Tensor], delta: dict[str, torch.Tensor],
                  xi: float) -> dict[str, torch.Tensor]:
    """Ω = max(ω / (Δ² + ξ), 0) per parameter (Zenke et al. 2017, Eq. 5).

    Args:
        path: name → ω, the path integral Σ_steps −g Δθ over the task.
        delta: name → Δ = θ(end of task) − θ(start), same shapes.  xi: ξ > 0 (damping).
    Raises:
        ValueError: ξ ≤ 0 or different names/shapes.
    """
    if not xi > 0:
        raise ValueError(f"SI: xi must be > 0, got {xi}")
    if set(path) != set(delta) or any(path[n].shape != delta[n].shape for n in path):
        raise ValueError("SI: path integral and parameter change have different parameters/shapes")
    return {n: (w / (delta[n].square() + xi)).clamp_min(0.0) for n, w in path.items()}


# ---- local MAS ----------------------------------------------------------------------------------
def fact_slot_masks(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[nn.Module, torch.Tensor]:
    """Module → bool [B] of the facts whose slot s is present, for every module of slot s's MLP."""
    order = batch[1]
    return {m: order > s for s, mlp in enumerate(model.fact_branch.slots) for m in mlp.modules()}


class LocalHooks:
    """Forward hooks keeping each parametrized layer's (input, output) per call; ``add`` turns them
    into Σ_k |∂‖F_l(x_k)‖²/∂θ_l| with δ = 2y (module docstring).

    Raises:
        ValueError: a trainable parameter in a module without a per-sample formula.
    """

    def __init__(self, model: nn.Module, budget: int = DEFAULT_BUDGET) -> None:
        self.budget = budget
        name_of = {id(p): n for n, p in trainable(model).items()}
        self.layers: dict[nn.Module, dict[str, str]] = {}
        for m in model.modules():
            own = {a: name_of[id(p)] for a, p in m.named_parameters(recurse=False) if id(p) in name_of}
            if not own:
                continue
            reason = unsupported_reason(m)
            if reason is not None:
                raise ValueError(f"local MAS: {', '.join(own.values())}: {reason}")
            self.layers[m] = own
        self.calls: dict[nn.Module, list] = defaultdict(list)
        self.handles: list[Any] = []

    def __enter__(self) -> "LocalHooks":
        self.handles = [m.register_forward_hook(self._hook) for m in self.layers]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()
        self.handles, self.calls = [], defaultdict(list)

    def _hook(self, m: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self.calls[m].append((inputs[0].detach(), output.detach()))

    def add(self, B: int, sums: dict[str, torch.Tensor],
            masks: dict[nn.Module, torch.Tensor] | None = None) -> None:
        """Add the batch's Σ_k |g_k| (B samples) of every layer called since the last ``add``."""
        for m, calls in self.calls.items():
            names = self.layers[m]
            per_sample: dict[str, torch.Tensor] = {}
            emb = []
            for a, y in calls:
                d = 2.0 * y
                if masks is not None and m in masks:
                    keep = masks[m].to(d.dtype)
                    d = d * keep.repeat_interleave(d.shape[0] // B).view(-1, *[1] * (d.ndim - 1))
                if isinstance(m, nn.Embedding):
                    emb.append(embedding_entries(m, a, d, B))
                    continue
                grads = layer_grads(m, a, d, B, reduce=len(calls) == 1, budget=self.budget)
                for attr, g in grads.items():
                    if len(calls) == 1:
                        sums[names[attr]].add_(g)
                    else:                                     # several calls: Σ_calls g_k, then |.|
                        per_sample[attr] = g if attr not in per_sample else per_sample[attr] + g
            for attr, g in per_sample.items():
                sums[names[attr]].add_(sum_magnitude(g, 1))
            if emb:
                keys = torch.cat([k for k, _ in emb])
                rows = torch.cat([r for _, r in emb])
                sums[names["weight"]].add_(embedding_abs_sum(m, keys, rows))
        self.calls = defaultdict(list)


def local_mas_importance(model: nn.Module, image_batches: Iterable[torch.Tensor] | None,
                         fact_batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None,
                         max_samples: int | None = None) -> dict[str, torch.Tensor]:
    """ℓ-MAS Ω (module docstring): image-branch layers from ``image_batches`` (float [B, 3, H, W]),
    fact-branch layers from ``fact_batches`` ((tokens int64 [B, 3, L], order int64 [B])); each branch
    averaged over its N samples (at most ``max_samples`` each). Model in eval mode meanwhile.

    Raises:
        ValueError: a branch's batches are empty, or a layer without a per-sample formula.
    """
    omega = {n: torch.zeros_like(p) for n, p in trainable(model).items()}
    device = next(model.parameters()).device
    branches = (("image", image_batches), ("fact", fact_batches))
    with eval_mode(model), torch.no_grad(), LocalHooks(model) as hooks:
        for what, batches in branches:
            if batches is None:
                continue
            sums = {n: torch.zeros_like(p) for n, p in trainable(model).items()}
            n, t0 = 0, time.perf_counter()
            for batch in capped(batches, max_samples):
                B = batch_size(batch)
                if what == "image":
                    model.image_branch(batch.to(device))
                    hooks.add(B, sums)
                else:
                    tokens, order = batch[0].to(device), batch[1].to(device)
                    model.fact_branch(tokens, order)
                    hooks.add(B, sums, fact_slot_masks(model, (tokens, order)))
                n += B
            if n == 0:
                raise ValueError(f"local MAS importance: no {what}s to estimate Ω from")
            for name, s in sums.items():
                omega[name].add_(s / n)
            log.info("ℓ-MAS Ω from %d %ss: %.1f %ss/s", n, what,
                     n / max(time.perf_counter() - t0, 1e-9), what)
    return omega
