"""Exact evaluation at scale: the evaluator's rank-based path against the old FAISS full ranking and
against the score matrix alone, in one run.

    .venv/bin/python bench/eval_exact.py [--cases 10000x100000 50000x100000] [--threads 1 2]
                                         [--tasks 4] [--old-budget 2e8] [--quick] [--out FILE]

For each case (N test images × F facts) and thread count, on synthetic embeddings with a trained
model's structure (``eval_scaling.Space``: slot vectors = concept prototype + noise; distinct facts
⟨S⟩, ⟨S,P⟩, ⟨S,P,O⟩, each image showing 5 ⟨S,P,O⟩ facts of Zipf-like popularity and their prefixes:
``make_case``), split into ``--tasks`` tasks:

* **floor**: the N × F wildcard score matrix alone, computed by blocks of image rows with one matrix
  product per fact order (``block_elements`` entries per block, as the evaluator), nothing else;
* **CPU time**: the same two, in CPU seconds of this process (``time.process_time``, 1 thread):
  on cores shared with other jobs the wall-clock ratio moves with their load (±0.3 between runs),
  the CPU-time ratio much less (``new_over_floor_cpu``);
* **new**: ``Evaluator.evaluate_embeddings`` (what ``factmas train`` runs after every task): fact →
  image AP, AP@100 and Recall@1/5/10 of every fact, image → fact top-1, top-5, AP and Recall@K of
  every image, per task and over all facts, LFL's metric in both modes, all exact; measured in full,
  never extrapolated (``new_over_floor``: its time over the mean of the floor before and after);
* **old**: the previous evaluator code (FAISS ``ImageIndex`` full ranking per fact + AP and AP@k of
  the ranked list; ``FactIndex`` full ranking per image, once per task and once over all facts, merged
  by argsorts + AP and top-k), timed on a sample of queries (at most ``--old-budget`` result entries
  per direction) and scaled to all queries; its AP values on the sample are compared with the new ones.

The evaluation is timed as the first one in the process (numba's compiled kernels are loaded from
its on-disk cache on the first call: a few tenths of a second, once; compiled on the first run on a
machine: several seconds — run the benchmark twice and keep the second). Also recorded: the load
average (1, 5, 15 min) at the start and end of each case, the CPU model (/proc/cpuinfo's "model name", the same as lscpu's "Model name"; ``factmas.io.cpu_model``), numpy's float32 row-sort speed (ns per
entry) and whether the compiled counting of ``factmas.evaluation.count_kernel`` ran (numba, the
``fast`` extra: then no row is sorted but those with more than 48 true items, e.g. a popular fact's
images; without it, the evaluator sorts the rows of a block where a model ranks its true items so
low that selecting the entries above them would keep more than a quarter of the block, and the
ratio depends on the sort speed). Writes bench/results/eval_exact.json.
"""
from __future__ import annotations

import argparse
import os
import time

# OpenMP threads that spin after each torch operation take the cores the numpy sorts and searches
# between the products need: at 2 threads on 2 cores the evaluation ran 3.6x slower with the
# default policy (10k x 100k: 40 s against 11 s with PASSIVE). Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

import common
from eval_scaling import Space
from factmas.config import EvalConfig
from factmas.data.dataset import FactData
from factmas.evaluation import count_kernel
from factmas.evaluation import metrics as M
from factmas.evaluation.evaluator import Evaluator
from factmas.evaluation.ranking import BLOCK_ELEMENTS, rank_pairs
from factmas.evaluation.retrieval import FactIndex, ImageIndex, prefix, require_faiss, unit_slots

K = EvalConfig().ap_k


CONCEPTS_LARGE = (20000, 500, 20000)    # subjects, predicates, objects (distinct facts at F = 100k)
FACTS_PER_IMAGE = 5                     # ⟨S,P,O⟩ facts of each image (a few captions' worth)


