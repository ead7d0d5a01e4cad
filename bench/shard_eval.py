"""Sharded evaluation: the evaluator's exact metrics on 1 process against 2 torchrun (gloo) processes,
each scoring its share of the images against every fact (``Evaluator.evaluate_sharded``).

    .venv/bin/python bench/shard_eval.py [--case 20000x20000] [--rounds 2] [--repeat 2] [--quick]
                                         [--out FILE]

The case is ``eval_exact.make_case`` (N test images × F facts, synthetic embeddings with a trained
model's structure, d = 64 per slot, 4 tasks). Each process runs 1 torch thread (OMP_NUM_THREADS=1)
and rebuilds the case from its seed, then evaluates only its share. Launches alternate 1 and 2
processes (``--rounds`` of each, side by side, so that a change of load hits both), each launch
evaluates ``--repeat`` times (after one untimed warm-up: numba's compile, the first products) and
records rank 0's wall time between barriers; the speed-up is the ratio of the medians. On a shared
machine the two processes do not get a core each, so each rank's CPU time (``time.process_time``,
1 thread) is recorded too: the slowest rank's is the wall time a core per process would give
(communication waits aside), and its ratio the speed-up free of the other load. The metrics
of the two launches must be equal (every number but the timings; the mean cosine within 1e-12).
Records the CPU model and the load average before and after. Writes bench/results/shard_eval.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")          # as eval_exact.py (before torch loads)

HERE = Path(__file__).resolve().parent


def worker(args) -> None:
    """One torchrun process: build the case, evaluate this rank's share, rank 0 writes JSON."""
    import numpy as np
    import torch

    from eval_exact import fake_data, make_case
    from factmas import distributed
    from factmas.config import EvalConfig
    from factmas.evaluation.evaluator import Evaluator
    torch.set_num_threads(1)
    distributed.start_from_env("cpu")
    finished = False
    try:
        n, f = (int(x) for x in args.case.lower().split("x"))
        phi, psi, order, pairs, task, tokens = make_case(n, f, args.tasks)
        ev = Evaluator(fake_data(n, order, pairs, task, tokens), "bench", EvalConfig())
        lo, hi = distributed.shard_bounds(len(ev.image_ids))
        phi_l, psi_t = torch.from_numpy(np.ascontiguousarray(phi[lo:hi])), torch.from_numpy(psi)
        walls, cpus, result = [], [], None
        for i in range(args.repeat + 1):                   # the first: warm-up, untimed
            distributed.barrier()
            t0, c0 = time.perf_counter(), time.process_time()
            result = ev.evaluate_sharded(phi_l, psi_t, lo)
            c1 = time.process_time()                       # this rank's CPU seconds (1 thread)
            distributed.barrier()
            if i:
                walls.append(time.perf_counter() - t0)
                cpus.append(c1 - c0)
        cpu_all = distributed.gather_to_main(cpus)         # [rank][repeat]
        if distributed.is_main():
            from factmas.evaluation.lfl import lfl_inputs
            result.update(wall_s=walls, world=distributed.size(), pairs=int(len(pairs)), F=len(order),
                          cpu_s_per_rank=cpu_all,
                          sharded=not lfl_inputs(ev)["search"])     # else φ gathered (LFL search)
            Path(args.out).write_text(json.dumps(result))
        finished = True
    finally:
        distributed.stop(clean=finished)


