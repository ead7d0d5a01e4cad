"""Data loading: images/s delivered from the HDF5 file against images/s the training step consumes.

    .venv/bin/python bench/data_loading.py [--data data/flickr8k.h5] [--batch 64] [--batches 40]
                                           [--repeats 3] [--threads 2] [--quick] [--out FILE]

What ``factmas train`` does: ``read_dataset`` reads the whole file into memory once, then
``Batcher.pair_batches`` makes each batch in the training thread (index the uint8 images, ``preprocess``
to normalized float32, look up tokens, build the dataset-wide positive matrix), then ``train_step``.
Measured here (data/flickr8k.h5 if present, else a synthetic file):

* ``read_dataset``: the one-time read of the file (images/s, MB/s; the file is likely in the page
  cache: a warm read).
* HDF5 streaming: batches read straight from the file (h5py, sorted random rows) + ``preprocess``:
  what a loader would deliver if the images did not fit in memory.
* Batcher (the trainer's loader): whole pair batches from memory; median and 95th-percentile ms/batch.
* The step: ``train_step`` (finetune) on ready batches, images/s.

``--backbone efficientnet_lite0`` (the default model): the trainer reads the frozen stages' output from
the feature cache (``factmas.model.features``; built here for a synthetic 224-px dataset of ``--lite-images``
images, or ``--data``), so the Batcher rows are ``CachedInputs`` batches with random mirror images
(``pair_batches(flip=True)``), the step is the Lite0 trainable part, and a row gives the cache file's
one-time ``np.load``.

The loader is never what the step waits for when its rate is well above the step's: the table gives
rate ÷ step rate and the share of each training step spent making its batch (Batcher / (Batcher +
step)), which is what the trainer's single thread pays.
"""
from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time

import numpy as np
import torch

import common
from factmas.config import RunConfig
from factmas.data.dataset import read_dataset
from factmas.methods import make_method
from factmas.model import build_model, preprocess
from factmas.trainer.batches import Batcher
from factmas.trainer.loop import train_step


def hdf5_stream(path, batch: int, batches: int, seed: int = 0) -> list[float]:
    """Seconds per batch of reading ``batch`` random rows (sorted, as h5py needs) + preprocess."""
    import h5py
    out = []
    rng = np.random.default_rng(seed)
    with h5py.File(path, "r") as h:
        images = h["images"]
        for _ in range(batches):
            idx = np.sort(rng.choice(len(images), batch, replace=False))
            t0 = time.perf_counter()
            preprocess(images[idx])
            out.append(time.perf_counter() - t0)
    return out


