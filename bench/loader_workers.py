"""Image batches per second through factmas's read path, schema version 1 (raw rows) against version 2
(JPEG bytes), read in the training process or by DataLoader workers (issue 28, ``train.num_workers``).

    .venv/bin/python bench/loader_workers.py [--data data/flickr8k.h5] [--images 512] [--batch 64]
                                             [--batches 16] [--workers 0,2] [--repeats 3]
                                             [--out bench/results/loader_workers.json]

The first ``--images`` photos of ``--data`` (a version-1 file, 224 px for Flickr8k) are written with a
synthetic fact table (``factmas.data.synthetic``) as a version-1 and a version-2 file
(``write_dataset(schema_version=...)``) in a temporary folder. For each file and worker count, the
trainer's image path (``read_dataset`` → ``PixelInputs`` → ``features.input_batches``: read the rows,
verify their checksums on first read, decode JPEG, ``preprocess``) delivers ``--batches`` batches of
``--batch`` random images; a fresh reader per repeat (so every repeat verifies and decodes anew),
variants interleaved repeat by repeat. Reported: file size per image, the median images/s and the
ratio to version 1 without workers. Torch runs on one thread in this process (and in each worker, the
DataLoader's setting); on a CPU shared with other jobs the worker figures say what the machine had
spare, not what workers scale to.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

import common
from factmas.data.dataset import read_dataset, write_dataset
from factmas.data.synthetic import make_synthetic_dataset
from factmas.model.features import PixelInputs, input_batches


def build_files(src: str, n: int, folder: Path) -> dict[int, Path]:
    """Version-1 and version-2 files of the first ``n`` images of ``src`` with a synthetic fact table."""
    with h5py.File(src, "r") as f:
        images = f["images"][:n]
    syn = read_dataset(make_synthetic_dataset(folder / "syn.h5", n_images=n, image_size=8, num_tasks=2),
                       in_memory=True)
    facts = list(zip(syn.subject, syn.predicate, syn.object))
    out = {}
    for version in (1, 2):
        out[version] = folder / f"v{version}.h5"
        write_dataset(out[version], images, syn.image_ids, syn.image_split, facts, syn.pairs, syn.splits,
                      syn.split_attrs, {"bench": "loader_workers"}, split_images=syn.split_images,
                      schema_version=version)
    return out


def images_per_s(path: Path, workers: int, keys: list) -> float:
    data = read_dataset(path)
    inputs = PixelInputs(data, num_workers=workers)
    t0 = time.perf_counter()
    n = sum(len(x) for x in input_batches(inputs, keys))
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(common.FLICKR8K_H5))
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=16)
    ap.add_argument("--workers", default="0,2")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(common.RESULTS / "loader_workers.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    info = common.machine_info()
    workers = [int(w) for w in args.workers.split(",")]
    rng = np.random.default_rng(0)
    keys = [(rng.choice(args.images, args.batch, replace=False), None) for _ in range(args.batches)]
    with tempfile.TemporaryDirectory(prefix="loader_workers_") as tmp:
        files = build_files(args.data, args.images, Path(tmp))
        sizes = {v: p.stat().st_size / args.images for v, p in files.items()}
        runs: dict[tuple[int, int], list[float]] = {(v, w): [] for v in files for w in workers}
        for _ in range(args.repeats):
            for (v, w) in runs:
                runs[(v, w)].append(images_per_s(files[v], w, keys))
    base = statistics.median(runs[(1, workers[0])])
    rows = [{"schema": v, "workers": w, "file_bytes_per_image": sizes[v],
             "images_per_s": statistics.median(r), "images_per_s_all": r,
             "ratio_to_v1_first": statistics.median(r) / base} for (v, w), r in runs.items()]
    common.print_table(rows, [("schema", "schema", "d"), ("workers", "workers", "d"),
                              ("file_bytes_per_image", "bytes/img", ",.0f"),
                              ("images_per_s", "images/s", ",.0f"), ("ratio_to_v1_first", "× v1/0", ".2f")])
    common.write_results(args.out, {"benchmark": "loader_workers", "data": args.data,
                                    "images": args.images, "batch": args.batch, "batches": args.batches,
                                    "repeats": args.repeats, "rows": rows, "machine": info,
                                    "load": common.load_line(info)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