def launch(args, nproc: int, out: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", FACTMAS_DIST_TIMEOUT_S="1200")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           str(Path(__file__).resolve()), "--worker", "--case", args.case, "--tasks", str(args.tasks),
           "--repeat", str(args.repeat), "--out", str(out)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{nproc}-process launch failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    return json.loads(out.read_text())


def numbers(x, path=""):
    """(path, value) of every number of a result, timings left out."""
    if isinstance(x, dict):
        for k, v in x.items():
            if k not in ("timing", "wall_s", "world", "sharded", "cpu_s_per_rank"):
                yield from numbers(v, f"{path}/{k}")
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        yield path, float(x)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", default="20000x20000")
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2, help="launches of each process count")
    ap.add_argument("--repeat", type=int, default=2, help="timed evaluations per launch")
    ap.add_argument("--quick", action="store_true", help="smallest size (smoke test)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    import common
    if args.quick:
        args.case, args.rounds, args.repeat = "600x800", 1, 1
    out = Path(args.out or common.RESULTS / "shard_eval.json")
    info = common.machine_info()
    print(f"CPU: {info['cpu']}; {info['usable_cores']} usable cores; load {info['loadavg_1_5_15']}",
          flush=True)
    runs = {1: [], 2: []}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.rounds):
            for nproc in (1, 2):
                load0 = os.getloadavg()[0]
                res = launch(args, nproc, Path(tmp) / f"r{k}_{nproc}.json")
                # the slowest rank's CPU seconds per evaluation: what the wall time would be with a
                # core per process and no other load (the communication waits are not CPU time)
                crit = [max(r[i] for r in res["cpu_s_per_rank"]) for i in range(len(res["wall_s"]))]
                runs[nproc].append({"wall_s": res["wall_s"], "cpu_s_per_rank": res["cpu_s_per_rank"],
                                    "critical_cpu_s": crit, "loadavg_1_start": load0,
                                    "loadavg_1_end": os.getloadavg()[0],
                                    "search_s": res["timing"]["search_s"],
                                    "metrics_s": res["timing"]["metrics_s"]})
                results.setdefault(nproc, res)
                print(f"round {k + 1}, {nproc} process(es): {', '.join(f'{w:.2f}' for w in res['wall_s'])} s "
                      f"(load {load0:.2f} → {os.getloadavg()[0]:.2f})", flush=True)
    a, b = dict(numbers(results[1])), dict(numbers(results[2]))
    diff = {k: abs(a[k] - b.get(k, float("nan"))) for k in a if not (a[k] != a[k] and b.get(k) != b.get(k))}
    worst_metric = max((v for k, v in diff.items() if "mean_cosine" not in k), default=0.0)
    med = {p: statistics.median(w for r in runs[p] for w in r["wall_s"]) for p in runs}
    crit = {p: statistics.median(c for r in runs[p] for c in r["critical_cpu_s"]) for p in runs}
    total_cpu = {p: statistics.median(sum(x) for r in runs[p] for x in zip(*r["cpu_s_per_rank"]))
                 for p in runs}
    payload = {"benchmark": "shard_eval", "quick": args.quick, "machine": info, "case": args.case, "N": int(args.case.split("x")[0]), "F": results[1]["F"],
               "pairs": results[1]["pairs"], "sharded_counts": results[2]["sharded"], "d": 64, "tasks": args.tasks, "torch_threads_per_process": 1,
               "runs": {str(p): r for p, r in runs.items()},
               "median_s": {str(p): m for p, m in med.items()}, "speedup_2_over_1": med[1] / med[2],
               "median_critical_cpu_s": {str(p): c for p, c in crit.items()},
               "cpu_speedup_2_over_1": crit[1] / crit[2],
               "median_total_cpu_s": {str(p): c for p, c in total_cpu.items()},
               "metrics_equal": worst_metric == 0.0 and len(a) == len(b),
               "max_abs_metric_diff": worst_metric,
               "mean_cosine_diff": diff.get("/embedding/mean_cosine", float("nan")),
               "map_f2i_all": results[1]["fact_to_image_map"]["all"],
               "loadavg_1_5_15_end": [round(x, 2) for x in os.getloadavg()]}
    print(f"slowest rank's CPU time: 1 process {crit[1]:.2f} s, 2 processes {crit[2]:.2f} s: "
          f"{crit[1] / crit[2]:.2f}× (all ranks' CPU: {total_cpu[1]:.2f} s, {total_cpu[2]:.2f} s)")
    print(f"median wall: 1 process {med[1]:.2f} s, 2 processes {med[2]:.2f} s: speed-up {med[1] / med[2]:.2f}×; "
          f"metrics equal: {payload['metrics_equal']} (mean cosine Δ {payload['mean_cosine_diff']:.1e})")
    print(common.load_line(info))
    common.write_results(out, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
