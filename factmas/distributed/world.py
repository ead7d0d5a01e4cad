"""The run's process group: who am I (``rank``), how many are we (``size``), which share of a list is
mine (``shard_bounds``), and errors that reach every rank (``agree``, ``main_first``).

torchrun (``python -m torch.distributed.run``) starts the processes and sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; ``start_from_env`` joins the group with
``torch.distributed.init_process_group`` (NCCL when the run is on CUDA, gloo otherwise). Without
torchrun (or with one process) nothing is started and ``rank() == 0``, ``size() == 1``.

A rank that fails stops the others: torchrun stops every worker when one exits with an error (its
default, ``--max-restarts 0``); a collective waits at most ``FACTMAS_DIST_TIMEOUT_S`` seconds
(default 1800) before it raises; and the setup steps that can fail on one rank only (the run directory,
the feature cache) go through ``agree``/``main_first``, which raise the failing rank's own error on
every rank.
"""
from __future__ import annotations

import datetime
import logging
import os
import pickle
from typing import Any, Callable, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from factmas.errors import FactmasError

log = logging.getLogger(__name__)

T = TypeVar("T")
TIMEOUT_ENV = "FACTMAS_DIST_TIMEOUT_S"


class DistributedError(FactmasError, RuntimeError):
    """Another rank failed (the message names the rank and its error)."""

    exit_code = 1


def active() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank, 0 ... size() - 1 (0 without a process group)."""
    return dist.get_rank() if active() else 0


def size() -> int:
    """The number of processes of the run (the world size; 1 without a process group)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True on rank 0, the process that writes results, checkpoints, logs and progress."""
    return rank() == 0


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when unset). Raises ValueError on a non-integer."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable WORLD_SIZE={value!r}: expected an integer") from None


def start_from_env(device: str = "auto") -> bool:
    """Join the process group torchrun describes in the environment; True when one was joined.

    Args:
        device: the run's ``train.device`` ("auto", "cpu", "cuda"): NCCL (one GPU per process,
            ``cuda:LOCAL_RANK``) when it resolves to CUDA, gloo otherwise.
    Raises:
        ValueError: a bad ``WORLD_SIZE``/``LOCAL_RANK`` or ``FACTMAS_DIST_TIMEOUT_S``.
        RuntimeError: from ``init_process_group`` (e.g. the rendezvous timed out).
    """
    if env_world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local} but this machine has {torch.cuda.device_count()} "
                             "GPUs; start at most one process per GPU (--nproc-per-node)")
        torch.cuda.set_device(local)
    try:
        seconds = float(os.environ.get(TIMEOUT_ENV, "1800"))
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV}={os.environ[TIMEOUT_ENV]!r}: expected seconds") from None
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=seconds))
    log.info("process group: rank %d of %d, backend %s", rank(), size(), backend)
    return True


def stop(clean: bool = True) -> None:
    """Leave the process group (if any).

    ``clean``: this rank finished without an error, so every rank is expected here too: wait for
    all of them (a barrier) before the group is destroyed, so that no rank tears down its gloo
    connections while a peer still completes its last collective (an intermittent SIGABRT,
    "terminate called without an active exception", seen in tests/distributed; the barrier before
    destroy is what mosaicml/streaming#186 does). A barrier that fails (a peer has died) is logged
    and the group is destroyed anyway. ``clean=False`` (an error on this rank): no barrier, which
    could wait for ranks that never come (pytorch/torchtitan#1342).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if clean and size() > 1:
        try:
            dist.barrier()
        except Exception as e:            # noqa: BLE001 - leaving anyway; the peer's error says why
            log.warning("process group: barrier before leaving failed (%s: %s)", type(e).__name__,
                        str(e)[:200])
    dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """``device`` made specific to this process: ``cuda:LOCAL_RANK`` (the GPU ``start_from_env``
    chose) for CUDA, unchanged otherwise."""
    if device.type == "cuda" and active():
        return torch.device("cuda", torch.cuda.current_device())
    return device


def shard_bounds(n: int, r: int | None = None, world: int | None = None) -> tuple[int, int]:
    """[lo, hi) of rank ``r``'s contiguous share of ``n`` items (default: this rank of this world).

    Shares differ by at most one item, the larger ones first (``numpy.array_split``), and together
    they are 0 ... n in rank order.
    """
    r = rank() if r is None else r
    world = size() if world is None else world
    base, extra = divmod(int(n), int(world))
    lo = r * base + min(r, extra)
    return lo, lo + base + (1 if r < extra else 0)


def shard(items: np.ndarray) -> np.ndarray:
    """This rank's contiguous share of ``items`` (all of them with one process)."""
    lo, hi = shard_bounds(len(items))
    return items[lo:hi]


def _picklable(e: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:                        # noqa: BLE001 (any unpicklable error travels as text)
        return DistributedError(f"{type(e).__name__}: {e}")


def agree(fn: Callable[[], T]) -> T:
    """Run ``fn`` on every rank, then raise on every rank if it failed on any.

    The failing rank raises its own error; the others raise a copy of the lowest failing rank's
    error (same class and message, so the command exits with the same status), or
    ``DistributedError`` naming it when the error cannot be sent. One process: ``fn()``.
    """
    if not active():
        return fn()
    error: BaseException | None = None
    result = None
    try:
        result = fn()
    except Exception as e:                   # noqa: BLE001 (re-raised below, on every rank)
        error = e
    errors: list[Any] = [None] * size()
    dist.all_gather_object(errors, None if error is None else _picklable(error))
    if error is not None:
        raise error
    for r, e in enumerate(errors):
        if e is not None:
            log.debug("rank %d failed: %s", r, e)
            raise e
    return result  # type: ignore[return-value]


def main_first(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0, then (if it succeeded everywhere) on the other ranks; errors as ``agree``.

    For steps that write something the other ranks then read (the feature cache, the run directory).
    ``fn`` must not itself run a collective (e.g. build a DistributedDataParallel): the ranks run it
    at different times.
    """
    if not active():
        return fn()
    first = agree(fn if is_main() else (lambda: None))
    second = agree((lambda: None) if is_main() else fn)
    return first if is_main() else second  # type: ignore[return-value]


def broadcast(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (pickled; for small plain data such as metric dicts)."""
    if not active():
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every rank (no-op with one process)."""
    if active():
        dist.barrier()
