"""Memory per method: peak RSS and extra parameter copies of every method in ``factmas.methods.METHODS``
over a short 2-task run (the comparison of the MAS paper's Fig. 4).

    .venv/bin/python bench/memory.py [--methods finetune mas ewc si ...] [--backbones small_cnn resnet18]
                                     [--data FILE] [--quick] [--out FILE]

Each (method, backbone) runs in a fresh Python process (``--child``), so its peak RSS (VmHWM) is its
own: the trainer of ``factmas train`` (``build_trainer`` + ``ContinualTrainer.run``) trains tasks 1
and 2 of a synthetic dataset (``factmas.data.synthetic``, or ``--data``) for one epoch each, the method's
end-of-task update included, evaluation off (the same for every method). Reported per run:

* peak RSS, and peak RSS above the RSS before training (data, model and libraries loaded);
* extra parameter copies: float elements the method holds (Ω, θ*, a Fisher diagonal, SI's path
  integral, LwF's frozen model, ...) ÷ the model's parameter count — the most held at any step or
  task end (``peak``) and what is kept after the run and saved in checkpoints (``kept``);
* wall seconds of the run.

``--quick`` (smoke test) runs every method one after another in a single child process (peak RSS
then reset between methods with ``common.reset_peak_rss``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import common

SYNTHETIC = {"small_cnn": {"n_images": 600, "batch": 64}, "resnet18_gn": {"n_images": 40, "batch": 16},
             # the default model at its 224-px input, reading the feature cache (built in each child)
             "efficientnet_lite0": {"n_images": 80, "batch": 32}}


def held_tensors(obj, model_ptrs: set, seen: set | None = None, depth: int = 0) -> int:
    """Float elements of the tensors reachable from ``obj``'s attributes (dicts, lists, modules),
    each storage counted once and the model's own parameters left out."""
    seen = set() if seen is None else seen
    if depth > 4:
        return 0
    if isinstance(obj, torch.Tensor):
        key = (obj.untyped_storage().data_ptr(), obj.numel())
        if not obj.is_floating_point() or key in seen or key[0] in model_ptrs:
            return 0
        seen.add(key)
        return obj.numel()
    if isinstance(obj, nn.Module):
        return sum(held_tensors(t, model_ptrs, seen, depth + 1)
                   for t in [*obj.parameters(), *obj.buffers()])
    if isinstance(obj, dict):
        return sum(held_tensors(v, model_ptrs, seen, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(held_tensors(v, model_ptrs, seen, depth + 1) for v in obj)
    if hasattr(obj, "__dict__") and depth == 0:
        return sum(held_tensors(v, model_ptrs, seen, depth + 1) for v in vars(obj).values())
    return 0


def run_method(method_name: str, backbone: str, data, split: str, batch: int, limit: int) -> dict:
    """Train ``limit`` tasks with ``method_name``; returns the figures of this process."""
    from factmas.config import RunConfig
    from factmas.trainer import build_trainer
    from factmas.run.rundir import prepare_run_dir

    out = tempfile.mkdtemp(prefix=f"factmas_mem_{method_name}_")
    cfg = RunConfig(data=data.path, out=out)
    cfg.model.backbone = backbone
    cfg.train.method, cfg.train.split, cfg.train.epochs = method_name, split, 1
    cfg.train.batch_size, cfg.eval.enabled = batch, False
    trainer, stages = build_trainer(cfg, data, torch.device("cpu"), progress=False)
    prepare_run_dir(out, cfg, command="bench/memory.py", data_provenance=data.provenance, overwrite=True)
    model, method = trainer.model, trainer.method
    n_params = sum(p.numel() for p in model.parameters())
    ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    peak = {"elements": 0}

    def track(hook):
        def wrapped(*a, **k):
            result = hook(*a, **k)
            peak["elements"] = max(peak["elements"], held_tensors(method, ptrs))
            return result
        return wrapped

    for name in ("after_step", "on_task_end"):
        setattr(method, name, track(getattr(method, name)))
    common.reset_peak_rss()
    base = common.rss_bytes()
    t0 = time.perf_counter()
    trainer.run(stages, limit=limit)
    seconds = time.perf_counter() - t0
    kept = sum(t.numel() for t in method.state_dict().values() if t.is_floating_point())
    return {"method": method_name, "backbone": backbone, "params": n_params,
            "images": len(data.images), "batch": batch,
            "peak_rss_mib": common.peak_rss_bytes() / common.MiB,
            "peak_above_start_mib": (common.peak_rss_bytes() - base) / common.MiB,
            "start_rss_mib": base / common.MiB, "extra_copies_peak": peak["elements"] / n_params,
            "extra_copies_kept": kept / n_params, "seconds": seconds,
            "stages": len(stages[:limit])}


def child(args) -> int:
    """Run the methods of ``args.methods`` in this process; JSON list on ``args.child_out``."""
    torch.set_num_threads(args.threads)
    data, split = load(args)
    rows = []
    for m in args.methods:
        rows.append(run_method(m, args.backbone, data, split, args.batch, 2))
    Path(args.child_out).write_text(json.dumps(rows))
    return 0


def load(args):
    """(FactData, split) of ``args.data`` or a synthetic 2-task dataset for ``args.backbone``."""
    from factmas.data.dataset import read_dataset
    from factmas.data.synthetic import make_synthetic_dataset
    if args.data:
        data = read_dataset(args.data)
        return data, common.first_split(data)
    path = Path(tempfile.mkdtemp(prefix="factmas_mem_data_")) / "synthetic.h5"
    size = 224 if args.backbone == "efficientnet_lite0" else 64
    make_synthetic_dataset(path, n_images=args.images, image_size=size, num_tasks=2)
    return read_dataset(path), "random2_seed0"


def spawn(methods: list[str], backbone: str, args) -> list[dict]:
    """Run ``methods`` in a fresh child process; returns its rows."""
    out = Path(tempfile.mkdtemp(prefix="factmas_mem_")) / "rows.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--child-out", str(out),
           "--backbone", backbone, "--batch", str(args.batch), "--images", str(args.images),
           "--threads", str(args.threads), "--methods", *methods]
    if args.data:
        cmd += ["--data", args.data]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench/memory.py child for {methods} ({backbone}) failed:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def main(argv=None) -> int:
    from factmas.methods import METHODS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), help="default: all of METHODS")
    ap.add_argument("--backbones", nargs="+", default=["small_cnn", "resnet18_gn"],
                    choices=sorted(SYNTHETIC))
    ap.add_argument("--data", help="HDF5 dataset (default: a synthetic one per backbone)")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--quick", action="store_true", help="one child, tiny data (smoke test)")
    ap.add_argument("--out", default=str(common.RESULTS / "memory.json"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    ap.add_argument("--backbone", default="small_cnn", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=None, help="pairs per step (default per backbone)")
    ap.add_argument("--images", type=int, default=None, help="synthetic images (default per backbone)")
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        ap.error(f"unknown methods {unknown}; valid: {sorted(METHODS)}")
    if args.quick:
        args.threads = 1
    torch.set_num_threads(args.threads)
    info = common.machine_info()
    t_start = time.perf_counter()
    rows = []
    asked = {"n_images": args.images, "batch": args.batch}
    for backbone in (["small_cnn"] if args.quick else args.backbones):
        sizes = {"n_images": 60, "batch": 8} if args.quick else SYNTHETIC[backbone]
        args.images = asked["n_images"] or sizes["n_images"]          # each backbone its own size
        args.batch = asked["batch"] or sizes["batch"]
        groups = [args.methods] if args.quick else [[m] for m in args.methods]
        for group in groups:
            got = spawn(group, backbone, args)
            rows += got
            for r in got:
                print(f"{backbone} {r['method']}: peak RSS {r['peak_rss_mib']:.0f} MiB, "
                      f"{r['extra_copies_peak']:.2f} extra copies", flush=True)
        base = next((r for r in rows if r["backbone"] == backbone and r["method"] == "finetune"), None)
        for r in rows:
            if r["backbone"] == backbone and base is not None:
                r["peak_above_finetune_mib"] = r["peak_rss_mib"] - base["peak_rss_mib"]
    print(f"\nMemory per method, 2 tasks × 1 epoch, {'data ' + args.data if args.data else 'synthetic data'}"
          f", evaluation off, {'one process for all methods (--quick)' if args.quick else 'one process each'}")
    common.print_table(rows, [
        ("backbone", "backbone", ""), ("method", "method", ""), ("params", "params", ",d"),
        ("peak_rss_mib", "peak RSS MiB", ".0f"), ("peak_above_start_mib", "above start", ".0f"),
        ("peak_above_finetune_mib", "vs finetune", "+.0f"), ("extra_copies_peak", "copies peak", ".2f"),
        ("extra_copies_kept", "copies kept", ".2f"), ("seconds", "seconds", ".1f")])
    print(f"wall time of this benchmark: {time.perf_counter() - t_start:.0f} s")
    print(common.load_line(info))
    common.write_results(args.out, {
        "benchmark": "memory", "machine": info, "loadavg_end": list(os.getloadavg()),
        "data": args.data or "synthetic", "synthetic_sizes": SYNTHETIC, "asked_sizes": asked,
        "epochs": 1, "tasks": 2,
        "quick": args.quick, "threads": args.threads, "results": rows,
        "wall_s": time.perf_counter() - t_start})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
