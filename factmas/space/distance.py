"""The structured embedding space [S | P | O] and Sherlock's wildcard distance.

Both branches output raw embeddings of shape [B, 3, d] (slot 0 = S, 1 = P, 2 = O). Training and
retrieval compare *per-slot L2-normalized* vectors; MAS importance is taken on the raw output.

Wildcard distance (Sherlock, Elhoseiny et al., AAAI 2017, Sec. 4: absent slots are ignored), made
comparable across fact orders by averaging over the slots the fact has:

    D(x, f) = (1 / o_f) · Σ_{s < o_f} ‖ φ̂_s(x) − ψ̂_s(f) ‖²,   φ̂ = φ / ‖φ‖,  ψ̂ = ψ / ‖ψ‖

With unit vectors ‖a − b‖² = 2 − 2 a·b, so D(x, f) = 2 − (2 / o_f) Σ_{s < o_f} φ̂_s · ψ̂_s ∈ [0, 4].

This is the one definition of D: ``distance_from_similarity`` maps the summed slot similarity to D,
and the loss (``wildcard_distance``, ``paired_wildcard_distance``; ``factmas.space.loss``) and the FAISS
search (``factmas.evaluation.retrieval``, inner products of the first o_f unit slot vectors) both go
through it.
"""
from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

NUM_SLOTS = 3
EPS = 1e-8

Array = TypeVar("Array", torch.Tensor, np.ndarray)


def distance_from_similarity(similarity: Array, order: Array | int) -> Array:
    """D = 2 − 2 · S / o from S = Σ_{s < o} φ̂_s · ψ̂_s, the inner product of the first o unit slot
    vectors (module docstring): torch or numpy, any broadcastable shapes; ``order`` o ∈ {1, 2, 3}
    (an int, or an array of the facts' orders). Returns D in [0, 4] of the broadcast shape."""
    return 2.0 - 2.0 * similarity / order


def slot_mask(order: torch.Tensor) -> torch.Tensor:
    """bool [B, 3]: True for the slots a fact of ``order`` (int [B], values 1..3) has."""
    return torch.arange(NUM_SLOTS, device=order.device)[None, :] < order[:, None]


def normalize_slots(z: torch.Tensor) -> torch.Tensor:
    """L2-normalize each slot of ``z`` (float [B, 3, d]) → float [B, 3, d] of unit slot vectors."""
    return z / z.norm(dim=-1, keepdim=True).clamp_min(EPS)


def wildcard_distance(phi: torch.Tensor, psi: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Mean squared distance over the present slots, every image against every fact.

    Args:
        phi: float [N, 3, d] raw image embeddings.  psi: float [M, 3, d] raw fact embeddings.
        order: int [M] order of each fact (1, 2 or 3).
    Returns:
        float [N, M], D(x_n, f_m) as in the module docstring, in [0, 4].
    """
    a, b = normalize_slots(phi), normalize_slots(psi)
    mask = slot_mask(order).to(a.dtype)                            # [M, 3]
    sims = torch.einsum("nsd,msd->nms", a, b)                      # [N, M, 3]
    return distance_from_similarity((sims * mask[None]).sum(-1), order.to(a.dtype)[None, :])


def paired_wildcard_distance(phi: torch.Tensor, psi: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """D(x_b, f_b) for aligned rows: phi, psi float [B, 3, d], order int [B] → float [B]."""
    a, b = normalize_slots(phi), normalize_slots(psi)
    mask = slot_mask(order).to(a.dtype)
    return distance_from_similarity(((a * b).sum(-1) * mask).sum(-1), order.to(a.dtype))
