"""The C allocator's thresholds (factmas/machine/cpu_memory.py): feature-cache and training images/s with
glibc's defaults against ``keep_freed_memory()``, side by side.

    .venv/bin/python bench/cpu_memory.py [--images 256] [--repeats 3] [--threads 2] [--quick] [--out FILE]

Each measurement runs in a fresh Python process (``mallopt`` cannot be undone in a process), the two
allocator settings alternating repeat by repeat so that a change of load hits both; the table gives
medians and the ratio keep ÷ default per repeat. Measured, on random uint8 pixels (speed does not
depend on the content):

* feature cache: ``compute_features`` of EfficientNet-Lite0's frozen stages (5 at 128 px, 6 at
  224 px: the default of each size) on ``--images`` images and their mirror images, batch 8 and 64;
* training: forward + backward + Adam step of the trainable image branch on cached-feature-shaped
  inputs (batch 64), images/s.

Also records minor page faults (``ru_minflt``) and system CPU seconds of each child.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import common

CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
from factmas.machine.cpu_memory import keep_freed_memory
mode, kind, size, fs, batch, n, threads = sys.argv[1:8]
size, fs, batch, n, threads = int(size), int(fs), int(batch), int(n), int(threads)
kept = keep_freed_memory() if mode == "keep" else False
torch.set_num_threads(threads)
from factmas.config import ModelConfig
from factmas.model.features import compute_features
from factmas.model import build_model
model = build_model(ModelConfig(freeze_stages=fs), 100)
rng = np.random.default_rng(0)
r0 = resource.getrusage(resource.RUSAGE_SELF)
if kind == "cache":
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    compute_features(model.image_stem, images[:batch], batch=batch, progress=False)   # warm-up
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    compute_features(model.image_stem, images, batch=batch, progress=False)
    seconds, done = time.perf_counter() - t0, 2 * n
else:
    with torch.no_grad():
        shape = model.image_stem(torch.zeros(1, 3, size, size)).shape[1:]
    x = torch.randn(batch, *shape)
    branch = model.image_branch.train()
    opt = torch.optim.Adam([p for p in branch.parameters() if p.requires_grad], 1e-4)
    def step():
        opt.zero_grad(set_to_none=True)
        branch(x).square().sum().backward()
        opt.step()
    step()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    steps = max(1, n // batch)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    seconds, done = time.perf_counter() - t0, steps * batch
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"kept": kept, "images_per_s": done / seconds, "seconds": seconds,
                  "minor_faults": r1.ru_minflt - r0.ru_minflt, "sys_s": r1.ru_stime - r0.ru_stime,
                  "user_s": r1.ru_utime - r0.ru_utime}))
"""

CASES = (("cache", 128, 5, 8), ("cache", 128, 5, 64), ("cache", 224, 6, 8), ("cache", 224, 6, 64),
         ("train", 128, 5, 64), ("train", 224, 6, 64))


def child(mode: str, kind: str, size: int, fs: int, batch: int, n: int, threads: int) -> dict:
    """One measurement in a fresh process; its JSON line."""
    done = subprocess.run([sys.executable, "-c", CHILD, mode, kind, str(size), str(fs), str(batch),
                           str(n), str(threads)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=256, help="images per measurement (cache: ×2 mirrored)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="16 images, 1 repeat, 1 thread")
    ap.add_argument("--cases", nargs="+", metavar="WHAT:PX:FROZEN:BATCH",
                    help="measure only these, e.g. cache:128:5:8 (default: all six)")
    ap.add_argument("--out", default=str(common.RESULTS / "cpu_memory.json"))
    args = ap.parse_args()
    if args.quick:
        args.images, args.repeats, args.threads = 16, 1, 1
    info = common.machine_info()
    threads = args.threads or info["usable_cores"]
    cases = CASES
    if args.cases:
        try:
            cases = [(w, int(px), int(fs), int(b)) for w, px, fs, b in (c.split(":") for c in args.cases)]
        except ValueError:
            ap.error("--cases: each as WHAT:PX:FROZEN:BATCH, e.g. cache:128:5:8 or train:224:6:64")
        if any(w not in ("cache", "train") for w, *_ in cases):
            ap.error("--cases: WHAT is cache or train")
    rows = []
    for kind, size, fs, batch in cases:
        runs = {"default": [], "keep": []}
        for _ in range(args.repeats):
            for mode in ("default", "keep"):
                runs[mode].append(child(mode, kind, size, fs, batch, args.images, threads))
        ratios = [k["images_per_s"] / d["images_per_s"] for d, k in zip(runs["default"], runs["keep"])]
        row = {"what": kind, "px": size, "frozen_stages": fs, "batch": batch, "threads": threads,
               "kept": runs["keep"][0]["kept"], "ratio_keep_over_default": statistics.median(ratios)}
        for mode in runs:
            row[f"{mode}_images_per_s"] = statistics.median(r["images_per_s"] for r in runs[mode])
            row[f"{mode}_minor_faults"] = statistics.median(r["minor_faults"] for r in runs[mode])
            row[f"{mode}_sys_s"] = statistics.median(r["sys_s"] for r in runs[mode])
            row[f"{mode}_user_s"] = statistics.median(r["user_s"] for r in runs[mode])
        rows.append(row)
        print(f"{kind:5} {size:3d} px f{fs} batch {batch:3d}: default {row['default_images_per_s']:7.1f} "
              f"img/s ({row['default_minor_faults']:,.0f} faults, sys {row['default_sys_s']:.1f} s), "
              f"keep {row['keep_images_per_s']:7.1f} img/s ({row['keep_minor_faults']:,.0f} faults, "
              f"sys {row['keep_sys_s']:.1f} s), ratio {row['ratio_keep_over_default']:.2f}", flush=True)
    print(common.load_line(info))
    common.write_results(args.out, {"benchmark": "cpu_memory", "quick": args.quick, "machine": info,
                                    "images": args.images, "repeats": args.repeats, "results": rows,
                                    "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return 0


if __name__ == "__main__":
    sys.exit(main())