def make_case(n: int, f: int, tasks: int, seed: int = 0):
    """(phi, psi, order int [F], pairs int [P, 2] (image, fact), task int [F]).

    Facts: 10 % ⟨S⟩, 30 % ⟨S,P⟩ extending them, 60 % ⟨S,P,O⟩ extending those, all distinct. Each image
    shows ``FACTS_PER_IMAGE`` ⟨S,P,O⟩ facts drawn with Zipf-like popularity (p ∝ 1/(rank + 10)); their
    ⟨S,P⟩ and ⟨S⟩ prefixes are true for it too. Embeddings: ``eval_scaling.Space`` prototypes of the
    concepts + noise (an image is embedded from its first fact)."""
    rng = np.random.default_rng(seed)
    space = Space(seed)
    space.protos = [rng.standard_normal((c, 64)).astype(np.float32) for c in CONCEPTS_LARGE]
    nS, nP, nO = CONCEPTS_LARGE
    n1, n2 = int(0.1 * f), int(0.3 * f)
    n3 = f - n1 - n2
    s1 = rng.choice(nS, n1, replace=False)
    k2 = np.unique(s1[rng.integers(0, n1, 2 * n2)] * nP + rng.integers(0, nP, 2 * n2))
    k2 = rng.permutation(k2)[:n2]
    k3 = np.unique(k2[rng.integers(0, len(k2), 2 * n3)] * nO + rng.integers(0, nO, 2 * n3))
    k3 = rng.permutation(k3)[:n3]
    ids = np.zeros((f, 3), np.int64)
    ids[:n1, 0] = s1
    ids[n1:n1 + len(k2), 0], ids[n1:n1 + len(k2), 1] = k2 // nP, k2 % nP
    e = n1 + len(k2)
    ids[e:e + len(k3), 0], ids[e:e + len(k3), 1], ids[e:e + len(k3), 2] = \
        k3 // nO // nP, k3 // nO % nP, k3 % nO
    order = np.r_[np.full(n1, 1), np.full(len(k2), 2), np.full(len(k3), 3)]
    f = len(order)
    prob = 1.0 / (np.arange(len(k3)) + 10.0)
    shown = rng.choice(len(k3), (n, FACTS_PER_IMAGE), p=prob / prob.sum()) + e   # fact ids [n, 5]
    img = ids[shown[:, 0]]
    phi = space.embed(img, 2.0)
    psi = space.embed(ids, 1.0)
    psi[np.arange(3)[None, :] >= order[:, None]] = 0.0
    key1 = ids[:n1, 0]
    key2_sorted = ids[n1:e, 0] * nP + ids[n1:e, 1]
    s_of, p_of = ids[shown, 0], ids[shown, 1]
    f1 = np.searchsorted(np.sort(key1), s_of)
    f1 = np.argsort(key1)[f1]                                  # the ⟨S⟩ fact of each shown fact
    o2 = np.argsort(key2_sorted)
    f2 = n1 + o2[np.searchsorted(key2_sorted[o2], s_of * nP + p_of)]
    rows = np.repeat(np.arange(n), FACTS_PER_IMAGE)
    pairs = np.concatenate([np.stack([rows, x.ravel()], 1) for x in (shown, f1, f2)])
    pairs = np.unique(pairs, axis=0)
    perm = rng.permutation(f)                                  # fact ids in random order
    inv = np.argsort(perm)
    pairs[:, 1] = inv[pairs[:, 1]]
    task = rng.integers(0, tasks, f)
    # word ids of each slot (one word per concept; 0 = absent slot): LFL's ⟨S⟩ / ⟨S,P⟩ groups
    tokens = np.where(np.arange(3)[None, :] < order[:, None], ids + 1 + np.r_[0, nS, nS + nP], 0)
    return phi, psi[perm], order[perm], pairs, task, tokens[perm, :, None].astype(np.int32)


def fake_data(n: int, order, pairs, task, tokens=None) -> FactData:
    """A FactData holding only what the evaluator reads (every image in the test split); ``tokens``
    int [F, 3, L] (None: all facts share one word, so LFL's groups hold every fact of an order)."""
    f = len(order)
    tokens = np.zeros((f, 3, 1), np.int32) if tokens is None else tokens
    return FactData(images=np.zeros((n, 1, 1, 3), np.uint8), image_ids=[], image_split=np.full(n, 2, np.int8),
                    subject=[""] * f, predicate=[""] * f, object=[""] * f, order=order.astype(np.int8),
                    tokens=tokens, vocab=["<pad>"], pairs=pairs.astype(np.int32),
                    splits={"bench": task.astype(np.int16)})


def numpy_sort_ns(rows: int = 64, n: int = 100_000, repeats: int = 5) -> dict:
    """numpy's float32 row sort on this CPU: median ns per entry of sorting a copy of a [rows, n]
    standard-normal matrix along its rows (what the evaluator falls back on), and of the copy alone."""
    x = np.random.default_rng(0).standard_normal((rows, n)).astype(np.float32)
    buf = np.empty_like(x)

    def sort():
        np.copyto(buf, x)
        buf.sort(axis=1)
    med, runs = common.median_seconds(sort, repeats)
    copy, _ = common.median_seconds(lambda: np.copyto(buf, x), repeats)
    return {"ns_per_entry": (med - copy) / x.size * 1e9, "copy_ns_per_entry": copy / x.size * 1e9,
            "rows": rows, "n": n, "runs_s": runs}


