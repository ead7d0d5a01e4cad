"""Local MAS, ℓ-MAS (Aljundi et al., ECCV 2018, Sec. 4.3): each layer's importance from its own output.

Ω of layer l's parameters = (1/N) Σ_k |∂‖F_l(x_k)‖₂²/∂θ_l|, F_l the layer's own output, the gradient
local to the layer (the paper's link to Hebbian learning: for a linear layer |2 y_i x_j|). Computed
exactly per sample by ``local_mas_importance`` (below); Ω data, accumulation and the
penalty λ Σ Ω (θ − θ*)² are those of ``MAS``.

The estimator:

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
from typing import Any, Iterable

import torch
from torch import nn

from factmas.distributed import reduce_sums
from factmas.methods.mas import MAS
from factmas.methods.quadratic import eval_mode
from factmas.persample.hooks import DEFAULT_BUDGET, batch_size, capped, trainable
from factmas.persample.layers import (embedding_abs_sum, embedding_entries, layer_grads, sum_magnitude,
                                      unsupported_reason)

log = logging.getLogger(__name__)


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
            sums, n = reduce_sums(sums, n)     # several processes: every rank's sums and counts
            if n == 0:
                raise ValueError(f"local MAS importance: no {what}s to estimate Ω from")
            for name, s in sums.items():
                omega[name].add_(s / n)
            log.info("ℓ-MAS Ω from %d %ss: %.1f %ss/s", n, what,
                     n / max(time.perf_counter() - t0, 1e-9), what)
    return omega


class LocalMAS(MAS):
    """ℓ-MAS: ``MAS`` with ``local_mas_importance``; the same options (``MASOptions``).

    Raises:
        ValueError: as ``MAS``, and ``omega_output`` other than "raw" (a MAS-only ablation).
    """
    name = "l-mas"
    title = "ℓ-MAS"
    paper_grid = (0.0, 0.03, 0.3, 3.0)
    importance = staticmethod(local_mas_importance)

    def __init__(self, reg_lambda: float = 1.0, options=None, **values: Any) -> None:
        super().__init__(reg_lambda, options, **values)
        if self.options.output != "raw":
            raise ValueError(f"omega_output: {self.options.output!r} is a MAS ablation; ℓ-MAS reads "
                             f"each layer's own output (use 'raw')")
