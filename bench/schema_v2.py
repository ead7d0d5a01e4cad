"""Should the dataset file store images as JPEG bytes (a schema version 2)? Size per image and read +
decode speed against today's raw rows (issue 28).

    .venv/bin/python bench/schema_v2.py [--data data/flickr8k.h5] [--images 400] [--batch 64]
                                        [--repeats 5] [--out bench/results/schema_v2.json]

Takes the first ``--images`` rows of a version-1 dataset file (uint8 [N, H, W, 3], one HDF5 chunk per
image, uncompressed: what ``data_prep`` writes today) and writes them, in a temporary folder, as

* ``raw``: the same layout as version 1 (the baseline);
* ``gzip4`` / ``lzf``: the same rows in compressed HDF5 chunks (lossless: the pixels, the feature
  cache's key and every figure stay the same);
* ``jpeg95`` / ``jpeg90`` / ``jpeg95_444``: each image as JPEG bytes (PIL, quality 95 / 90, 4:2:0
  chroma subsampling; ``_444``: none) in a variable-length uint8 dataset (lossy: the pixels change).

For each: bytes per image in the file, the pixel error against the raw rows (mean and max absolute
difference, PSNR), and the median seconds per image of reading batches of ``--batch`` random rows
(sorted, as ``H5Images`` reads them; after one untimed warm-up call per reader) and turning them into uint8 [B, H, W, 3]: h5py for raw and
compressed rows; h5py + PIL (``Image.open(...).convert("RGB")``) or ``torchvision.io.decode_jpeg`` for
JPEG. One torch thread (``torch.set_num_threads(1)``). The source Flickr8k photos' own JPEG size is
given too when ``--photos`` names their folder.
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

import common


def encode_jpeg(img: np.ndarray, quality: int, subsampling: int) -> np.ndarray:
    """uint8 [H, W, 3] → JPEG bytes as uint8 [n] (PIL; ``subsampling`` 2 = 4:2:0, 0 = 4:4:4)."""
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality, subsampling=subsampling)
    return np.frombuffer(buf.getvalue(), np.uint8)


def write_variants(images: np.ndarray, folder: Path) -> dict[str, Path]:
    """One HDF5 file per storage variant (module docstring) of ``images`` uint8 [N, H, W, 3]."""
    n, shape = len(images), images.shape[1:]
    out: dict[str, Path] = {}
    for name, kw in (("raw", {}), ("gzip4", {"compression": "gzip", "compression_opts": 4}),
                     ("lzf", {"compression": "lzf"})):
        p = out[name] = folder / f"{name}.h5"
        with h5py.File(p, "w") as f:
            f.create_dataset("images", data=images, chunks=(1, *shape), **kw)
    for name, q, sub in (("jpeg95", 95, 2), ("jpeg90", 90, 2), ("jpeg95_444", 95, 0)):
        p = out[name] = folder / f"{name}.h5"
        with h5py.File(p, "w") as f:
            ds = f.create_dataset("images", (n,), dtype=h5py.vlen_dtype(np.uint8))
            for i in range(n):
                ds[i] = encode_jpeg(images[i], q, sub)
            f["images"].attrs["shape"] = shape
    return out


def read_rows(path: Path, rows: np.ndarray) -> np.ndarray:
    """uint8 [B, H, W, 3] of sorted ``rows`` from a raw or compressed file (one slice per row)."""
    with h5py.File(path, "r", rdcc_nbytes=0) as f:
        ds = f["images"]
        return np.stack([ds[int(r)] for r in rows])


def read_jpeg(path: Path, rows: np.ndarray, decoder: str) -> np.ndarray:
    """uint8 [B, H, W, 3] of sorted ``rows`` from a JPEG file, decoded by "pil" or "torchvision"."""
    with h5py.File(path, "r", rdcc_nbytes=0) as f:
        ds = f["images"]
        blobs = [ds[int(r)] for r in rows]
    if decoder == "pil":
        from PIL import Image
        return np.stack([np.asarray(Image.open(io.BytesIO(b.tobytes())).convert("RGB")) for b in blobs])
    from torchvision.io import decode_jpeg
    return np.stack([decode_jpeg(torch.from_numpy(b)).permute(1, 2, 0).numpy() for b in blobs])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(common.FLICKR8K_H5))
    ap.add_argument("--photos", default=None, help="folder of the source photos (their JPEG size)")
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(common.RESULTS / "schema_v2.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    info = common.machine_info()
    with h5py.File(args.data, "r") as f:
        images = f["images"][:args.images]
        version = int(f.attrs.get("schema_version", 1))
    n = len(images)
    rng = np.random.default_rng(0)
    batches = [np.sort(rng.choice(n, size=min(args.batch, n), replace=False)) for _ in range(args.repeats)]
    rows, results = [], {}
    with tempfile.TemporaryDirectory(prefix="schema_v2_") as tmp:
        files = write_variants(images, Path(tmp))
        readers = [("raw", "h5py", lambda b: read_rows(files["raw"], b)),
                   ("gzip4", "h5py", lambda b: read_rows(files["gzip4"], b)),
                   ("lzf", "h5py", lambda b: read_rows(files["lzf"], b))]
        for v in ("jpeg95", "jpeg90", "jpeg95_444"):
            for dec in ("pil", "torchvision"):
                readers.append((v, dec, lambda b, v=v, dec=dec: read_jpeg(files[v], b, dec)))
        per: dict[tuple[str, str], list[float]] = {(v, d): [] for v, d, _ in readers}
        for v, d, fn in readers:                # untimed warm-up: imports, first-call set-up
            fn(batches[0][:2])
        for b in batches:                       # variants interleaved batch by batch (shared CPU)
            for v, d, fn in readers:
                t0 = time.perf_counter()
                got = fn(b)
                per[(v, d)].append((time.perf_counter() - t0) / len(b))
                assert got.shape == (len(b), *images.shape[1:]) and got.dtype == np.uint8
        base = statistics.median(per[("raw", "h5py")])
        for v, d, fn in readers:
            decoded = fn(np.arange(n))
            diff = np.abs(decoded.astype(np.int16) - images.astype(np.int16))
            mse = float(np.mean(diff.astype(np.float64) ** 2))
            med = statistics.median(per[(v, d)])
            row = {"variant": v, "reader": d,
                   "bytes_per_image": os.path.getsize(files[v]) / n,
                   "ratio_to_raw_size": os.path.getsize(files[v]) / os.path.getsize(files["raw"]),
                   "ms_per_image": 1e3 * med, "ms_per_image_all": [1e3 * s for s in per[(v, d)]],
                   "images_per_s": 1 / med, "time_ratio_to_raw": med / base,
                   "mean_abs_diff": float(diff.mean()), "max_abs_diff": int(diff.max()),
                   "psnr_db": float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)}
            rows.append(row)
    photos = None
    if args.photos:
        names = sorted(os.listdir(args.photos))[:n]
        photos = {"folder": args.photos, "images": len(names),
                  "bytes_per_image": float(np.mean([os.path.getsize(Path(args.photos) / x) for x in names]))}
    common.print_table(rows, [("variant", "variant", "s"), ("reader", "reader", "s"),
                              ("bytes_per_image", "bytes/img", ",.0f"),
                              ("ratio_to_raw_size", "size ×", ".3f"), ("ms_per_image", "ms/img", ".3f"),
                              ("time_ratio_to_raw", "time ×", ".2f"), ("mean_abs_diff", "mean |d|", ".2f"),
                              ("max_abs_diff", "max |d|", "d"), ("psnr_db", "PSNR dB", ".1f")])
    results = {"benchmark": "schema_v2", "data": args.data, "schema_version": version,
               "images": n, "image_shape": list(images.shape[1:]), "batch": args.batch,
               "repeats": args.repeats, "rows": rows, "source_photos": photos,
               "machine": info, "load": common.load_line(info)}
    common.write_results(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
