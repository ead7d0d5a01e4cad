"""Peak memory of building and reading the frozen-stage feature cache (issue 28): the cache written in
chunks to a memory-mapped .npy and read memory-mapped (this tree) against the whole-array cache of an
earlier factmas tree (``--base``), side by side.

    .venv/bin/python bench/cache_memory.py [--images 4000] [--size 64] [--stages 1] [--repeats 2]
        [--base DIR] [--out bench/results/cache_memory.json]

``--base``: a folder holding an earlier ``factmas`` package, e.g. made by
``git archive 922122e factmas | tar -x -C /tmp/base``; without it only this tree is measured.

Each measurement runs in a fresh Python process (1 torch thread) on a synthetic dataset of
``--images`` random images of ``--size`` px, EfficientNet-Lite0 with ``--stages`` frozen stages
(torch engine; at 64 px and 1 stage a cache row is 16 × 32 × 32 × 2 orientations float16 = 64 KiB,
so the cache is large against the process and the difference shows):

* build: ``image_inputs`` with no cache on the disk (compute, write);
* read: ``image_inputs`` on the finished cache, then one epoch of ``get`` over all images in random
  batches of 64 with random flips (the trainer's access).

Per stage it records the rise of the peak RSS above the process's RSS before the stage (VmHWM after
``clear_refs``), and the rise of the anonymous and the file-backed resident memory from the stage's
start to its end (RssAnon, RssFile: a memory map's pages are file-backed, reclaimable page cache),
plus wall seconds. Kinds alternate repeat
by repeat (base, new, base, new, ...), so a change of load hits both.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import common

CHILD = r"""
import json, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from factmas.config import ModelConfig
from factmas.data.dataset import read_dataset
from factmas.model import build_model
from factmas.model.features import image_inputs

def status():
    out = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[k] = int(v.split()[0]) * 1024
    return out

mode, path, stages = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = read_dataset(path)
torch.manual_seed(0)
model = build_model(ModelConfig(backbone="efficientnet_lite0", freeze_stages=stages, stem_engine="torch"),
                    len(data.vocab)).eval()
with torch.no_grad():
    model.image_stem(torch.zeros(2, 3, 8, 8))          # first-call allocations before the mark
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status()
t0 = time.perf_counter()
inputs = image_inputs(model, data, progress=False)
seconds = time.perf_counter() - t0
epoch = None
if mode == "read":
    rng = np.random.default_rng(0)
    order = rng.permutation(len(data.images))
    t1 = time.perf_counter()
    total = 0.0
    for lo in range(0, len(order), 64):
        ids = order[lo:lo + 64]
        total += float(inputs.get(ids, rng.random(len(ids)) < 0.5).sum())
    epoch = time.perf_counter() - t1
after = status()
print(json.dumps({"rss_before": before["VmRSS"], "peak_rise": after["VmHWM"] - before["VmRSS"],
                  "anon_end": after["RssAnon"] - before["RssAnon"],
                  "file_end": after["RssFile"] - before["RssFile"], "open_s": seconds,
                  "epoch_s": epoch}))
"""


def run_child(mode: str, tree: Path, dataset: Path, stages: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    # cwd: the dataset's folder, since ``python -c`` puts the working folder first on sys.path
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(dataset), str(stages)], env=env,
                         capture_output=True, text=True, check=True, cwd=dataset.parent)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=4000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--stages", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--base", type=Path, help="folder with an earlier factmas package (the 'before')")
    p.add_argument("--out", type=Path, default=common.RESULTS / "cache_memory.json")
    args = p.parse_args()
    info = common.machine_info()
    from factmas.data.synthetic import make_synthetic_dataset
    kinds = ([("before", args.base.resolve())] if args.base else []) + [("after", common.REPO)]
    rows: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="cache_memory_") as tmp:
        dataset = make_synthetic_dataset(Path(tmp) / "syn.h5", n_images=args.images, image_size=args.size,
                                         num_tasks=2)
        cache_dir = Path(f"{dataset}.features")
        for r in range(args.repeats):
            for kind, tree in kinds:
                shutil.rmtree(cache_dir, ignore_errors=True)
                for mode in ("build", "read"):
                    got = run_child(mode, tree, dataset, args.stages)
                    rows.setdefault((kind, mode), []).append(got)
                    print(f"repeat {r} {kind:6s} {mode:5s}: peak rise {got['peak_rise'] / common.MiB:7.1f} MiB, "
                          f"anon rise {got['anon_end'] / common.MiB:7.1f} MiB, file-backed rise "
                          f"{got['file_end'] / common.MiB:6.1f} MiB, {got['open_s']:.2f} s"
                          + (f", epoch {got['epoch_s']:.2f} s" if got["epoch_s"] else ""), flush=True)
        cache_mib = sum(f.stat().st_size for f in cache_dir.glob("*.npy")) / common.MiB
    med = lambda xs: statistics.median(xs)  # noqa: E731
    table = []
    for (kind, mode), got in rows.items():
        table.append({"tree": kind, "stage": mode, "repeats": len(got),
                      "peak_rise_mib": round(med([g["peak_rise"] for g in got]) / common.MiB, 1),
                      "anon_rise_mib": round(med([g["anon_end"] for g in got]) / common.MiB, 1),
                      "file_rise_mib": round(med([g["file_end"] for g in got]) / common.MiB, 1),
                      "rss_before_mib": round(med([g["rss_before"] for g in got]) / common.MiB, 1),
                      "open_s": round(med([g["open_s"] for g in got]), 3),
                      "epoch_s": None if mode == "build" else round(med([g["epoch_s"] for g in got]), 3)})
    print(f"\ncache file {cache_mib:.1f} MiB ({args.images} images, {args.size} px, Lite0 {args.stages} "
          "frozen stage(s), torch engine); medians:")
    common.print_table(table, [("tree", "tree", ""), ("stage", "stage", ""), ("peak_rise_mib", "peak rise MiB", ".1f"),
                               ("anon_rise_mib", "anon rise MiB", ".1f"), ("file_rise_mib", "file rise MiB", ".1f"),
                               ("open_s", "open s", ".2f"), ("epoch_s", "epoch s", "")])
    print(common.load_line(info))
    common.write_results(args.out, {"machine": info, "args": {k: str(v) for k, v in vars(args).items()},
                                    "cache_mib": round(cache_mib, 1), "rows": table,
                                    "runs": {f"{k}/{m}": v for (k, m), v in rows.items()},
                                    "load_end": [round(x, 2) for x in os.getloadavg()]})


if __name__ == "__main__":
    main()
