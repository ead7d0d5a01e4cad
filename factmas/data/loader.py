"""Batches fetched through ``torch.utils.data.DataLoader`` worker processes, in a given order (issue 28).

The trainer, Ω and the evaluator decide *which* rows each batch holds exactly as before (the seeded
permutations of ``factmas.trainer.batches``, the evaluator's image order); this module only decides
*where* the rows are read: ``batch_loader(fetch, keys, num_workers)`` yields ``fetch(key)`` for each
key of ``keys`` in order.

* ``num_workers == 0`` (the default, ``train.num_workers``): a plain generator in this process,
  ``fetch(keys[0])``, ``fetch(keys[1])``, ... — the code path of before, nothing else is imported.
* ``num_workers > 0``: a ``DataLoader`` whose sampler is ``keys`` itself (``batch_size=None``: no
  automatic batching, each key is one whole batch) and whose dataset calls ``fetch``. Workers fetch
  ahead (``prefetch_factor`` batches each), and the loader hands the batches back in the keys' order
  (``in_order``), so a batch's content and position never depend on the number of workers; pinned
  memory when ``pin_memory`` (a CUDA device). Each worker runs torch on one thread (the DataLoader's
  own setting).

``fetch`` must only read the disk and compute on the CPU: it runs in forked worker processes, where
CUDA must not be touched. The image sources (``factmas.model.features``) split their ``get`` in two
for this: ``host`` (read the rows: ``H5Images`` opens the HDF5 file on each read, so no handle is
inherited across the fork; the feature cache is a read-only memory map, pickled by its path for
``spawn`` workers) and ``finish`` (to the device, the frozen stem), run in the training process.

May import: torch, numpy (no factmas module).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Sequence


class _Keys:
    """Map-style dataset of a DataLoader without automatic batching: ``dataset[key] = fetch(key)``."""

    def __init__(self, fetch: Callable[[Any], Any], n: int) -> None:
        self.fetch, self.n = fetch, n

    def __getitem__(self, key: Any) -> Any:
        return self.fetch(key)

    def __len__(self) -> int:
        return self.n


def _as_is(batch: Any) -> Any:
    """The collate function: the fetched batch unchanged (``fetch`` already returns whole batches)."""
    return batch


def batch_loader(fetch: Callable[[Any], Any], keys: Sequence[Any], num_workers: int = 0,
                 pin_memory: bool = False, prefetch_factor: int = 2) -> Iterator[Any]:
    """``fetch(key)`` for each key of ``keys``, in order, in this process or in worker processes.

    Args:
        fetch: key → one batch (tensors, numpy arrays, tuples of them); CPU work only (module
            docstring). Picklable when workers are started by ``spawn``/``forkserver``.
        keys: the batches' keys in the order they are wanted (e.g. int64 index arrays, or tuples
            (indices, flips)); sent to the workers by pickling.
        num_workers: 0 = in this process, lazily, one batch per ``next`` (exactly as a generator);
            n > 0 = n ``DataLoader`` workers.
        pin_memory: put the batches' tensors in page-locked memory (for a fast, asynchronous copy
            to a CUDA device); only with workers.
        prefetch_factor: batches fetched ahead per worker.
    Returns:
        an iterator of the fetched batches, in the order of ``keys``.
    Raises:
        ValueError: ``num_workers`` < 0 or not an int, ``prefetch_factor`` < 1.
        Whatever ``fetch`` raises, re-raised in this process (DataLoader re-raises a worker's
        exception with its original type when it can be built from one message).
    """
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers (train.num_workers) must be an integer >= 0, got {num_workers!r}")
    if isinstance(prefetch_factor, bool) or not isinstance(prefetch_factor, int) or prefetch_factor < 1:
        raise ValueError(f"prefetch_factor must be an integer >= 1, got {prefetch_factor!r}")
    keys = list(keys)
    if num_workers == 0:
        return (fetch(k) for k in keys)
    if not keys:
        return iter(())
    from torch.utils.data import DataLoader
    loader = DataLoader(_Keys(fetch, len(keys)), sampler=keys, batch_size=None, collate_fn=_as_is,
                        num_workers=min(num_workers, len(keys)), pin_memory=pin_memory,
                        prefetch_factor=prefetch_factor, persistent_workers=False)
    return iter(loader)


def chunked(items: Sequence[Any], batch_size: int) -> Iterable[Any]:
    """``items[lo:lo + batch_size]`` for lo = 0, batch_size, ... (the last one may be shorter)."""
    return (items[lo:lo + batch_size] for lo in range(0, len(items), batch_size))
