"""Exact FAISS search with Sherlock's wildcard distance, one flat index per fact order.

Top-k search for ``factmas query`` / ``search`` and the benchmarks. The evaluator's full-ranking
metrics do not sort rankings any more: they count ranks (``factmas.evaluation.ranking``, same
distances, same tie rules, ≈ 60× faster at 50,000 images × 100,000 facts).

The wildcard distance (``factmas.space``) of image x and fact f of order o compares only the o slots
the fact has, averaged so that facts of different orders are comparable:

    D(x, f) = (1/o) Σ_{s<o} ‖φ̂_s − ψ̂_s‖² = 2 − (2/o) · ⟨[φ̂_S|…]_{:o}, [ψ̂_S|…]_{:o}⟩   ∈ [0, 4]

with per-slot L2-normalized vectors (Sherlock, Elhoseiny et al. AAAI 2017, Sec. 4). For a fixed order
o the ranking is an inner-product search over the prefix [S] (o = 1), [S|P] (o = 2) or [S|P|O] (o = 3)
of the concatenated unit slot vectors, so each order gets its own exact ``IndexFlatIP`` over
``o·d`` dimensions, and inner products are mapped to D = 2 − (2/o)·IP by
``factmas.space.distance_from_similarity`` (the loss's definition of D):

* ``FactIndex`` (image → fact): the facts of each order in their own index; an image is searched in
  every index and the per-order top-k lists are merged by D (ties: lower fact id first).
* ``ImageIndex`` (fact → image): the images' prefixes [S], [S|P], [S|P|O] in three indexes; a fact
  of order o is searched in index o.

Queries go in batches (``batch`` rows per FAISS call, and at most ``MAX_RESULTS`` result entries per
call) so that memory stays bounded; ``search_batches`` yields them one at a time. FAISS GPU indexes
are used when ``faiss.get_num_gpus() > 0`` (except for k > ``GPU_MAX_K``, beyond FAISS's GPU
selection limit, where the CPU index answers).
"""
from __future__ import annotations

import logging
from typing import Iterator

import numpy as np
import torch

from factmas.space import NUM_SLOTS, distance_from_similarity, normalize_slots

log = logging.getLogger(__name__)

MAX_RESULTS = 1 << 22   # result entries (queries × k) per FAISS call: 4M → 48 MiB of D and I (and
                        # about 300 MiB of float64 temporaries when the caller computes AP on them)
GPU_MAX_K = 2048        # FAISS GPU flat search selects at most 2048 neighbours


def require_faiss():
    """Import faiss, or raise ImportError saying which extra to install."""
    # faiss's loader logs each optional build it could not load (AVX512, AVX2) at INFO with a
    # ModuleNotFoundError text that reads like a failure; only its warnings are worth showing.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        import faiss
    except ImportError as e:
        raise ImportError("factmas retrieval needs FAISS, which is not installed: "
                          "`pip install factmas[cpu]` (faiss-cpu) or `pip install factmas[gpu]` "
                          "(faiss-gpu; never both)") from e
    return faiss


_GPU_RES = None


def _gpu_resources(faiss):
    global _GPU_RES
    if _GPU_RES is None:
        _GPU_RES = faiss.StandardGpuResources()
    return _GPU_RES


def unit_slots(z: torch.Tensor | np.ndarray) -> np.ndarray:
    """Per-slot L2-normalized embeddings as float32 numpy [N, 3, d] (from raw float [N, 3, d])."""
    t = torch.as_tensor(z).detach().to("cpu", torch.float32)
    if t.ndim != 3 or t.shape[1] != NUM_SLOTS:
        raise ValueError(f"embeddings must be [N, 3, d], got shape {tuple(t.shape)}")
    return normalize_slots(t).numpy()


def prefix(z_hat: np.ndarray, o: int) -> np.ndarray:
    """float32 [N, o·d]: the first o unit slot vectors of z_hat [N, 3, d], concatenated (C order)."""
    return np.ascontiguousarray(z_hat[:, :o].reshape(len(z_hat), -1), dtype=np.float32)


class _FlatIP:
    """One exact inner-product index (CPU, plus a GPU copy when FAISS has GPUs)."""

    def __init__(self, vectors: np.ndarray, gpu: bool | None):
        faiss = require_faiss()
        self.cpu = faiss.IndexFlatIP(vectors.shape[1])
        self.cpu.add(vectors)
        self.gpu = None
        if gpu is None:
            gpu = faiss.get_num_gpus() > 0
        if gpu:
            self.gpu = faiss.index_cpu_to_gpu(_gpu_resources(faiss), 0, self.cpu)

    @property
    def ntotal(self) -> int:
        return self.cpu.ntotal

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        index = self.gpu if self.gpu is not None and k <= GPU_MAX_K else self.cpu
        return index.search(q, k)


