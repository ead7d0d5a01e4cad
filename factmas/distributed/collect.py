"""Collectives of the run's results: sums of per-sample terms, rows embedded by shares, and the
arrays of a sharded evaluation (``all_reduce_array``, ``gather_to_main``).

``reduce_sums`` is what keeps the per-sample importances exact on several processes: each rank sums
its share of the samples, one all-reduce adds the sums and the counts, and the caller divides,
Ω = (Σ_ranks Σ_k |g_k|) / (Σ_ranks N_r), the one-process Ω up to the order of float additions.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from factmas.distributed.world import active, is_main, shard, shard_bounds, size


def _comm_device(t: torch.Tensor) -> torch.device:
    """Where a collective needs ``t``: the process's GPU under NCCL, the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def reduce_sums(sums: dict[str, torch.Tensor], n: int) -> tuple[dict[str, torch.Tensor], int]:
    """Every rank's ``sums`` added up (elementwise, per name) and the total count ``N = Σ_r n_r``.

    Args:
        sums: name → float tensor (any shapes and dtypes; the same names and shapes on every rank),
            e.g. Σ_k |∂‖F(x_k)‖²/∂θ| over this rank's samples (MAS, Aljundi et al. 2018, Eq. 2).
        n: the number of samples this rank summed.
    Returns:
        (name → summed tensor on the device and dtype of the input, N). With one process: the
        inputs unchanged. One all-reduce per (dtype, device) group plus one for the counts.
    """
    if not active():
        return sums, n
    groups: dict[tuple, list[str]] = {}
    for name, t in sums.items():
        groups.setdefault((t.dtype, t.device), []).append(name)
    out: dict[str, torch.Tensor] = {}
    for (_, device), names in groups.items():
        flat = torch.cat([sums[k].reshape(-1) for k in names])
        comm = flat.to(_comm_device(flat))
        dist.all_reduce(comm, op=dist.ReduceOp.SUM)
        flat = comm.to(device)
        offset = 0
        for k in names:
            numel = sums[k].numel()
            out[k] = flat[offset:offset + numel].view_as(sums[k]).clone()
            offset += numel
    count = torch.tensor([int(n)], dtype=torch.int64)
    count = count.to(_comm_device(count))
    dist.all_reduce(count, op=dist.ReduceOp.SUM)
    return {k: out[k] for k in sums}, int(count.item())


@torch.no_grad()
def gather_rows(embed: Callable[[np.ndarray], torch.Tensor], ids: np.ndarray) -> torch.Tensor:
    """``embed(ids)`` computed by shares: each rank embeds its contiguous share of ``ids``
    (``shard``), an all-gather gives every rank all the rows in the order of ``ids``.

    Args:
        embed: ids int [n] → float [n, ...] (e.g. raw φ [n, 3, d] of dataset images); rows
            independent of each other.
        ids: int [N] items to embed.
    Returns:
        float [N, ...] on the device ``embed`` returned (one process, or N < size(): ``embed(ids)``
        on every rank).
    """
    ids = np.asarray(ids)
    if not active() or len(ids) < size():
        return embed(ids)
    local = embed(shard(ids))
    counts = [hi - lo for lo, hi in (shard_bounds(len(ids), r) for r in range(size()))]
    most = max(counts)
    pad = torch.zeros((most - local.shape[0], *local.shape[1:]), dtype=local.dtype, device=local.device)
    comm = torch.cat([local, pad]).to(_comm_device(local))
    parts = [torch.empty_like(comm) for _ in range(size())]
    dist.all_gather(parts, comm)
    return torch.cat([p[:c] for p, c in zip(parts, counts)]).to(local.device)


def all_reduce_array(x: np.ndarray, op: str = "sum") -> np.ndarray:
    """Every rank's ``x`` (a numpy array of the same shape and dtype on each rank: int64, int32,
    float32 or float64) combined elementwise by ``op``, "sum" or "max"; the result on every rank.
    With one process: ``x`` itself. Integer sums, and float sums where at most one rank holds a
    non-zero per element, are exact (independent of the order of the ranks).
    Raises ValueError for another op."""
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
    if op not in ops:
        raise ValueError(f"all_reduce_array: op {op!r}; valid: {list(ops)}")
    if not active():
        return np.asarray(x)
    t = torch.from_numpy(np.ascontiguousarray(x)).clone()
    comm = t.to(_comm_device(t))
    dist.all_reduce(comm, op=ops[op])
    return comm.cpu().numpy()


def gather_to_main(obj):
    """Every rank's ``obj`` (picklable, e.g. a dict of numpy arrays) as a list in rank order on rank
    0, None on the others (one process: ``[obj]``)."""
    if not active():
        return [obj]
    out = [None] * size() if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out
