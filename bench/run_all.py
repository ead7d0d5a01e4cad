"""Run the five benchmarks one after another and record how long each took.

    .venv/bin/python bench/run_all.py [--quick] [--threads N] [--out-dir bench/results]
                                      [--only omega memory ...]

Default sizes write bench/results/<name>.json and bench/results/run_all.json (wall and CPU seconds
of each script and in total; the issue asks for under 10 minutes on a 2-core CPU — on a shared CPU
the CPU seconds tell what the wall time would be without the other load). ``--quick`` runs every
script at its smallest size (the smoke test, ``tests/bench/test_bench_smoke.py``); give it an
``--out-dir`` so the recorded results are not overwritten.
"""
from __future__ import annotations

import argparse
import os
import resource
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


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (memory.py's)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smallest sizes (smoke test)")
    ap.add_argument("--out-dir", type=Path, default=common.RESULTS)
    ap.add_argument("--only", nargs="+", choices=list(SCRIPTS), default=list(SCRIPTS))
    ap.add_argument("--threads", type=int, help="torch threads of every script (default: theirs)")
    args = ap.parse_args(argv)
    info = common.machine_info()
    seconds, cpu = {}, {}
    for name in args.only:
        print(f"\n===== bench/{name}.py{' --quick' if args.quick else ''} =====", flush=True)
        t0, c0 = time.perf_counter(), cpu_seconds()
        code = SCRIPTS[name]([*(["--quick"] if args.quick else []),
                              *(["--threads", str(args.threads)] if args.threads else []),
                              "--out", str(args.out_dir / f"{name}.json")])
        seconds[name], cpu[name] = time.perf_counter() - t0, cpu_seconds() - c0
        if code:
            raise SystemExit(f"bench/{name}.py exited with {code}")
    total = sum(seconds.values())
    print("\n" + "\n".join(f"{k:15s} {v:7.1f} s wall, {cpu[k]:7.1f} s CPU" for k, v in seconds.items()))
    print(f"{'total':15s} {total:7.1f} s wall, {sum(cpu.values()):7.1f} s CPU  ({common.load_line(info)})")
    common.write_results(args.out_dir / "run_all.json", {
        "benchmark": "run_all", "machine": info, "loadavg_end": list(os.getloadavg()),
        "quick": args.quick, "threads": args.threads, "seconds": seconds, "total_s": total,
        "cpu_seconds": cpu, "total_cpu_s": sum(cpu.values())})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
