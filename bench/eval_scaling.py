"""Evaluation scaling: embedding, search and AP time as test images N and facts F grow; flat FAISS
(``factmas.evaluation.retrieval``) against FAISS IVF, with the recall IVF keeps and the peak memory.

    .venv/bin/python bench/eval_scaling.py [--images 1000 10000 50000] [--facts 1000 10000 100000]
                                           [--query-budget 2e7] [--threads 2] [--quick] [--out FILE]

Embedding: images/s and facts/s of ``factmas.model.embedder.RunEmbedder.pixels`` / ``facts`` with the default
model (eval mode, ``EvalConfig.embed_batch``), measured on a sample and scaled linearly to N and F.

Search and AP use synthetic embeddings with the structure of a trained model (slot vectors near
per-concept prototypes; an image shows one ⟨S, P, O⟩, a fact of order o is true for the images that
share its first o concepts), in both directions the evaluator runs:

* fact → image (the R matrix): ``ImageIndex`` full ranking of the N images (k = N) + AP per fact;
  top-100 + AP@100.  image → fact: ``FactIndex`` full ranking of the F facts + AP per image.
* IVF (``IndexIVFFlat``, inner product, nlist ≈ 4√n per fact order) at k = 100, nprobe doubled until
  recall@100 against the flat top-100 is ≥ 0.95 (a full ranking is what IVF cannot give, so IVF
  serves AP@k and top-k only).

Timings use a sample of queries (at most ``--query-budget`` result entries, queries × database
size) and are scaled linearly to all F (or N) queries: the "× F/q" column says by how much. The
images and their indexes are built once per N and searched for each F; peak RSS is the peak above
the RSS before the N group began (``common.reset_peak_rss``), so it covers embeddings, indexes,
search and AP temporaries of the cases so far.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

import common
from factmas.evaluation import metrics as M
from factmas.config import EvalConfig, ModelConfig
from factmas.model.embedder import RunEmbedder
from factmas.model import build_model
from factmas.evaluation.retrieval import FactIndex, ImageIndex, prefix, require_faiss, unit_slots

K = 100                  # AP@k and recall@k cut-off (EvalConfig.ap_k)
RECALL_TARGET = 0.95
D = 64                   # embed_dim of the default model
CONCEPTS = (2000, 200, 2000)   # subjects, predicates, objects of the synthetic space


class Space:
    """Synthetic raw embeddings: slot s of a sample = prototype[s][concept] + noise (float32)."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.protos = [self.rng.standard_normal((n, D)).astype(np.float32) for n in CONCEPTS]

    def embed(self, ids: np.ndarray, noise: float) -> np.ndarray:
        """ids int [n, 3] concept per slot → float32 [n, 3, d]."""
        out = np.stack([self.protos[s][ids[:, s]] for s in range(3)], axis=1)
        return out + noise * self.rng.standard_normal(out.shape).astype(np.float32)

    def images(self, n: int) -> np.ndarray:
        """int [n, 3] (S, P, O) concept ids, Zipf-like so that common facts have many images."""
        return np.stack([np.minimum(self.rng.zipf(1.3, n) - 1, c - 1) for c in CONCEPTS], axis=1)

    def facts(self, f: int, image_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(concept ids int [f, 3], order int [f]): facts drawn from random images' content."""
        ids = image_ids[self.rng.integers(0, len(image_ids), f)].copy()
        order = self.rng.choice([1, 2, 3], f, p=[0.1, 0.3, 0.6])
        return ids, order


def relevant(img_ids: np.ndarray, fact_ids: np.ndarray, order: np.ndarray) -> np.ndarray:
    """bool broadcast of img_ids [..., 3] and fact_ids/order [..., 3]/[...]: fact true for image."""
    eq = img_ids == fact_ids
    return eq[..., 0] & ((order < 2) | eq[..., 1]) & ((order < 3) | eq[..., 2])


def n_true_images(img_ids: np.ndarray, fact_ids: np.ndarray, order: np.ndarray) -> np.ndarray:
    """int [F]: images each fact is true for (counting by concept keys, no N × F matrix)."""
    out = np.zeros(len(order), np.int64)
    for o in (1, 2, 3):
        sel = order == o
        keys_i = np.unique(img_ids[:, :o], axis=0, return_counts=True)
        table = {tuple(k): c for k, c in zip(*keys_i)}
        out[sel] = [table.get(tuple(k), 0) for k in fact_ids[sel, :o]]
    return out


class IVFImageIndex:
    """IndexIVFFlat per fact order over the image prefixes [S], [S|P], [S|P|O] (as ImageIndex)."""

    def __init__(self, phi: np.ndarray, seed: int = 0) -> None:
        faiss = require_faiss()
        x_hat = unit_slots(phi)
        n = len(x_hat)
        self.nlist = max(1, min(int(4 * np.sqrt(n)), n // 39))   # FAISS wants ≥ 39 points per list
        self.indexes = {}
        for o in (1, 2, 3):
            x = prefix(x_hat, o)
            quantizer = faiss.IndexFlatIP(x.shape[1])
            index = faiss.IndexIVFFlat(quantizer, x.shape[1], self.nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = seed
            index.train(x)
            index.add(x)
            self.indexes[o] = (index, quantizer)

    def search(self, psi: np.ndarray, order: np.ndarray, k: int, nprobe: int) -> np.ndarray:
        """int64 [F, k] top-k image ids of each fact (−1 where fewer were found)."""
        f_hat = unit_slots(psi)
        out = np.full((len(order), k), -1, np.int64)
        for o, (index, _) in self.indexes.items():
            sel = np.flatnonzero(order == o)
            if len(sel):
                index.nprobe = nprobe
                out[sel] = index.search(prefix(f_hat[sel], o), k)[1]
        return out


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |found ∩ exact| / |exact| (rows of ids; −1 ignored)."""
    hits = [len(np.intersect1d(a[a >= 0], b)) / len(b) for a, b in zip(found, exact)]
    return float(np.mean(hits))


def embed_rates(args) -> dict:
    """images/s and facts/s of the run embedder (``RunEmbedder``) on the default model."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="small_cnn"), vocab_size=300).eval()
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (args.embed_images, 64, 64, 3), dtype=np.uint8)
    order = rng.integers(1, 4, args.embed_facts)
    tokens = rng.integers(1, 300, (args.embed_facts, 3, 4))
    tokens[np.arange(3)[None, :] >= order[:, None]] = 0
    embed = RunEmbedder(model, batch_size=EvalConfig().embed_batch, device="cpu")   # no flip averaging
    ti, _ = common.median_seconds(lambda: embed.pixels(imgs), args.repeats)
    tf, _ = common.median_seconds(lambda: embed.facts(tokens, order), args.repeats)
    return {"images_per_s": args.embed_images / ti, "facts_per_s": args.embed_facts / tf,
            "measured_on": {"images": args.embed_images, "facts": args.embed_facts}}


def timed(gen):
    """Yield (item, seconds spent producing it) for each item of the generator ``gen``."""
    it = iter(gen)
    while True:
        t0 = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        yield item, time.perf_counter() - t0


class ImageSide:
    """The N test images of a case group: concept ids, raw φ, the flat ``ImageIndex`` and (N ≥
    ``ivf_min``) the IVF index, with their build seconds. Built once per N, searched for every F."""

    def __init__(self, n: int, space: Space, noise: float, ivf_min: int) -> None:
        self.n = n
        self.img_ids = space.images(n)
        self.phi = space.embed(self.img_ids, noise)
        t0 = time.perf_counter()
        self.flat = ImageIndex(self.phi, gpu=False)
        self.flat_build_s = time.perf_counter() - t0
        self.ivf, self.ivf_build_s = None, None
        if n >= ivf_min:
            t0 = time.perf_counter()
            self.ivf = IVFImageIndex(self.phi)
            self.ivf_build_s = time.perf_counter() - t0


def run_case(side: ImageSide, f: int, args, space: Space) -> dict:
    """One (N images, F facts) case; each time is scaled to all queries (module docstring)."""
    n, img_ids, phi, index = side.n, side.img_ids, side.phi, side.flat
    fact_ids, order = space.facts(f, img_ids)
    psi = space.embed(fact_ids, args.fact_noise)
    n_true = n_true_images(img_ids, fact_ids, order)
    rng = np.random.default_rng(1)
    batch = EvalConfig().search_batch
    qf = min(f, max(1, int(args.query_budget // n)))           # fact queries timed
    qsel = np.sort(rng.choice(f, qf, replace=False))
    row = {"N": n, "F": f, "fact_queries_timed": qf, "fact_scale": f / qf,
           "flat_build_s": side.flat_build_s}

    # fact → image, flat: full ranking + AP (the evaluator's R metric), then top-k + AP@k
    search = ap = 0.0
    aps = []
    for (ids, d, loc), sec in timed(index.search_batches(psi[qsel], order[qsel], n, batch)):
        t1 = time.perf_counter()
        q = qsel[ids]
        rel = relevant(img_ids[loc], fact_ids[q][:, None, :], order[q][:, None])
        aps.append(M.average_precision(-d, rel))
        search, ap = search + sec, ap + time.perf_counter() - t1
    row.update(f2i_full_search_s=search * f / qf, f2i_full_ap_s=ap * f / qf,
               f2i_map_sample=M.mean_ap(np.concatenate(aps)))
    flat_top = np.empty((qf, min(K, n)), np.int64)
    search = ap = 0.0
    apk = []
    for (ids, d, loc), sec in timed(index.search_batches(psi[qsel], order[qsel], K, batch)):
        t1 = time.perf_counter()
        q = qsel[ids]
        flat_top[ids] = loc
        rel = relevant(img_ids[loc], fact_ids[q][:, None, :], order[q][:, None])
        apk.append(M.ap_at_k_ranked(rel, n_true[q], K))
        search, ap = search + sec, ap + time.perf_counter() - t1
    row.update(f2i_topk_search_s=search * f / qf, f2i_topk_ap_s=ap * f / qf,
               flat_map_at_k_sample=M.mean_ap(np.concatenate(apk)))

    # fact → image, IVF at k: nprobe doubled until recall@k ≥ RECALL_TARGET
    ivf = side.ivf
    if ivf is not None:
        row.update(ivf_build_s=side.ivf_build_s, ivf_nlist=ivf.nlist)
        nprobe = 1
        while True:
            t0 = time.perf_counter()
            found = ivf.search(psi[qsel], order[qsel], min(K, n), nprobe)
            sec = time.perf_counter() - t0
            recall = recall_at_k(found, flat_top)
            if recall >= RECALL_TARGET or nprobe >= ivf.nlist:
                break
            nprobe = min(2 * nprobe, ivf.nlist)
        t1 = time.perf_counter()
        rel = relevant(img_ids[np.maximum(found, 0)], fact_ids[qsel][:, None, :],
                       order[qsel][:, None]) & (found >= 0)
        ivf_apk = M.ap_at_k_ranked(rel, n_true[qsel], K)
        row.update(ivf_nprobe=nprobe, ivf_recall_at_k=recall, ivf_search_s=sec * f / qf,
                   ivf_ap_s=(time.perf_counter() - t1) * f / qf, ivf_map_at_k_sample=M.mean_ap(ivf_apk))

    # image → fact, flat: full ranking of all facts + AP per image
    qi = min(n, max(1, int(args.query_budget // f)))
    isel = np.sort(rng.choice(n, qi, replace=False))
    row.update(image_queries_timed=qi, image_scale=n / qi)
    t0 = time.perf_counter()
    findex = FactIndex(psi, order, gpu=False)
    row["fact_index_build_s"] = time.perf_counter() - t0
    search = ap = 0.0
    for (start, d, loc), sec in timed(findex.search_batches(phi[isel], f, batch)):
        t1 = time.perf_counter()
        q = isel[start:start + len(d)]
        rel = relevant(img_ids[q][:, None, :], fact_ids[loc], order[loc])
        M.average_precision(-d, rel)
        search, ap = search + sec, ap + time.perf_counter() - t1
    row.update(i2f_full_search_s=search * n / qi, i2f_full_ap_s=ap * n / qi)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, nargs="+", default=[1000, 10000, 50000])
    ap.add_argument("--facts", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--query-budget", type=float, default=5e6,
                    help="result entries (queries × database size) timed per search")
    ap.add_argument("--ivf-min-images", type=int, default=10000, help="IVF for N at least this")
    ap.add_argument("--embed-images", type=int, default=1024)
    ap.add_argument("--embed-facts", type=int, default=20000)
    ap.add_argument("--image-noise", type=float, default=2.0, help="slot noise of the images")
    ap.add_argument("--fact-noise", type=float, default=1.0, help="(flat mAP about 0.4 at these)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of the embedding timing")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--quick", action="store_true", help="smallest sizes (smoke test)")
    ap.add_argument("--out", default=str(common.RESULTS / "eval_scaling.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.facts, args.query_budget, args.ivf_min_images = [400], [300], 4e4, 400
        args.threads = 1
        args.embed_images, args.embed_facts, args.repeats = 8, 64, 1
    torch.set_num_threads(args.threads)
    require_faiss().omp_set_num_threads(args.threads)
    info = common.machine_info()
    t_start = time.perf_counter()
    rates = embed_rates(args)
    print(f"embedding: {rates['images_per_s']:.0f} images/s, {rates['facts_per_s']:.0f} facts/s "
          f"(default model, measured on {args.embed_images} images, {args.embed_facts} facts)",
          flush=True)
    space = Space()
    rows = []
    for n in args.images:
        common.reset_peak_rss()
        base = common.rss_bytes()
        side = ImageSide(n, space, args.image_noise, args.ivf_min_images)
        for f in args.facts:
            row = run_case(side, f, args, space)
            row["peak_mib"] = (common.peak_rss_bytes() - base) / common.MiB
            row["embed_s"] = n / rates["images_per_s"] + f / rates["facts_per_s"]
            row["flat_total_s"] = (row["embed_s"] + row["f2i_full_search_s"] + row["f2i_full_ap_s"]
                                   + row["i2f_full_search_s"] + row["i2f_full_ap_s"])
            rows.append(row)
            print(f"N={n:>6} F={f:>6}: flat total {row['flat_total_s']:.1f} s, "
                  f"peak +{row['peak_mib']:.0f} MiB", flush=True)
    print(f"\nEvaluation scaling (times scaled to all queries from samples of ≤ "
          f"{args.query_budget:.0e} result entries; see the × columns), k = {K}, "
          f"IVF recall@{K} ≥ {RECALL_TARGET}")
    common.print_table(rows, [
        ("N", "N", "d"), ("F", "F", "d"), ("embed_s", "embed s", ".1f"),
        ("f2i_full_search_s", "f→i search", ".1f"), ("f2i_full_ap_s", "f→i AP", ".1f"),
        ("fact_scale", "×F/q", ".0f"), ("f2i_topk_search_s", "flat@k", ".2f"),
        ("ivf_build_s", "IVF build", ".2f"), ("ivf_search_s", "IVF@k", ".2f"),
        ("ivf_nprobe", "nprobe", "d"), ("ivf_recall_at_k", "recall", ".3f"),
        ("i2f_full_search_s", "i→f search", ".1f"), ("i2f_full_ap_s", "i→f AP", ".1f"),
        ("image_scale", "×N/q", ".0f"), ("flat_total_s", "total s", ".1f"),
        ("peak_mib", "peak MiB", ".0f")])
    print(f"wall time of this benchmark: {time.perf_counter() - t_start:.0f} s")
    print(common.load_line(info))
    common.write_results(args.out, {
        "benchmark": "eval_scaling", "machine": info, "loadavg_end": list(os.getloadavg()),
        "k": K, "recall_target": RECALL_TARGET, "query_budget": args.query_budget,
        "image_noise": args.image_noise, "fact_noise": args.fact_noise, "concepts": CONCEPTS,
        "threads": args.threads, "quick": args.quick, "embedding": rates, "results": rows,
        "wall_s": time.perf_counter() - t_start})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
