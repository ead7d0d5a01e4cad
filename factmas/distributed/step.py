"""The data-parallel training step: every rank holds the same global batch of B pairs (drawn from the
same seeded permutation), loads and embeds only its contiguous share of the rows, and the loss of the
whole global batch is computed from the gathered embeddings.

Why gather instead of each rank taking the loss of its own rows: the task loss (``factmas.space.loss``) has
contrastive terms in which every pair of the batch is a negative for the others, so the mean of two
half-batch losses is not the loss of the batch. With the gather, the gradient is exact:
``torch.distributed.nn.functional.all_gather``'s backward adds up every rank's gradient with respect to
a rank's rows (W·∂L/∂φ_r, since every rank computes the same L), and DistributedDataParallel's
all-reduce divides by W, so each parameter receives Σ_r ∂L/∂φ_r · ∂φ_r/∂θ = ∂L/∂θ, the gradient of
one process on the global batch. Terms a method adds per rank (the penalty, identical on every rank;
LwF's distillation, a mean over the rank's rows) are averaged by DDP.

The learning rate therefore needs no scaling: ``train.batch_size`` is the global batch, each of the W
processes handles about B / W pairs of it.
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from factmas.distributed.world import active, rank, shard_bounds, size
from factmas.space.loss import fact_loss, uses_candidates


class RowShare:
    """An image input source (``factmas.model.features``: ``get(idx, flip)``) that loads only this rank's
    rows of a global batch: ``get(idx int [B], flip bool [B] | None)`` → float32 [b, ...], b ≈ B / W."""

    def __init__(self, inputs: Any) -> None:
        self.inputs = inputs
        self.rank, self.world = rank(), size()   # fixed here: ``host`` may run in a loader worker

    def host(self, idx: np.ndarray, flip: np.ndarray | None = None) -> Any:
        """This rank's rows of the source's ``host`` (the part a ``DataLoader`` worker runs)."""
        lo, hi = shard_bounds(len(idx), self.rank, self.world)
        return self.inputs.host(np.asarray(idx)[lo:hi], None if flip is None else np.asarray(flip)[lo:hi])

    def get(self, idx: np.ndarray, flip: np.ndarray | None = None) -> torch.Tensor:
        lo, hi = shard_bounds(len(idx))
        return self.inputs.get(np.asarray(idx)[lo:hi], None if flip is None else np.asarray(flip)[lo:hi])

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inputs, name)


def shard_batcher(batcher: Any) -> Any:
    """A shallow copy of a ``factmas.trainer.batches.Batcher`` whose pair batches hold the global
    batch's tokens, orders, positives and candidates but only this rank's images (``RowShare``).
    One process: ``batcher`` itself."""
    if not active():
        return batcher
    out = copy.copy(batcher)
    out.inputs = RowShare(batcher.inputs)
    return out


def gather_with_grad(local: torch.Tensor, total: int) -> torch.Tensor:
    """The rows [total, ...] of all ranks (rank r's share is ``shard_bounds(total, r)``), with a
    gradient back to each rank's own rows (``torch.distributed.nn.functional.all_gather``)."""
    import warnings
    from torch.distributed.nn.functional import all_gather
    counts = [hi - lo for lo, hi in (shard_bounds(total, r) for r in range(size()))]
    most = max(counts)
    pad = local.new_zeros((most - local.shape[0], *local.shape[1:]))
    with warnings.catch_warnings():
        # torch 2.13 marks it deprecated in favour of the private _functional_collectives, whose
        # backward needs reduce_scatter, which gloo lacks; this one works on gloo and NCCL
        warnings.simplefilter("ignore", FutureWarning)
        parts = all_gather(torch.cat([local, pad]))
    return torch.cat([p[:c] for p, c in zip(parts, counts)])


class DistributedForward:
    """The trainer's forward (``factmas.trainer.loop.forward_loss``'s signature) on W processes.

    Args:
        model: the ``TwoBranchModel`` on this rank's device; wrapped here in
            ``DistributedDataParallel`` (which broadcasts rank 0's parameters once).
        device: the model's device (``cuda:LOCAL_RANK`` or the CPU).
    Call ``(model, batch, cfg)`` with a global pair batch from ``shard_batcher``'s batcher →
    (loss of the global batch, its parts, {"phi": this rank's φ [b, 3, d], "psi": ψ [b, 3, d]}).
    """

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        ids = [device.index] if device.type == "cuda" else None
        # frozen BatchNorm: buffers never change, so they are synced once (at init), not at each step
        self.ddp = DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)

    def __call__(self, model: nn.Module, batch: dict, cfg: Any) -> tuple[torch.Tensor, dict, dict]:
        B = len(batch["fact_idx"])
        lo, hi = shard_bounds(B)
        tokens, order = batch["tokens"][lo:hi], batch["order"][lo:hi]
        cand = batch.get("candidates") if uses_candidates(cfg.loss) else None
        if cand is not None:
            C = len(cand["order"])
            clo, chi = shard_bounds(C)
            tokens = torch.cat([tokens, cand["tokens"][clo:chi]])
            order = torch.cat([order, cand["order"][clo:chi]])
        phi_l, psi_all = self.ddp(batch["images"], tokens, order)
        psi_l = psi_all[:hi - lo]
        phi, psi = gather_with_grad(phi_l, B), gather_with_grad(psi_l, B)
        if cand is not None:
            cand = {**cand, "psi": gather_with_grad(psi_all[hi - lo:], C)}
        loss, parts = fact_loss(phi, psi, batch["order"], batch["positive"], cfg.loss, cand)
        return loss, parts, {"phi": phi_l, "psi": psi_l}
