"""Lifelong Fact Learning's member ranks block by block: only each test pair's first member is kept.

LFL's metric (``factmas.evaluation.lfl``) needs, for each test (image, fact f) pair, the position of
the best-ranked member of its ground truth G(f) among the candidates, in the standard mode (f's
task) and the generalized one (every task). ``lfl.lfl_inputs`` listed every (pair, member) as a
"capped pair" for ``factmas.evaluation.ranking.rank_pairs`` and kept their counts to the end: 4.24 M
pairs at 40,125 test images of the scale benchmark, each with six int64 and three int32-per-segment
counts (≈ 0.7 GB; docs/benchmarks.md § 11), linear in the test images.

``MemberStream`` gives ``rank_pairs`` the (query row, member) pairs of one block of query rows at a
time (``pairs``), takes their counts once the block is counted (``take``: a row's counts are final
after its block) and keeps of them only, per test pair, the least member position in each mode and
the two group sizes (four int64 [P]); ``hits`` then gives ``lfl.lfl_hits_from_ranks``' two hit
arrays. The positions are the same counts as before (the same needles in the same blocks), so the
hits, and LFL's scores, are equal bit for bit; memory is the block's members only.

May import: numpy, ``factmas.evaluation.lfl``.
"""
from __future__ import annotations

import numpy as np

from factmas.evaluation.lfl import LFL_MAX_RANK, LFL_TOP

BIG = np.iinfo(np.int64).max        # "no member seen" (as ``lfl_hits_from_ranks``' initial value)


def member_ranges(fact: np.ndarray, candidate: np.ndarray, s_key: np.ndarray, sp_key: np.ndarray,
                  order: np.ndarray):
    """The ground truths G(f) of every fact as ranges of a few sorted lists (``lfl.member_pairs``'
    groups, computed once): returns (lists, which, lo, n) with ``lists`` three int64 arrays of fact
    ids (0: every fact as its own group, 1: the candidates sorted by subject key, 2: by (subject,
    predicate) key), and for each of the ``fact`` int [Q] the list it reads (``which`` int64 [Q]), its
    first position ``lo`` and its member count ``n`` (int64 [Q]; 0 for an ⟨S,P,O⟩ fact that is not a
    candidate). candidate bool [F]; s_key, sp_key int [F] (``lfl.group_keys``); order int [F] in 1..3."""
    fact = np.asarray(fact, np.int64)
    order = np.asarray(order, np.int64)
    candidate = np.asarray(candidate, bool)
    cand = np.flatnonzero(candidate)
    o = order[fact]
    which = np.where(o == 3, 0, o).astype(np.int64)
    lo, n = fact.copy(), candidate[fact].astype(np.int64)           # ⟨S,P,O⟩: f itself, if a candidate
    lists = [np.arange(len(order), dtype=np.int64)]
    for k, key in ((1, s_key), (2, sp_key)):
        key = np.asarray(key, np.int64)
        by_key = cand[np.argsort(key[cand], kind="stable")]
        lists.append(by_key)
        q = np.flatnonzero(which == k)
        a = np.searchsorted(key[by_key], key[fact[q]], "left")
        lo[q], n[q] = a, np.searchsorted(key[by_key], key[fact[q]], "right") - a
    return lists, which, lo, n