def floor_seconds(phi, psi, order) -> float:
    """Seconds of the N × F score matrix alone, nothing else: blocks of ``BLOCK_ELEMENTS`` entries,
    one matrix product per fact order; the faster of the two orientations (blocks of image rows ×
    all facts, blocks of fact rows × all images), each timed once."""
    x_hat, f_hat = unit_slots(phi), unit_slots(psi)
    xs = {o: torch.from_numpy(prefix(x_hat, o)) for o in (1, 2, 3)}
    fs = {o: torch.from_numpy(prefix(f_hat[order == o], o)) for o in (1, 2, 3)}
    best, best_cpu = float("inf"), float("inf")
    for a, b in ((xs, fs), (fs, xs)):
        t0, c0 = time.perf_counter(), time.process_time()
        for o in (1, 2, 3):
            step = max(1, BLOCK_ELEMENTS // len(b[o]))
            for i in range(0, len(a[o]), step):
                a[o][i:i + step] @ b[o].T
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    floor_seconds.cpu_s = best_cpu          # the process's CPU seconds of the faster orientation
    return best


def old_path(phi, psi, order, pairs, task, budget: float, rng):
    """Seconds of the old FAISS path scaled to all queries, fraction timed, max |ΔAP| vs new."""
    n, f = len(phi), len(order)
    keys = np.unique(pairs[:, 0] * f + pairs[:, 1])

    def rel(img, fact):                       # vectorized lookup, as the old evaluator's _Relevance
        q = np.asarray(img, np.int64) * f + np.asarray(fact, np.int64)
        pos = np.minimum(np.searchsorted(keys, q), len(keys) - 1)
        return keys[pos] == q
    batch = EvalConfig().search_batch
    facts_q = np.flatnonzero(np.bincount(pairs[:, 1], minlength=f) > 0)
    qf = min(len(facts_q), max(1, int(budget // n)))
    sel = np.sort(rng.choice(facts_q, qf, replace=False))
    n_true = np.bincount(pairs[:, 1], minlength=f)
    t0 = time.perf_counter()
    index = ImageIndex(phi, gpu=False)
    ap = np.full(f, np.nan)
    for ids, d, loc in index.search_batches(psi[sel], order[sel], n, batch):
        q = sel[ids]
        r = rel(loc, q[:, None])
        ap[q] = M.average_precision(-d, r)
        M.ap_at_k_ranked(r, n_true[q], K)
    f2i = (time.perf_counter() - t0) * len(facts_q) / qf     # only facts with a true image are ranked
    mine = np.isin(pairs[:, 1], sel)                          # the new path's AP of the same facts
    r = rank_pairs(psi[sel], phi, np.stack([np.searchsorted(sel, pairs[mine, 1]), pairs[mine, 0]], 1),
                   query_order=order[sel])
    dmax = float(np.nanmax(np.abs(ap[sel] - M.ap_from_ranks(r.query, r.neg_dist, r.below, r.ties, qf))))
    # image → fact: once per task and once over all facts, each on the images with a fact there
    i2f, timed, total = 0.0, 0, 0
    for t in list(range(int(task.max()) + 1)) + ["all"]:
        facts = np.arange(f) if t == "all" else np.flatnonzero(task == t)
        imgs = np.unique(pairs[np.isin(pairs[:, 1], facts), 0])
        qi = min(len(imgs), max(1, int(budget // (len(facts) * (int(task.max()) + 2)))))
        isel = np.sort(rng.choice(imgs, qi, replace=False))
        t0 = time.perf_counter()
        findex = FactIndex(psi[facts], order[facts], gpu=False)
        for start, d, loc in findex.search_batches(phi[isel], len(facts), batch):
            q = isel[start:start + len(d)]
            r = rel(q[:, None], facts[loc])
            M.average_precision(-d, r)
            r[:, :1].any(1), r[:, :5].any(1)
        i2f += (time.perf_counter() - t0) * len(imgs) / qi
        timed, total = timed + qi, total + len(imgs)
    return {"old_f2i_s": f2i, "old_i2f_s": i2f, "old_s": f2i + i2f, "old_facts_timed": qf,
            "old_facts_ranked": int(len(facts_q)), "old_images_timed": timed, "old_images_ranked": total,
            "old_max_abs_ap_diff_f2i": dmax}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="+", default=["10000x100000", "50000x100000"])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--old-budget", type=float, default=2e8,
                    help="result entries of the old path timed per direction (then scaled)")
    ap.add_argument("--no-old", action="store_true", help="skip the old path")
    ap.add_argument("--quick", action="store_true", help="smallest sizes (smoke test)")
    ap.add_argument("--out", default=str(common.RESULTS / "eval_exact.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.cases, args.threads, args.old_budget = ["300x500"], [1], 2e4
    require_faiss()
    info = common.machine_info()
    torch.set_num_threads(1)
    sort_speed = numpy_sort_ns()
    print(f"CPU: {info['cpu']}; numpy float32 sort "
          f"{sort_speed['ns_per_entry']:.1f} ns per entry; compiled counting "
          f"{'on (numba ' + count_kernel.numba.__version__ + ')' if count_kernel.AVAILABLE else 'off'}",
          flush=True)
    t_start = time.perf_counter()
    rows = []
    for case in args.cases:
        n, f = (int(x) for x in case.lower().split("x"))
        phi, psi, order, pairs, task, tokens = make_case(n, f, args.tasks)
        data = fake_data(n, order, pairs, task, tokens)
        for threads in args.threads:
            torch.set_num_threads(threads)
            require_faiss().omp_set_num_threads(threads)
            load_start = [round(x, 2) for x in os.getloadavg()]           # 1, 5, 15 min
            load0 = load_start[0]
            ev = Evaluator(data, "bench", EvalConfig())
            floor = floor_seconds(phi, psi, order)
            floor_cpu = floor_seconds.cpu_s
            rss0 = common.rss_bytes()
            common.reset_peak_rss()
            t0, c0 = time.perf_counter(), time.process_time()
            out = ev.evaluate_embeddings(torch.from_numpy(phi), torch.from_numpy(psi))
            new, new_cpu = time.perf_counter() - t0, time.process_time() - c0
            peak = common.peak_rss_bytes()
            floor2 = floor_seconds(phi, psi, order)         # again after: load changes show
            floor2_cpu = floor_seconds.cpu_s
            row = {"N": n, "F": f, "threads": threads, "pairs": int(len(pairs)), "tasks": args.tasks,
                   "floor_s": floor, "floor_after_s": floor2, "new_s": new,
                   "new_search_s": out["timing"]["search_s"], "new_metrics_s": out["timing"]["metrics_s"],
                   "new_over_floor": new / ((floor + floor2) / 2), "loadavg_1_start": load0,
                   # CPU seconds of this process (1 thread): less moved by other jobs on the cores
                   "floor_cpu_s": floor_cpu, "floor_after_cpu_s": floor2_cpu, "new_cpu_s": new_cpu,
                   "new_over_floor_cpu": new_cpu / ((floor_cpu + floor2_cpu) / 2),
                   "rss_before_mib": rss0 / common.MiB, "peak_rss_mib": peak / common.MiB,
                   "map_f2i_all": out["fact_to_image_map"]["all"],
                   "map_i2f_all": out["image_to_fact_map"]["all"]}
            if not args.no_old:
                rng = np.random.default_rng(threads)
                row.update(old_path(phi, psi, order, pairs, task, args.old_budget, rng))
                row["old_over_new"] = row["old_s"] / new
            row["loadavg_1_end"] = os.getloadavg()[0]
            row["loadavg_1_5_15_start"] = load_start
            row["loadavg_1_5_15_end"] = [round(x, 2) for x in os.getloadavg()]
            rows.append(row)
            print(f"N={n} F={f} threads={threads}: floor {floor:.1f}/{floor2:.1f} s, new {new:.1f} s "
                  f"({row['new_over_floor']:.2f}× floor; CPU time {row['new_over_floor_cpu']:.2f}×), load {load0:.1f} → {row['loadavg_1_end']:.1f}"
                  + (f", old {row['old_s']:.0f} s (scaled), ΔAP {row['old_max_abs_ap_diff_f2i']:.1e}"
                     if "old_s" in row else ""), flush=True)
    common.print_table(rows, [
        ("N", "N", "d"), ("F", "F", "d"), ("threads", "thr", "d"), ("pairs", "pairs", "d"),
        ("floor_s", "floor s", ".1f"), ("new_s", "new s", ".1f"), ("new_over_floor", "×floor", ".2f"),
        ("new_over_floor_cpu", "×floor CPU", ".2f"),
        ("old_s", "old s", ".0f"), ("old_over_new", "old/new", ".0f"),
        ("old_max_abs_ap_diff_f2i", "max|ΔAP|", ".1e"), ("peak_rss_mib", "peak MiB", ".0f"),
        ("loadavg_1_start", "load", ".1f")])
    print(f"wall time of this benchmark: {time.perf_counter() - t_start:.0f} s")
    print(common.load_line(info))
    common.write_results(args.out, {
        "benchmark": "eval_exact", "machine": info, "loadavg_end": list(os.getloadavg()),
        "cases": args.cases, "threads": args.threads, "tasks": args.tasks, "k": K,
        "block_elements": BLOCK_ELEMENTS, "old_budget": args.old_budget, "quick": args.quick,
        "cpu_model": info["cpu"], "numpy_sort_float32": sort_speed,
        "count_kernel": {"numba": count_kernel.numba.__version__ if count_kernel.AVAILABLE else None,
                         "linear_max": count_kernel.LINEAR_MAX, "chunk": count_kernel.CHUNK},
        "results": rows, "wall_s": time.perf_counter() - t_start})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
