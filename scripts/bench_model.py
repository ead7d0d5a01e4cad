"""Print forward+backward throughput (images/s) and parameter counts of the factmas models.

    .venv/bin/python scripts/bench_model.py [--backbone small_cnn resnet18] [--threads 1 2]
        [--batch 64] [--size 64] [--steps 10]

One step = image branch and fact branch forward on a batch, the training loss (``factmas.space.loss``),
backward. Figures depend on the machine and on what else runs on it; this prints them, tests do not
time anything.
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from factmas.config import LossConfig, ModelConfig
from factmas.space.loss import fact_loss
from factmas.model import build_model


def bench(backbone: str, threads: int, batch: int, size: int, steps: int,
          vocab: int = 300) -> tuple[float, float]:
    """(images per wall-clock second, images per CPU second of this process) of forward+backward of
    the whole model plus the loss, after 2 warm-up steps. On a shared machine the CPU-second figure
    at 1 thread approximates the wall-clock speed the process would have alone."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=backbone), vocab)
    x = torch.randn(batch, 3, size, size)
    tokens = torch.randint(1, vocab, (batch, 3, 2))
    order = torch.randint(1, 4, (batch,))
    positive = torch.eye(batch, dtype=torch.bool)
    for i in range(steps + 2):
        if i == 2:
            t0, c0 = time.perf_counter(), time.process_time()
        model.zero_grad(set_to_none=True)
        phi, psi = model(x, tokens, order)
        loss, _ = fact_loss(phi, psi, order, positive, LossConfig())
        loss.backward()
    return (steps * batch / (time.perf_counter() - t0), steps * batch / (time.process_time() - c0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", nargs="+", default=["small_cnn", "resnet18"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    a = ap.parse_args()
    for backbone in a.backbone:
        model = build_model(ModelConfig(backbone=backbone), 300)
        n_img = sum(p.numel() for p in model.image_branch.parameters())
        n_fact = sum(p.numel() for p in model.fact_branch.parameters())
        print(f"{backbone}: parameters image branch {n_img:,}, fact branch {n_fact:,} (vocab 300)")
        for t in a.threads:
            ips, ipc = bench(backbone, t, a.batch, a.size, a.steps)
            print(f"  {t} thread(s): {ips:7.1f} images/s fwd+bwd (batch {a.batch}, {a.size}x{a.size}); "
                  f"{ipc:7.1f} images per CPU-second")
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (other processes slow it down)")


if __name__ == "__main__":
    main()
