"""Peak RSS of reading a dataset and evaluating a model on it, pixels in memory against lazy pixels
(issue 28: ``read_dataset`` keeps the pixels in the HDF5 file, ``factmas.data.lazy_images``).

    .venv/bin/python bench/lazy_pixels.py [--images 3000] [--size 224] [--repeats 2] [--data FILE]
                                          [--quick] [--out bench/results/lazy_pixels.json]

Each measurement is a fresh Python process (``--child MODE``), so its peak RSS (VmHWM) is its own:

1. ``read_dataset(path, in_memory=MODE == "memory")`` (``memory``: every pixel in one numpy array,
   verified against its checksums, as before issue 28; ``lazy``: an ``H5Images``);
2. one evaluation (``factmas.evaluation.Evaluator``) of an untrained small CNN (``small_cnn``, width 8,
   seeded) on the test images: every test image embedded with its mirror, every fact, both
   retrieval directions.

Then, in the same process (peak RSS already taken): the evaluation ``--warm`` more times (the first
one pays one-time costs in either mode) and ``--loader-batches`` batches of the trainer's loader
(``Batcher.pair_batches``, pixel backbone: index the images, ``preprocess``, tokens, positives) over
task 0's training pairs, batch ``--batch``.

Reported per mode: RSS after the imports, after reading, peak RSS; seconds to read, to evaluate
(first and warm) and per loader batch (medians over ``--repeats`` processes, modes alternated); the
fact→image and image→fact mAP, which must be the same in both modes. The dataset is synthetic (``factmas.data.synthetic``, ``--images`` of
``--size``² pixels, written once to a temporary file) unless ``--data`` names one.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import common

MODES = ("memory", "lazy")


def child(path: str, mode: str, warm: int, batch: int, loader_batches: int) -> dict:
    """Read ``path`` in ``mode`` and evaluate once; the figures of this process."""
    torch.set_num_threads(1)
    from factmas.config import ModelConfig
    from factmas.data.dataset import read_dataset
    from factmas.evaluation.evaluator import Evaluator
    from factmas.model import build_model
    start = common.rss_bytes()
    t0 = time.perf_counter()
    data = read_dataset(path, in_memory=mode == "memory")
    read_s = time.perf_counter() - t0
    after_read = common.rss_bytes()
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="small_cnn", width=8, embed_dim=16, word_dim=16,
                                    fact_hidden=32), vocab_size=len(data.vocab))
    split = common.first_split(data)
    t0 = time.perf_counter()
    result = Evaluator(data, split).evaluate(model)
    eval_s = time.perf_counter() - t0
    peak = common.peak_rss_bytes()
    warm_s = []
    for _ in range(warm):
        t0 = time.perf_counter()
        Evaluator(data, split).evaluate(model)
        warm_s.append(time.perf_counter() - t0)
    from factmas.trainer.batches import Batcher
    batches = Batcher(data).pair_batches(data.task_pairs(split, 0, "train"), batch, np.random.default_rng(0))
    loader_s = []
    for _ in range(loader_batches):
        t0 = time.perf_counter()
        if next(batches, None) is None:
            break
        loader_s.append(time.perf_counter() - t0)
    return {"mode": mode, "start_rss_mib": start / common.MiB, "after_read_rss_mib": after_read / common.MiB,
            "peak_rss_mib": peak / common.MiB, "read_s": read_s, "eval_s": eval_s,
            "eval_warm_s": statistics.median(warm_s) if warm_s else None,
            "loader_ms_per_batch": 1e3 * statistics.median(loader_s[1:] or loader_s) if loader_s else None,
            "loader_batch": batch,
            "images": len(data.image_ids), "image_size": int(data.images.shape[1]),
            "pixel_mib": len(data.image_ids) * int(data.images.shape[1]) ** 2 * 3 / common.MiB,
            "split": split, "fact_to_image_map": result["fact_to_image_map"],
            "image_to_fact_map": result.get("image_to_fact_map")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--warm", type=int, default=2, help="warm evaluations timed after the first")
    p.add_argument("--batch", type=int, default=32, help="loader batch (pairs)")
    p.add_argument("--loader-batches", type=int, default=20, help="loader batches timed")
    p.add_argument("--data", help="an existing factmas .h5 instead of a synthetic one")
    p.add_argument("--quick", action="store_true", help="smoke test: 60 images of 32 px, 1 repeat, nothing written")
    p.add_argument("--out", default=str(common.REPO / "bench/results/lazy_pixels.json"))
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        Path(a.child_out).write_text(json.dumps(child(a.data, a.child, a.warm, a.batch, a.loader_batches)))
        return 0
    if a.quick:
        a.images, a.size, a.repeats, a.warm, a.loader_batches = 60, 32, 1, 1, 2
    info = common.machine_info()
    tmp = Path(tempfile.mkdtemp(prefix="factmas_lazy_"))
    path = a.data
    if path is None:
        from factmas.data.synthetic import make_synthetic_dataset
        path = str(make_synthetic_dataset(tmp / "synthetic.h5", n_images=a.images, image_size=a.size,
                                          num_tasks=2))
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    for r in range(a.repeats):
        for mode in (MODES if r % 2 == 0 else MODES[::-1]):          # alternate the order
            out = tmp / f"{mode}{r}.json"
            subprocess.run([sys.executable, __file__, "--child", mode, "--data", path, "--warm", str(a.warm),
                            "--batch", str(a.batch), "--loader-batches", str(a.loader_batches),
                            "--child-out", str(out)], check=True)
            runs[mode].append(json.loads(out.read_text()))
            row = runs[mode][-1]
            print(f"{mode:6s} peak RSS {row['peak_rss_mib']:7.0f} MiB (after read {row['after_read_rss_mib']:.0f}, "
                  f"start {row['start_rss_mib']:.0f}); read {row['read_s']:.2f} s, evaluation "
                  f"{row['eval_s']:.1f} s (warm {row['eval_warm_s']:.1f} s), loader "
                  f"{row['loader_ms_per_batch']:.1f} ms per batch of {a.batch}", flush=True)
    summary = {}
    for mode, rows in runs.items():
        summary[mode] = {k: statistics.median(r[k] for r in rows)
                         for k in ("start_rss_mib", "after_read_rss_mib", "peak_rss_mib", "read_s", "eval_s",
                                   "eval_warm_s", "loader_ms_per_batch")}
    maps = {json.dumps([r["fact_to_image_map"], r["image_to_fact_map"]], sort_keys=True)
            for rows in runs.values() for r in rows}
    first = runs["memory"][0]
    summary["peak_ratio_lazy_over_memory"] = summary["lazy"]["peak_rss_mib"] / summary["memory"]["peak_rss_mib"]
    for k in ("eval_s", "eval_warm_s", "loader_ms_per_batch"):
        summary[f"{k}_ratio_lazy_over_memory"] = summary["lazy"][k] / summary["memory"][k]
    summary["same_metrics"] = len(maps) == 1
    print(f"\n{first['images']:,} images of {first['image_size']} px ({first['pixel_mib']:.0f} MiB of pixels), "
          f"median of {a.repeats}: peak RSS memory {summary['memory']['peak_rss_mib']:.0f} MiB, "
          f"lazy {summary['lazy']['peak_rss_mib']:.0f} MiB ({summary['peak_ratio_lazy_over_memory']:.2f}×); "
          f"lazy/memory: first evaluation {summary['eval_s_ratio_lazy_over_memory']:.2f}×, warm "
          f"{summary['eval_warm_s_ratio_lazy_over_memory']:.2f}×, loader batch "
          f"{summary['loader_ms_per_batch_ratio_lazy_over_memory']:.2f}×; same metrics: "
          f"{summary['same_metrics']}")
    print(common.load_line(info))
    if not a.quick:
        common.write_results(a.out, {"machine": info, "images": first["images"], "image_size": first["image_size"],
                                  "pixel_mib": first["pixel_mib"], "repeats": a.repeats,
                                  "summary": summary, "runs": runs})
    return 0 if summary["same_metrics"] else 1


if __name__ == "__main__":
    sys.exit(main())
