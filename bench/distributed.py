"""Scaling of training and of MAS's Ω over processes: 1 vs N processes (torchrun, gloo, 1 thread each).

    .venv/bin/python bench/distributed.py [--data data/flickr8k.h5] [--nproc 2] [--steps 30]
                                          [--omega-images 384] [--repeats 3] [--quick] [--out FILE]

Each repeat launches ``torchrun --standalone --nproc-per-node W bench/distributed.py --worker`` for
W = 1 and W = ``--nproc`` in turn (one process per core, ``threads`` 1 each). A worker builds the run
of the default configuration (``RunConfig()``: the README's model, loss and batch 64; the feature cache
of data/flickr8k.h5 when present, else a synthetic set with the small CNN), then times, between barriers:

* **training**: ``--steps`` steps of task 1 (``factmas.trainer.loop.train_step`` on the global batch of
  64, DDP when W > 1), after 3 warm-up steps → training images (pairs) per second, all processes
  together;
* **Ω**: exact MAS Ω (``factmas.methods.mas.mas_importance``, every rank its share, sums all-reduced) of
  ``--omega-images`` training images of task 1, then of all the task's facts → Ω images/s, facts/s.

Reported per repeat and as medians: the rates of 1 and W processes, speed-up = rate_W / rate_1 and
scaling efficiency = speed-up / W, each ratio taken within one repeat (same load). On a shared CPU
with fewer idle cores than processes the wall-clock efficiency is bounded by the idle cores (see
``loadavg_1_5_15`` in the result file); the CPU time per image (``time.process_time`` summed over the
processes, communication threads included) does not depend on how many cores are idle, and its
ratio 1 process / W processes is the *work* efficiency: 1 when W processes do no more work in all
than one (the gathers, all-reduces and duplicated batch building are the difference).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common


def worker(args: argparse.Namespace) -> None:
    """One process of a launch: time training steps and Ω; rank 0 writes the figures to args.result."""
    import numpy as np
    import torch

    from factmas import distributed
    from factmas.config import ModelConfig, RunConfig
    from factmas.methods.mas import mas_importance
    from factmas.trainer import build_parts, build_trainer, shared_inputs
    from factmas.trainer.batches import make_rng
    from factmas.trainer.loop import train_step

    distributed.start_from_env("cpu")
    data, desc = common.load_bench_data(args.data, synthetic=args.data is None and not
                                        common.FLICKR8K_H5.is_file(), synthetic_images=600)
    cfg = RunConfig()
    cfg.train.threads, cfg.train.device = 1, "cpu"
    cfg.train.split = common.first_split(data)
    cfg.train.options = {"mas": {"max_samples": args.omega_images}}     # the method is MAS (default)
    if data.path and "synthetic" in desc:
        cfg.model = ModelConfig(backbone="small_cnn", pretrained=False)
    cfg.eval.enabled = False
    cfg.out = tempfile.mkdtemp(prefix="factmas_bench_dist_")
    parts = build_parts(cfg, data)
    inputs = shared_inputs(cfg, data, torch.device("cpu"), parts[0], False)   # rank 0 reads the cache first
    trainer, stream = build_trainer(cfg, data, torch.device("cpu"), False, parts, inputs)
    model, method = trainer.model, trainer.method
    stage = stream[0]                                          # task 1's experience
    pairs = stage.pairs["train"]
    trainer.batcher.candidates = trainer.step_batcher.candidates = stage.facts
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    def endless():                                             # epoch after epoch, as training does
        for epoch in itertools.count():
            yield from trainer.step_batcher.pair_batches(pairs, cfg.train.batch_size, make_rng(0, 0, epoch))
    batches = endless()
    model.train()
    for _ in range(3):
        train_step(model, method, optimizer, next(batches), cfg, trainer.forward)
    distributed.barrier()
    t0, c0, n = time.perf_counter(), time.process_time(), 0
    for _ in range(args.steps):
        batch = next(batches)
        train_step(model, method, optimizer, batch, cfg, trainer.forward)
        n += len(batch["fact_idx"])
    train_cpu = time.process_time() - c0
    distributed.barrier()
    train_s = time.perf_counter() - t0
    model.eval()
    ctx = trainer.context(stage, {"images": 0, "facts": 0, "pairs": 0})
    distributed.barrier()
    t0, c0 = time.perf_counter(), time.process_time()
    mas_importance(model, ctx.image_batches("train"), None, max_samples=args.omega_images)
    omega_img_cpu = time.process_time() - c0
    distributed.barrier()
    omega_img_s = time.perf_counter() - t0
    n_img = min(args.omega_images, len(np.unique(pairs[:, 0])))
    t0 = time.perf_counter()
    mas_importance(model, None, ctx.fact_batches(), max_samples=args.omega_images)
    distributed.barrier()
    omega_fact_s = time.perf_counter() - t0
    n_fact = min(args.omega_images, len(stage.facts))
    cpu, _ = distributed.reduce_sums({"cpu": torch.tensor([train_cpu, omega_img_cpu], dtype=torch.float64)}, 0)
    if distributed.is_main():
        Path(args.result).write_text(json.dumps({
            "world_size": distributed.size(), "data": desc, "backbone": cfg.model.backbone,
            "global_batch": cfg.train.batch_size, "steps": args.steps,
            "train_images_per_s": n / train_s, "omega_images": n_img,
            "omega_images_per_s": n_img / omega_img_s, "omega_facts": n_fact,
            "omega_facts_per_s": n_fact / omega_fact_s,
            "train_cpu_ms_per_image": 1000 * float(cpu["cpu"][0]) / n,
            "omega_cpu_ms_per_image": 1000 * float(cpu["cpu"][1]) / n_img}))
    distributed.stop()


def launch(world: int, args: argparse.Namespace) -> dict:
    """One torchrun launch of ``world`` processes; its figures."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
               __file__, "--worker", "--result", str(result), "--steps", str(args.steps),
               "--omega-images", str(args.omega_images)] + (["--data", args.data] if args.data else [])
        env = dict(os.environ, OMP_NUM_THREADS="1")
        env["PYTHONPATH"] = os.pathsep.join([str(common.REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        if p.returncode != 0:
            raise SystemExit(f"bench/distributed.py: launch of {world} processes failed:\n{p.stderr[-3000:]}")
        return json.loads(result.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="HDF5 dataset (default data/flickr8k.h5 if present, else synthetic)")
    p.add_argument("--nproc", type=int, default=2, help="processes of the parallel launches (default 2)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--omega-images", type=int, default=384)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="smallest sizes (smoke test)")
    p.add_argument("--out", default=str(common.RESULTS / "distributed.json"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if args.quick:
        args.steps, args.omega_images, args.repeats = 3, 32, 1
    info = common.machine_info()
    rows = []
    for r in range(args.repeats):
        one, many = launch(1, args), launch(args.nproc, args)
        row = {"repeat": r}
        for key in ("train_images_per_s", "omega_images_per_s", "omega_facts_per_s"):
            row[f"{key}_1"], row[f"{key}_{args.nproc}"] = one[key], many[key]
            row[f"{key}_speedup"] = many[key] / one[key]
            row[f"{key}_efficiency"] = many[key] / one[key] / args.nproc
        for key in ("train_cpu_ms_per_image", "omega_cpu_ms_per_image"):
            row[f"{key}_1"], row[f"{key}_{args.nproc}"] = one[key], many[key]
            row[f"{key}_efficiency"] = one[key] / many[key]     # 1: no extra work on W processes
        rows.append(row)
        print(f"repeat {r + 1}/{args.repeats}: training {one['train_images_per_s']:.1f} → "
              f"{many['train_images_per_s']:.1f} images/s, Ω {one['omega_images_per_s']:.1f} → "
              f"{many['omega_images_per_s']:.1f} images/s", flush=True)
    W = args.nproc
    median = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "repeat"}
    table = [{"what": name, "one": median[f"{key}_1"], "many": median[f"{key}_{W}"],
              "speedup": median[f"{key}_speedup"], "eff": median[f"{key}_efficiency"]}
             for name, key in (("training images/s", "train_images_per_s"),
                               ("Ω images/s", "omega_images_per_s"), ("Ω facts/s", "omega_facts_per_s"))]
    table += [{"what": name, "one": median[f"{key}_1"], "many": median[f"{key}_{W}"],
               "eff": median[f"{key}_efficiency"]}
              for name, key in (("training CPU ms/image", "train_cpu_ms_per_image"),
                                ("Ω CPU ms/image", "omega_cpu_ms_per_image"))]
    print(f"\n{one['data']}, {one['backbone']}, global batch {one['global_batch']}, 1 thread per process; "
          f"medians of {args.repeats} repeats")
    common.print_table(table, [("what", "", ""), ("one", "1 process", ".1f"), ("many", f"{W} processes", ".1f"),
                               ("speedup", "speed-up", ".2f"), ("eff", "efficiency", ".2f")])
    print(common.load_line(info))
    common.write_results(args.out, {"machine": info, "loadavg_end": [round(x, 2) for x in os.getloadavg()],
                                    "nproc": W, "settings": {k: getattr(args, k) for k in
                                                             ("data", "steps", "omega_images", "repeats")},
                                    "setup": {k: one[k] for k in ("data", "backbone", "global_batch")},
                                    "repeats": rows, "median": median})


if __name__ == "__main__":
    main()
