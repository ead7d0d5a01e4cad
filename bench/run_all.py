"""Run the five benchmarks one after another and record how long each took.

    .venv/bin/python bench/run_all.py [--quick] [--out-dir bench/results] [--only omega memory ...]

Default sizes write bench/results/<name>.json and bench/results/run_all.json (wall seconds of each
script and in total; the issue asks for under 10 minutes on a 2-core CPU). ``--quick`` runs every
script at its smallest size (the smoke test, ``tests/test_bench_smoke.py``); give it an
``--out-dir`` so the recorded results are not overwritten.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import common
import data_loading
import eval_scaling
import memory
import omega
import train_overhead

SCRIPTS = {"train_overhead": train_overhead.main, "omega": omega.main,
           "eval_scaling": eval_scaling.main, "data_loading": data_loading.main,
           "memory": memory.main}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smallest sizes (smoke test)")
    ap.add_argument("--out-dir", type=Path, default=common.RESULTS)
    ap.add_argument("--only", nargs="+", choices=list(SCRIPTS), default=list(SCRIPTS))
    args = ap.parse_args(argv)
    info = common.machine_info()
    seconds = {}
    for name in args.only:
        print(f"\n===== bench/{name}.py{' --quick' if args.quick else ''} =====", flush=True)
        t0 = time.perf_counter()
        code = SCRIPTS[name]([*(["--quick"] if args.quick else []), "--out",
                              str(args.out_dir / f"{name}.json")])
        seconds[name] = time.perf_counter() - t0
        if code:
            raise SystemExit(f"bench/{name}.py exited with {code}")
    total = sum(seconds.values())
    print("\n" + "\n".join(f"{k:15s} {v:7.1f} s" for k, v in seconds.items()))
    print(f"{'total':15s} {total:7.1f} s  ({common.load_line(info)})")
    common.write_results(args.out_dir / "run_all.json", {
        "benchmark": "run_all", "machine": info, "loadavg_end": list(os.getloadavg()),
        "quick": args.quick, "seconds": seconds, "total_s": total})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
