"""Scale benchmark (issue 28): peak RSS and throughput of each stage against N images, F facts fixed.

    .venv/bin/python bench/scale.py [--sizes 10000,50000,200000] [--facts 20000] [--image-size 16]
        [--train-steps 40 (0: the whole epoch)] [--omega-samples 512] [--cache-batch 64] [--stages build,...] [--tmp DIR]
        [--keep] [--quick] [--out bench/results/scale.json]

For each N a synthetic dataset (``bench/scale_data.py``: F facts whatever N, 3 pairs per image,
70/10/20 % train/val/test, 4 tasks, ``--image-size`` px images) goes through the stages of a run,
each in its own Python process (1 torch thread, OMP_NUM_THREADS=1), in this order:

* ``build``: the HDF5 file written by ``factmas.data.dataset.write_dataset`` from a chunked image
  source (``bench/scale_data.py``: the writer asks for 256 images at a time, the source makes them
  4,096 at a time), then ``read_dataset`` (the schema's whole validation) on it; throughput:
  images/s.
* ``cache``: the default model (EfficientNet-Lite0, its default frozen stages, the default stem
  engine) builds the frozen-stage feature cache as ``load_or_build`` does (``cache_file``: the key,
  hashing every pixel; ``build_file``: chunks into a memory-mapped ``.npy``), at ``--cache-batch``
  images per forward (factmas's default, 2 with ONNX Runtime, is set for 224 px; at 16 px a forward
  is per-call bound), then opens it with ``image_inputs``; throughput: images/s (each with its mirror).
* ``train``: the trainer (``factmas.trainer.build_trainer``: the cache read memory-mapped, the
  evaluator's set-up) and ``--train-steps`` steps of task 1 (``train_step`` on the trainer's batches,
  batch 64, flips, the default loss with its image → all task facts term; ``--train-steps 0``: the
  whole epoch of task 1); throughput: pairs/s. ``hwm`` records the process's peak RSS so far
  (VmHWM) after 10, 40, 160, 640, ... steps and at the end, to show whether it grows with the steps.
* ``omega``: MAS Ω of task 1 (``MAS.estimate_importance``, exact per-sample gradients) on
  ``--omega-samples`` images and as many facts (``max_samples``); throughput: samples/s.
* ``eval``: ``Evaluator.evaluate`` of the (untrained, seeded) model on the test images against all
  F facts, exact, every metric; throughput: test images/s (embedding and scoring).
* ``eval2``: the same on 2 torchrun processes (gloo, 1 thread each): each rank embeds and scores
  its share of the test images (``Evaluator.evaluate_sharded``); its metrics are compared with
  ``eval``'s (every number but timings; the embedding's mean cosine within 1e-9).

Both evaluations also record ``column_counting`` (``ColumnCounter.stats()`` of each counter: score
blocks counted, the entries found inside another true pair's rounding window and kept until the end,
and ``over_budget``: past ``column_ranks.WINDOW_BUDGET`` entries the counter dropped them and a
second pass counted against exact values, ``factmas.evaluation.column_exact``, whose own stats follow
with 0 entries kept; docs/benchmarks.md § 11), the test pairs and the mean cosine.

Peak RSS is the child's ``ru_maxrss`` (``os.wait4``; for ``eval2`` the largest rank's own); the JSON
also has each child's RSS once its imports and data were loaded, and ``growth`` = peak at the
largest N ÷ peak at the smallest, per stage (issue 28's target: ≤ 1.2 ×, apart from the O(F) fact
side, which is the same at every N here). Writes ``--out`` with the CPU model, the load average
before and after every stage, numpy / torch versions and the date.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent
STAGES = ("build", "cache", "train", "omega", "eval", "eval2")
SPLIT = "random4_seed0"


# ---- children ------------------------------------------------------------------------------------
def _status() -> dict:
    out = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[k] = int(v.split()[0]) * 1024
    return out


def _config(args, run_dir: str):
    from factmas.config import RunConfig
    return RunConfig.from_dict({
        "data": args.data, "out": run_dir,
        "train": {"split": SPLIT, "method": "mas", "threads": 1, "epochs": 1,
                  "options": {"mas": {"max_samples": args.omega_samples}}},
        "eval": {"calibrate": False}})


def count_window_entries() -> list:
    """Record ``ColumnCounter.stats()`` (blocks, entries found inside another true pair's rounding
    window, kept until the end) each time the evaluator's column counting ends, one process or a
    share (``ShardColumnCounter``): the list it appends to. A diagnostic of this benchmark only (wraps
    the class's ``certain_above``, which both call once at the end; what it returns is unchanged)."""
    from factmas.evaluation.column_ranks import ColumnCounter
    seen: list = []
    original = ColumnCounter.certain_above

    def certain_above(self):
        seen.append(self.stats())
        return original(self)

    ColumnCounter.certain_above = certain_above
    return seen


def child(args) -> dict:
    """Run one stage in this process; returns its figures (seconds, items, rss_ready)."""
    import torch
    torch.set_num_threads(1)
    if args.stage == "build":
        import scale_data
        from factmas.data.dataset import read_dataset
        ready = _status()["VmRSS"]
        t0 = time.perf_counter()
        info = scale_data.write_streamed(args.data, args.n, args.facts, args.image_size)
        write_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        data = read_dataset(args.data)
        read_s = time.perf_counter() - t1
        return {"seconds": write_s + read_s, "write_s": write_s, "read_s": read_s, "items": args.n,
                "unit": "images", "rss_ready": ready, "file_mib": info["bytes"] / 2 ** 20,
                "pairs": info["pairs"], "facts": data.num_facts}
    from factmas.model.features import image_inputs
    from factmas.trainer import build_parts, build_trainer
    from factmas.data.dataset import read_dataset
    data = read_dataset(args.data)
    cfg = _config(args, tempfile.mkdtemp(prefix="scale_run_", dir=Path(args.data).parent))
    model, method, tasks = build_parts(cfg, data)
    if args.stage == "cache":
        from factmas.model.features import build_file, cache_file
        ready = _status()["VmRSS"]
        t0 = time.perf_counter()
        path = cache_file(data, model)                     # hashes every pixel (chunk by chunk)
        key_s = time.perf_counter() - t0
        # written chunk by chunk into the memory-mapped .npy, as load_or_build does, at a batch
        # that suits tiny images (the default, 2 for ONNX Runtime, is set for 224 px)
        build_file(model.image_stem, data.images, path, "cpu", batch=args.cache_batch, progress=False)
        inputs = image_inputs(model, data, "cpu", cache=True, progress=False)   # reads the file
        s = time.perf_counter() - t0
        return {"seconds": s, "key_s": key_s, "items": len(data.image_ids), "unit": "images (+ mirror)",
                "rss_ready": ready, "cache_mib": inputs.features.nbytes / 2 ** 20,
                "row_shape": list(inputs.features.shape[1:]), "batch": args.cache_batch}
    trainer, stream = build_trainer(cfg, data, torch.device("cpu"), progress=False,
                                    parts=(model, method, tasks))
    stage = stream[0]
    ready = _status()["VmRSS"]
    if args.stage == "train":
        from factmas.space.loss import uses_candidates
        from factmas.trainer.batches import make_rng
        from factmas.trainer.loop import make_optimizer, train_step
        tc = cfg.train
        trainer.batcher.candidates = trainer.step_batcher.candidates = (
            stage.facts if uses_candidates(cfg.loss) else None)
        reads = {"images": 0, "facts": 0, "pairs": 0}
        model.train()
        method.on_task_start(model, trainer.context(stage, reads))
        opt = make_optimizer(model.parameters(), tc)
        batches = trainer.step_batcher.pair_batches(stage.pairs["train"], tc.batch_size,
                                                    make_rng(tc.seed, stage.index, 0), flip=tc.augment_flip)
        warm = 2
        n, t0, done, hwm, mark = 0, None, 0, [], 10
        for step, batch in enumerate(batches):
            if step == warm:
                t0 = time.perf_counter()
            if args.train_steps and step >= warm + args.train_steps:
                break
            train_step(model, method, opt, batch, cfg)
            if step >= warm:
                n += len(batch["fact_idx"])
                done += 1
                if done == mark:
                    hwm.append([done, _status()["VmHWM"]])
                    mark *= 4
        s = time.perf_counter() - t0
        hwm.append([done, _status()["VmHWM"]])
        return {"seconds": s, "items": n, "unit": "pairs", "steps": done, "rss_ready": ready, "hwm": hwm,
                "whole_epoch": not args.train_steps,
                "task_facts": int(len(stage.facts)), "task_pairs": int(len(stage.pairs["train"]))}
    if args.stage == "omega":
        reads = {"images": 0, "facts": 0, "pairs": 0}
        model.eval()
        t0 = time.perf_counter()
        omega = method.estimate_importance(model, trainer.context(stage, reads))
        s = time.perf_counter() - t0
        used = (min(args.omega_samples, len(stage.images["train"]))          # Ω's cap, each branch
                + min(args.omega_samples, len(stage.facts)))
        return {"seconds": s, "items": used, "unit": "samples (images + facts)",
                "reads": reads, "rss_ready": ready,     # reads: the batches' samples drawn (last cut)
                "omega_sum": float(sum(float(v.double().sum()) for v in omega.values()))}
    if args.stage == "eval":
        ev = trainer.hook.evaluator
        windows = count_window_entries()
        t0 = time.perf_counter()
        result = ev.evaluate(model)
        s = time.perf_counter() - t0
        Path(args.child_out + ".metrics.json").write_text(json.dumps(result))
        return {"seconds": s, "items": int(len(ev.image_ids)), "unit": "test images", "rss_ready": ready,
                "facts": data.num_facts, "timing": result["timing"], "column_counting": windows,
                "test_pairs": int(len(ev.pool_pairs)), "mean_cosine": result["embedding"]["mean_cosine"],
                "fact_to_image_map_all": result["fact_to_image_map"]["all"]}
    raise SystemExit(f"unknown stage {args.stage!r}")


def worker(args) -> None:
    """One torchrun process of ``eval2``: the trainer's evaluator on this rank's share."""
    import torch
    from factmas import distributed
    from factmas.data.dataset import read_dataset
    from factmas.trainer import build_parts, build_trainer, shared_inputs
    torch.set_num_threads(1)
    distributed.start_from_env("cpu")
    finished = False
    try:
        data = read_dataset(args.data)
        cfg = _config(args, str(Path(args.child_out).parent / f"run_rank{distributed.rank()}"))
        model, method, tasks = build_parts(cfg, data)
        inputs = shared_inputs(cfg, data, torch.device("cpu"), model, False)
        trainer, _ = build_trainer(cfg, data, torch.device("cpu"), progress=False,
                                   parts=(model, method, tasks), inputs=inputs)
        ev = trainer.hook.evaluator
        windows = count_window_entries()
        ready = _status()["VmRSS"]
        distributed.barrier()
        t0 = time.perf_counter()
        result = ev.evaluate(model)
        distributed.barrier()
        s = time.perf_counter() - t0
        me = {"rank": distributed.rank(), "rss_ready": ready,
              "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
              "cpu_s": time.process_time(), "column_counting": windows}
        ranks = distributed.gather_to_main(me)
        if distributed.is_main():
            Path(args.child_out + ".metrics.json").write_text(json.dumps(result))
            Path(args.child_out).write_text(json.dumps({
                "seconds": s, "items": int(len(ev.image_ids)), "unit": "test images",
                "rss_ready": max(r["rss_ready"] for r in ranks), "ranks": ranks,
                "peak_rss": max(r["ru_maxrss"] for r in ranks), "timing": result["timing"],
                "world": distributed.size()}))
        finished = True
    finally:
        distributed.stop(clean=finished)


# ---- parent ---------------------------------------------------------------------------------------
def run_stage(args, stage: str, n: int, data: Path, work: Path) -> dict:
    """Run ``stage`` in a fresh process (or 2 torchrun processes); its figures with peak RSS."""
    out = work / f"{stage}_{n}.json"
    common_args = ["--data", str(data), "--images", str(n), "--facts", str(args.facts),
                   "--image-size", str(args.image_size), "--train-steps", str(args.train_steps),
                   "--omega-samples", str(args.omega_samples), "--cache-batch", str(args.cache_batch),
                   "--child-out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", FACTMAS_DIST_TIMEOUT_S="1800",
               PYTHONPATH=os.pathsep.join([str(HERE.parent)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    if stage == "eval2":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               str(Path(__file__).resolve()), "--worker", *common_args]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", stage, *common_args]
    load0 = os.getloadavg()
    log = work / f"{stage}_{n}.log"
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        p = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=str(work))
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"stage {stage} at N = {n} failed (exit {p.returncode}):\n{log.read_text()[-4000:]}")
    row = json.loads(out.read_text())
    row.update(stage=stage, n=n, process_wall_s=wall, loadavg_before=[round(x, 2) for x in load0],
               loadavg_after=[round(x, 2) for x in os.getloadavg()])
    if stage != "eval2":
        row["peak_rss"] = usage.ru_maxrss * 1024           # kB → bytes (Linux)
    row["peak_rss_mib"] = row["peak_rss"] / 2 ** 20
    row["rss_ready_mib"] = row["rss_ready"] / 2 ** 20
    row["per_s"] = row["items"] / row["seconds"] if row["seconds"] > 0 else None
    return row


def numbers(x, path=""):
    """(path, value) of every number of a result, timings left out."""
    if isinstance(x, dict):
        for k, v in x.items():
            if k != "timing":
                yield from numbers(v, f"{path}/{k}")
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        yield path, float(x)


def same_metrics(a: dict, b: dict) -> tuple[bool, float]:
    """(every metric equal, the largest difference); NaN equals NaN; the mean cosine within 1e-9."""
    da, db = dict(numbers(a)), dict(numbers(b))
    if set(da) != set(db):
        return False, float("inf")
    worst, ok = 0.0, True
    for k, v in da.items():
        w = db[k]
        if v != v and w != w:
            continue
        d = abs(v - w)
        worst = max(worst, d)
        ok &= d <= (1e-9 if "mean_cosine" in k else 0.0)
    return ok, worst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default=None, help="N images, comma-separated (10000,50000,200000)")
    ap.add_argument("--facts", type=int, default=20000, help="F facts (the same at every N)")
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--train-steps", type=int, default=None,
                    help="timed training steps of task 1 after 2 warm-up steps (40; --quick: 3; 0: the "
                         "whole epoch)")
    ap.add_argument("--omega-samples", type=int, default=512)
    ap.add_argument("--cache-batch", type=int, default=64,
                    help="images per forward of the cache build (64; factmas's default is set for 224 px)")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--tmp", default=None, help="folder for the datasets (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the datasets and caches")
    ap.add_argument("--quick", action="store_true", help="smoke test: N = 300, 600; 200 facts; nothing written "
                    "unless --out is given")
    ap.add_argument("--out", default=None)
    # child / worker
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--images", dest="n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if args.stage:
        Path(args.child_out).write_text(json.dumps(child(args)))
        return 0
    import common
    if args.quick:
        args.facts, args.omega_samples = 200, 32
    if args.train_steps is None:
        args.train_steps = 3 if args.quick else 40
    if args.train_steps < 0:
        print(f"--train-steps must be >= 0 (0: the whole epoch), got {args.train_steps}", file=sys.stderr)
        return 2
    args.sizes = args.sizes or ("300,600" if args.quick else "10000,50000,200000")
    sizes = [int(x) for x in args.sizes.split(",")]
    stages = [s for s in args.stages.split(",") if s]
    bad = sorted(set(stages) - set(STAGES))
    if bad or "build" not in stages:
        print(f"--stages: {bad or 'build missing'}; valid: {','.join(STAGES)} (build first)", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else (None if args.quick else common.RESULTS / "scale.json")
    info = common.machine_info()
    print(f"CPU: {info['cpu']}; load {info['loadavg_1_5_15']}; N = {sizes}, F = {args.facts:,}, "
          f"{args.image_size} px", flush=True)
    base = Path(args.tmp) if args.tmp else Path(tempfile.mkdtemp(prefix="factmas_scale_"))
    base.mkdir(parents=True, exist_ok=True)
    rows, equal = [], {}
    t_all = time.perf_counter()
    try:
        for n in sizes:
            work = base / f"n{n}"
            work.mkdir(exist_ok=True)
            data = work / "scale.h5"
            for stage in stages:
                row = run_stage(args, stage, n, data, work)
                rows.append(row)
                print(f"N = {n:>7,}  {stage:5s}  peak RSS {row['peak_rss_mib']:7.0f} MiB (ready "
                      f"{row['rss_ready_mib']:5.0f})  {row['per_s']:9.1f} {row['unit']}/s  "
                      f"({row['seconds']:.1f} s; load {row['loadavg_before'][0]:.2f} → "
                      f"{row['loadavg_after'][0]:.2f})", flush=True)
            if "eval" in stages and "eval2" in stages:
                a = json.loads((work / f"eval_{n}.json.metrics.json").read_text())
                b = json.loads((work / f"eval2_{n}.json.metrics.json").read_text())
                equal[n] = same_metrics(a, b)
                print(f"N = {n:>7,}  metrics of 2 processes equal to 1 process: {equal[n][0]} "
                      f"(largest difference {equal[n][1]:.3g})", flush=True)
            disk = sum(f.stat().st_size for f in work.rglob("*") if f.is_file()) / 2 ** 20
            rows[-1]["disk_mib_at_n"] = disk
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
    finally:
        if not args.keep and not args.tmp:
            shutil.rmtree(base, ignore_errors=True)
    lo, hi = min(sizes), max(sizes)
    growth = {}
    for stage in stages:
        a = next(r for r in rows if r["stage"] == stage and r["n"] == lo)
        b = next(r for r in rows if r["stage"] == stage and r["n"] == hi)
        growth[stage] = {"peak_rss_ratio": b["peak_rss"] / a["peak_rss"],
                         "peak_rss_mib": [a["peak_rss_mib"], b["peak_rss_mib"]],
                         "throughput_ratio": (b["per_s"] / a["per_s"]) if a["per_s"] else None}
    print(f"\npeak RSS at N = {hi:,} ÷ at N = {lo:,} (target ≤ 1.2 ×):")
    common.print_table([{"stage": s, **g, "lo": g["peak_rss_mib"][0], "hi": g["peak_rss_mib"][1]}
                        for s, g in growth.items()],
                       [("stage", "stage", ""), ("lo", f"MiB at {lo:,}", ".0f"), ("hi", f"MiB at {hi:,}", ".0f"),
                        ("peak_rss_ratio", "ratio", ".3f"), ("throughput_ratio", "throughput ratio", ".2f")])
    total = time.perf_counter() - t_all
    print(f"total {total:.0f} s; " + common.load_line(info))
    ok = all(v[0] for v in equal.values())
    if out is not None:
        import numpy as np
        import torch
        common.write_results(out, {
            "machine": info, "numpy": np.__version__, "torch": torch.__version__,
            "loadavg_end": [round(x, 2) for x in os.getloadavg()], "total_s": total,
            "settings": {"sizes": sizes, "facts": args.facts, "image_size": args.image_size,
                         "train_steps": args.train_steps, "omega_samples": args.omega_samples,
                         "cache_batch": args.cache_batch,
                         "split": SPLIT, "threads": 1, "model": "efficientnet_lite0, default frozen stages",
                         "method": "mas"},
            "rows": rows, "growth": growth,
            "eval_2proc_equal": {str(k): {"equal": v[0], "max_diff": v[1]} for k, v in equal.items()}})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