def _batch_size(batch: int, k: int) -> int:
    if batch < 1:
        raise ValueError(f"search batch must be >= 1, got {batch}")
    return max(1, min(batch, MAX_RESULTS // max(k, 1)))


class FactIndex:
    """Facts indexed for image → fact search (one flat IP index per fact order present).

    Args:
        psi: float [M, 3, d] raw fact embeddings (torch or numpy).  order: int [M] in {1, 2, 3}.
        gpu: force GPU (True) / CPU (False); None: GPU when ``faiss.get_num_gpus() > 0``.
    Raises:
        ImportError: faiss is missing.  ValueError: bad shapes or orders.
    """

    def __init__(self, psi, order, gpu: bool | None = None):
        f_hat = unit_slots(psi)
        self.order = np.asarray(order, dtype=np.int64).reshape(-1)
        if len(self.order) != len(f_hat) or not np.isin(self.order, (1, 2, 3)).all():
            raise ValueError(f"order must give 1, 2 or 3 for each of {len(f_hat)} facts")
        self.num_facts = len(f_hat)
        self.ids: dict[int, np.ndarray] = {}
        self.indexes: dict[int, _FlatIP] = {}
        for o in (1, 2, 3):
            ids = np.flatnonzero(self.order == o)
            if len(ids):
                self.ids[o] = ids
                self.indexes[o] = _FlatIP(prefix(f_hat[ids], o), gpu)

    def search_batches(self, phi, k: int, batch: int = 4096
                       ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield (start, D float32 [b, k'], I int64 [b, k']) for consecutive batches of images.

        phi: float [N, 3, d] raw image embeddings; k' = min(k, number of facts); rows sorted by
        ascending wildcard distance D, ties by lower fact id.
        """
        x_hat = unit_slots(phi)
        k = min(int(k), self.num_facts)
        if k < 1:
            raise ValueError(f"k must be >= 1 and the index non-empty (k={k}, {self.num_facts} facts)")
        step = _batch_size(batch, k * len(self.indexes))
        for start in range(0, len(x_hat), step):
            xb = x_hat[start:start + step]
            ds, ids = [], []
            for o, index in self.indexes.items():
                ko = min(k, index.ntotal)
                ip, loc = index.search(prefix(xb, o), ko)
                ds.append(distance_from_similarity(ip, o))
                ids.append(self.ids[o][loc])
            d, i = np.concatenate(ds, axis=1), np.concatenate(ids, axis=1)
            sel = _merge_order(d, i)[:, :k]
            yield start, np.take_along_axis(d, sel, 1), np.take_along_axis(i, sel, 1)

    def search(self, phi, k: int, batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """Top-k facts of every image: (D float32 [N, k'], I int64 [N, k']); see ``search_batches``."""
        return _concat(self.search_batches(phi, k, batch))


def _merge_order(d: np.ndarray, i: np.ndarray) -> np.ndarray:
    """int64 [b, c]: per row, the column order sorting by d, then by i (two stable sorts)."""
    by_id = np.argsort(i, axis=1, kind="stable")
    by_d = np.argsort(np.take_along_axis(d, by_id, 1), axis=1, kind="stable")
    return np.take_along_axis(by_id, by_d, 1)


class ImageIndex:
    """Images indexed for fact → image search: prefixes [S], [S|P], [S|P|O], one flat IP index each.

    Args:
        phi: float [N, 3, d] raw image embeddings.  gpu: as in ``FactIndex``.
    """

    def __init__(self, phi, gpu: bool | None = None):
        x_hat = unit_slots(phi)
        self.num_images = len(x_hat)
        self.indexes = {o: _FlatIP(prefix(x_hat, o), gpu) for o in (1, 2, 3)}

    def search_batches(self, psi, order, k: int, batch: int = 4096
                       ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield (fact ids int64 [b], D float32 [b, k'], I int64 [b, k']) batch by batch.

        psi: float [M, 3, d] raw fact embeddings; order: int [M]. Facts are grouped by order, so the
        batches are not in fact-id order: use the yielded ids. k' = min(k, number of images).
        """
        f_hat = unit_slots(psi)
        order = np.asarray(order, dtype=np.int64).reshape(-1)
        if len(order) != len(f_hat) or not np.isin(order, (1, 2, 3)).all():
            raise ValueError(f"order must give 1, 2 or 3 for each of {len(f_hat)} facts")
        k = min(int(k), self.num_images)
        if k < 1:
            raise ValueError(f"k must be >= 1 and the index non-empty (k={k}, {self.num_images} images)")
        step = _batch_size(batch, k)
        for o in (1, 2, 3):
            ids_o = np.flatnonzero(order == o)
            for start in range(0, len(ids_o), step):
                ids = ids_o[start:start + step]
                ip, loc = self.indexes[o].search(prefix(f_hat[ids], o), k)
                yield ids, distance_from_similarity(ip, o), loc

    def search(self, psi, order, k: int, batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """Top-k images of every fact, in fact-id order: (D float32 [M, k'], I int64 [M, k'])."""
        m = len(np.asarray(order).reshape(-1))
        k = min(int(k), self.num_images)
        d_all = np.empty((m, k), np.float32)
        i_all = np.empty((m, k), np.int64)
        for ids, d, i in self.search_batches(psi, order, k, batch):
            d_all[ids], i_all[ids] = d, i
        return d_all, i_all


def _concat(parts) -> tuple[np.ndarray, np.ndarray]:
    ds, is_ = [], []
    for _, d, i in parts:
        ds.append(d)
        is_.append(i)
    return np.concatenate(ds), np.concatenate(is_)