def batcher_times(batcher: Batcher, pairs: np.ndarray, batch: int, batches: int,
                  flip: bool = False) -> tuple[list, list]:
    """(seconds per batch, the batches) of the trainer's Batcher.pair_batches over ``pairs``."""
    gen = batcher.pair_batches(pairs, batch, np.random.default_rng(0), flip=flip)
    times, made = [], []
    for _ in range(batches):
        t0 = time.perf_counter()
        b = next(gen, None)
        if b is None:
            break
        times.append(time.perf_counter() - t0)
        made.append(b)
    return times, made


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="HDF5 dataset (default: data/flickr8k.h5 if present, else synthetic)")
    ap.add_argument("--batch", type=int, default=RunConfig().train.batch_size)
    ap.add_argument("--batches", type=int, default=40, help="batches timed per loader run")
    ap.add_argument("--steps", type=int, default=8, help="training steps timed per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--backbone", choices=["small_cnn", "efficientnet_lite0"], default="small_cnn",
                    help="efficientnet_lite0: batches from the feature cache (the default model)")
    ap.add_argument("--lite-images", type=int, default=300, help="synthetic 224-px images (Lite0)")
    ap.add_argument("--quick", action="store_true", help="smallest sizes (smoke test)")
    ap.add_argument("--out", default=str(common.RESULTS / "data_loading.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.batches, args.steps, args.repeats = 8, 3, 1, 1
        args.threads = 1
    torch.set_num_threads(args.threads)
    info = common.machine_info()
    lite = args.backbone == "efficientnet_lite0"
    data, desc = common.backbone_bench_data(args.data, lite, args.quick, args.lite_images)
    path = data.path
    size_mb = os.path.getsize(path) / 1e6

    read_s, read_runs = common.median_seconds(lambda: read_dataset(path), args.repeats, warmup=1)
    n_img = len(data.images)
    stream = [t for _ in range(args.repeats) for t in hdf5_stream(path, args.batch, args.batches)]

    cfg = RunConfig()
    cfg.model.backbone = args.backbone        # small_cnn: pixel batches; Lite0: feature-cache batches
    cfg.train.split = common.first_split(data, cfg.train.split)
    pairs = data.task_pairs(cfg.train.split, 0, "train")
    torch.manual_seed(0)
    model = build_model(cfg.model, len(data.vocab)).train()
    cache_rows = []
    if lite:
        from factmas.model.features import CachedInputs, cache_file, load_or_build
        feats = load_or_build(model, data, progress=False)
        cpath = cache_file(data, model)
        load_s, _ = common.median_seconds(lambda: np.load(cpath), args.repeats, warmup=1)
        cache_rows.append(("feature cache np.load (once per run)", [load_s], len(feats)))
        batcher = Batcher(data, inputs=CachedInputs(feats))
    else:
        batcher = Batcher(data)
    loader, ready = [], []
    for _ in range(args.repeats):
        times, made = batcher_times(batcher, pairs, args.batch, args.batches, flip=lite)
        loader += times
        ready = made
    method = make_method("finetune")
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    train_step(model, method, opt, ready[0], cfg)                           # warm-up
    step = []
    for r in range(args.repeats):
        for b in itertools.islice(itertools.cycle(ready), args.steps):
            t0 = time.perf_counter()
            train_step(model, method, opt, b, cfg)
            step.append((time.perf_counter() - t0) / len(b["fact_idx"]) * args.batch)

    step_ms = 1e3 * statistics.median(step)
    step_rate = args.batch / (step_ms / 1e3)
    rows = []
    for name, secs, per in (("HDF5 read_dataset (once per run)", [read_s], n_img),
                            ("HDF5 streaming + preprocess", stream, args.batch),
                            *cache_rows,
                            ("Batcher.pair_batches (trainer)", loader, args.batch)):
        med = statistics.median(secs)
        rows.append({"source": name, "images_per_s": per / med, "ms_per_batch": 1e3 * med * args.batch / per,
                     "p95_ms_per_batch": 1e3 * float(np.percentile(secs, 95)) * args.batch / per,
                     "vs_step": per / med / step_rate})
    rows.append({"source": "train_step consumes (finetune)", "images_per_s": step_rate,
                 "ms_per_batch": step_ms, "p95_ms_per_batch": 1e3 * float(np.percentile(step, 95)),
                 "vs_step": 1.0})
    trainer_ms = next(r for r in rows if r["source"].startswith("Batcher"))["ms_per_batch"]
    share = trainer_ms / (trainer_ms + step_ms)
    print(f"\nData loading, {desc}, {size_mb:.0f} MB file, batch {args.batch}, "
          f"{len(loader)} loader batches, {len(step)} steps")
    common.print_table(rows, [("source", "source", ""), ("images_per_s", "images/s", ".0f"),
                              ("ms_per_batch", "ms/batch", ".2f"), ("p95_ms_per_batch", "p95 ms", ".2f"),
                              ("vs_step", "× step", ".1f")])
    print(f"share of each training step spent making its batch: {share:.1%}; "
          f"read_dataset: {size_mb / read_s:.0f} MB/s (warm page cache)")
    print(common.load_line(info))
    common.write_results(args.out, {
        "benchmark": "data_loading", "machine": info, "loadavg_end": list(os.getloadavg()),
        "data": desc, "backbone": args.backbone, "file_mb": size_mb, "batch": args.batch, "batches": args.batches,
        "steps": args.steps, "repeats": args.repeats, "threads": args.threads, "quick": args.quick,
        "read_dataset_runs_s": read_runs, "loader_share_of_step": share, "results": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
