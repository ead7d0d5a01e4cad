"""Exactness of the data-parallel step and of Ω at one θ: 1 process against W (torchrun, gloo).

    .venv/bin/python bench/distributed_check.py --checkpoint RUN/checkpoints/task0.pt
                                                [--data data/flickr8k.h5] [--nproc 2] [--omega-images 64]

Both launches load the same checkpoint into the default model (``RunConfig()``, 1 thread per process)
and compute, on task 1: the loss and the gradient of one training step on the first global batch of 64
pairs (``DistributedForward`` + DDP when W > 1), and the exact MAS Ω of the first ``--omega-images``
images and facts (each process its share, sums all-reduced). Printed and written to
``bench/results/distributed_check.json``: the relative ℓ2 difference ‖x_W − x_1‖ / ‖x_1‖ of the
gradient and of Ω, over all parameters, and the largest per parameter. Float rounding (sums in another
order) is about 1e-7 in float32; a wrong gather, share or reduction would be of order 1.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import common


def worker(args: argparse.Namespace) -> None:
    import torch

    from factmas import distributed
    from factmas.config import RunConfig
    from factmas.data.dataset import read_dataset
    from factmas.methods.mas import mas_importance
    from factmas.trainer import build_parts, build_trainer, shared_inputs
    from factmas.trainer.batches import make_rng

    distributed.start_from_env("cpu")
    data = read_dataset(args.data)
    cfg = RunConfig()
    cfg.train.threads, cfg.train.device, cfg.eval.enabled = 1, "cpu", False
    cfg.train.options = {"mas": {"max_samples": args.omega_images}}     # the method is MAS (default)
    cfg.out = tempfile.mkdtemp(prefix="factmas_check_")
    parts = build_parts(cfg, data)
    inputs = shared_inputs(cfg, data, torch.device("cpu"), parts[0], False)
    trainer, stream = build_trainer(cfg, data, torch.device("cpu"), False, parts, inputs)
    model = trainer.model
    model.load_state_dict(torch.load(args.checkpoint, weights_only=True)["model"])
    stage = stream[0]
    model.eval()
    ctx = trainer.context(stage, {"images": 0, "facts": 0, "pairs": 0})
    omega = mas_importance(model, ctx.image_batches("train"), ctx.fact_batches(), args.omega_images)
    trainer.batcher.candidates = trainer.step_batcher.candidates = stage.facts
    batch = next(trainer.step_batcher.pair_batches(stage.pairs["train"], cfg.train.batch_size,
                                                   make_rng(0, 0, 0), True))
    model.train()
    model.zero_grad()
    loss, _, _ = trainer.forward(model, batch, cfg)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    if distributed.is_main():
        torch.save({"omega": omega, "grads": grads, "loss": loss.detach()}, args.result)
    distributed.stop()


def launch(world: int, args: argparse.Namespace, out: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
           __file__, "--worker", "--result", str(out), "--checkpoint", args.checkpoint,
           "--data", args.data, "--omega-images", str(args.omega_images)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(common.REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        raise SystemExit(f"bench/distributed_check.py: {world} processes failed:\n{p.stderr[-3000:]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a task checkpoint of a run of the default model")
    p.add_argument("--data", default=str(common.FLICKR8K_H5))
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--omega-images", type=int, default=64)
    p.add_argument("--out", default=str(common.RESULTS / "distributed_check.json"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    import torch
    info = common.machine_info()
    with tempfile.TemporaryDirectory() as tmp:
        launch(1, args, Path(tmp) / "one.pt")
        launch(args.nproc, args, Path(tmp) / "many.pt")
        one = torch.load(Path(tmp) / "one.pt", weights_only=True)
        many = torch.load(Path(tmp) / "many.pt", weights_only=True)

    def rel(a: dict, b: dict) -> tuple[float, float, str]:
        diff = torch.cat([(a[k].double() - b[k].double()).flatten() for k in a])
        ref = torch.cat([a[k].double().flatten() for k in a])
        worst = max((float((a[k].double() - b[k].double()).norm() / (a[k].double().norm() or 1)), k) for k in a)
        return float(diff.norm() / ref.norm()), worst[0], worst[1]

    out = {"loss_1": float(one["loss"]), f"loss_{args.nproc}": float(many["loss"])}
    for name in ("grads", "omega"):
        total, worst, where = rel(one[name], many[name])
        out[name] = {"relative_l2": total, "worst_parameter_relative_l2": worst, "worst_parameter": where}
        print(f"{name}: ‖Δ‖/‖x‖ {total:.2e} over all parameters; worst parameter {where} {worst:.2e}")
    print(f"loss: {out['loss_1']:.7f} (1 process), {out[f'loss_{args.nproc}']:.7f} ({args.nproc} processes)")
    print(common.load_line(info))
    common.write_results(args.out, {"machine": info, "settings": vars(args) | {"worker": None},
                                    "nproc": args.nproc, **out})


if __name__ == "__main__":
    main()
