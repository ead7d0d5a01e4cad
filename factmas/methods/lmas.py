"""Local MAS, ℓ-MAS (Aljundi et al., ECCV 2018, Sec. 4.3): each layer's importance from its own output.

Ω of layer l's parameters = (1/N) Σ_k |∂‖F_l(x_k)‖₂²/∂θ_l|, F_l the layer's own output, the gradient
local to the layer (the paper's link to Hebbian learning: for a linear layer |2 y_i x_j|). Computed
exactly per sample by ``local_mas_importance`` (below) on the per-sample engine of
``factmas.persample.local``; Ω data, accumulation and the penalty λ Σ Ω (θ − θ*)² are those of
``MAS``, and so is the Ω loop (``mas_omega``: per branch, eval mode, all-reduce of the sums).

The estimator:

- ``local_mas_importance`` (Aljundi et al., ECCV 2018, Sec. 4.3 "local"): each parametrized layer l
  gets Ω_l = (1/N) Σ_k |∂‖F_l(x_k)‖₂²/∂θ_l|, F_l the output of that layer alone (the module owning the
  parameters, before any following activation, except one applied in place: see
  ``factmas.persample.local``), the gradient taken with respect to that layer's own parameters only.
  With y = F_l(a; θ_l) the gradient of ‖y_k‖² at the output is 2 y_k, so the per-sample closed
  forms of ``factmas.persample.layers`` apply with δ = 2y (for a Linear layer: |2 y_k a_kᵀ|, the
  Hebbian product of the paper). Image-branch layers from images, fact-branch layers
  from facts; in the fact branch's per-slot MLPs only the facts that have that slot count (absent
  slots run on an all-pad input and are masked out of ψ, so they are not part of the learned function).
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from factmas.methods.mas import MAS, OutputOmega, mas_omega
from factmas.persample.local import local_abs_grad_sums


def fact_slot_masks(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[nn.Module, torch.Tensor]:
    """Module → bool [B] of the facts whose slot s is present, for every module of slot s's MLP."""
    order = batch[1]
    return {m: order > s for s, mlp in enumerate(model.fact_branch.slots) for m in mlp.modules()}


def image_outputs(model: nn.Module, images: torch.Tensor) -> None:
    """Run the image branch on images float [B, 3, H, W] (its layers' outputs F_l count for all B)."""
    device = next(model.parameters()).device
    model.image_branch(images.to(device))


def fact_outputs(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[nn.Module, torch.Tensor]:
    """Run the fact branch on (tokens int64 [B, 3, L], order int64 [B]); returns the sample weights
    ``fact_slot_masks`` (slot s's MLP counts only the facts that have slot s)."""
    device = next(model.parameters()).device
    tokens, order = batch[0].to(device), batch[1].to(device)
    model.fact_branch(tokens, order)
    return fact_slot_masks(model, (tokens, order))


def local_mas_importance(model: nn.Module, image_batches: Iterable[torch.Tensor] | None,
                         fact_batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None,
                         max_samples: int | None = None) -> dict[str, torch.Tensor]:
    """ℓ-MAS Ω (module docstring): image-branch layers from ``image_batches`` (float [B, 3, H, W]),
    fact-branch layers from ``fact_batches`` ((tokens int64 [B, 3, L], order int64 [B])); each branch
    averaged over its N samples (at most ``max_samples`` each). Model in eval mode meanwhile.

    Raises:
        ValueError: a branch's batches are empty, or a layer without a per-sample formula.
    """
    return mas_omega(model, image_batches, fact_batches, max_samples, local_abs_grad_sums,
                     (image_outputs, fact_outputs))


class LocalMAS(MAS):
    """ℓ-MAS: ``MAS`` with ``local_mas_importance`` as its only Ω estimator (``omega_output: raw``,
    each layer's own output); the same options (``MASOptions``).

    Raises:
        ValueError: as ``MAS`` (an ``omega_output`` without an estimator here, e.g. "normalized").
    """
    name = "l-mas"
    title = "ℓ-MAS"
    paper_grid = (0.0, 0.03, 0.3, 3.0)
    estimators = {"raw": OutputOmega(local_mas_importance)}