class MemberStream:
    """LFL's member ranks of a set of test pairs, fed block by block by ``rank_pairs(capped_stream=)``.

    Args:
        fact: int [P] each test pair's fact.  task: int [P] its task.  row: int [P] its image's
            query row in ``rank_pairs``' numbering (the queries given to it).
        candidate: bool [F] the candidate facts (a fact of a pool pair).  s_key, sp_key: int [F]
            (``lfl.group_keys``).  order: int [F] in 1..3.  task_of_fact: int [F].
    ``rank_pairs`` calls ``rows()`` once, then per block ``pairs(qb)`` (the block's query rows) and,
    once the block is counted, ``take(...)``; then ``hits()``. The counts' segments must be
    ``lfl.lfl_segments``' (2·task + candidate).
    """

    def __init__(self, fact, task, row, candidate, s_key, sp_key, order, task_of_fact) -> None:
        self.fact = np.asarray(fact, np.int64)
        self.task = np.asarray(task, np.int64)
        self.row = np.asarray(row, np.int64)
        self.task_of_fact = np.asarray(task_of_fact, np.int64)
        self.lists, self.which, self.lo, self.n = member_ranges(self.fact, candidate, s_key, sp_key, order)
        self.by_row = np.argsort(self.row, kind="stable")
        self.row_sorted = self.row[self.by_row]
        P = len(self.fact)
        self.first_std, self.first_gen = np.full(P, BIG), np.full(P, BIG)
        self.size_std, self.size_gen = np.zeros(P, np.int64), np.zeros(P, np.int64)
        self.done = np.zeros(P, bool)
        self._pending = None

    def total(self) -> int:
        """The (pair, member) pairs of every test pair (``lfl.member_pairs``' length)."""
        return int(self.n.sum())

    def rows(self) -> np.ndarray:
        """int64: the distinct query rows of the test pairs."""
        return np.unique(self.row)

    def members(self, owners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(owner int64 [E], member int64 [E]): every member of G(fact) of the test pairs ``owners``
        (indexes into the pairs), grouped by owner."""
        owners = np.asarray(owners, np.int64)
        n = self.n[owners]
        owner = np.repeat(owners, n)
        run = np.arange(int(n.sum()), dtype=np.int64) - np.repeat(np.cumsum(n) - n, n)
        member = np.empty(len(owner), np.int64)
        w = self.which[owner]
        for k, lst in enumerate(self.lists):
            sel = np.flatnonzero(w == k)
            member[sel] = lst[self.lo[owner[sel]] + run[sel]]
        return owner, member

    def pairs(self, qb: np.ndarray) -> np.ndarray:
        """int64 [E, 2]: the (query row, member fact) pairs whose counts LFL reads, of the test
        pairs whose row is in ``qb`` (sorted query rows of one block); ``take`` follows."""
        qb = np.asarray(qb, np.int64)
        if not len(qb):
            qb = np.zeros(0, np.int64)
        a = int(np.searchsorted(self.row_sorted, qb[0], "left")) if len(qb) else 0
        b = int(np.searchsorted(self.row_sorted, qb[-1], "right")) if len(qb) else 0
        owners = self.by_row[a:b]
        owners = owners[np.isin(self.row[owners], qb)]
        if self.done[owners].any():
            raise RuntimeError("LFL member stream: a query row was given in two blocks")
        owner, member = self.members(owners)
        self._pending = (owners, owner, member)
        return np.stack([self.row[owner], member], axis=1)

    def take(self, keys: np.ndarray, n_items: int, below: np.ndarray, tie_lower: np.ndarray,
             below_seg: np.ndarray, tie_lower_seg: np.ndarray, segments: np.ndarray) -> None:
        """The counts of the block whose pairs ``pairs`` gave: ``keys`` int64 [K] sorted keys
        query·``n_items`` + item of the block's pairs (those of ``pairs`` among them); ``below``,
        ``tie_lower`` int64 [K] within the item's segment; ``below_seg``, ``tie_lower_seg`` int32
        [K, S] per segment (``segments`` int64 [S], ``lfl.lfl_segments``' ids). A member's position
        (1-based, ties by lower fact id) is below + tie_lower + 1 in the standard mode (its own
        segment: its task's candidates), the sum over the candidate segments in the generalized one
        (``lfl.lfl_hits_from_ranks``). Raises ValueError where a member's pair is not in ``keys``."""
        owners, owner, member = self._pending
        self._pending = None
        want = self.row[owner] * n_items + member
        at = np.searchsorted(keys, want)
        if len(want) and (not len(keys) or not (keys[np.minimum(at, len(keys) - 1)] == want).all()):
            raise ValueError("the ranks lack pairs that LFL needs (the block's member pairs)")
        cand_cols = np.flatnonzero(np.asarray(segments) % 2 == 1)
        pos_std = below[at] + tie_lower[at] + 1
        pos_gen = (below_seg[at][:, cand_cols].sum(1, dtype=np.int64)
                   + tie_lower_seg[at][:, cand_cols].sum(1, dtype=np.int64) + 1)
        same = self.task_of_fact[member] == self.task[owner]
        np.minimum.at(self.first_std, owner[same], pos_std[same])
        np.minimum.at(self.first_gen, owner, pos_gen)
        np.add.at(self.size_std, owner[same], 1)
        np.add.at(self.size_gen, owner, 1)
        self.done[owners] = True

    def hits(self) -> tuple[np.ndarray, np.ndarray]:
        """bool [P] × 2: LFL's hit of each test pair in the standard and generalized modes (the
        first member's position r ≤ 100 and r ≤ 5 + |G(f)| − 1, ``lfl.lfl_hits_from_ranks``).
        Raises RuntimeError where a pair's row was never counted."""
        if not self.done.all():
            raise RuntimeError(f"LFL member stream: {int((~self.done).sum())} test pairs never counted")
        hit_std = (self.first_std <= LFL_MAX_RANK) & (self.first_std <= LFL_TOP + self.size_std - 1)
        hit_gen = (self.first_gen <= LFL_MAX_RANK) & (self.first_gen <= LFL_TOP + self.size_gen - 1)
        return hit_std, hit_gen


def stream_for(ev, inputs: dict, pair_rows: np.ndarray, sel=slice(None)) -> MemberStream:
    """The ``MemberStream`` of the test pairs ``inputs["pairs"][sel]`` (``lfl.lfl_inputs(ev)``),
    their images at query rows ``pair_rows`` (int [len of the selection]) of ``rank_pairs``."""
    pairs = inputs["pairs"][sel]
    return MemberStream(pairs[:, 1], inputs["task"][sel], pair_rows, inputs["candidate"],
                        inputs["s_key"], inputs["sp_key"], ev.data.order, ev.task_of_fact)
