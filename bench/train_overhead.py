"""Training overhead: images/s of factmas's training step against a minimal hand-written PyTorch loop.

    .venv/bin/python bench/train_overhead.py [--data data/flickr8k.h5] [--steps 12] [--batch 64]
                                             [--repeats 9] [--threads 2] [--quick] [--out FILE]
    .venv/bin/python bench/train_overhead.py --backbone efficientnet_lite0 --threads 1 \
        --out bench/results/train_overhead_lite0.json     # the default model on its feature cache

Both loops train the same model (``build_model(ModelConfig())``, the same initial weights), on the same
pairs of task 0 (data/flickr8k.h5 if present, else synthetic 64×64 images), with the same batch size,
loss (``factmas.space.loss.fact_loss``) and Adam settings, for ``--steps`` steps:

* **plain**: index the uint8 images, normalize them (contiguous NCHW float32, as ``preprocess`` and
  torchvision's ``ToTensor`` give), look up the tokens, positives = same fact, forward both
  branches, loss, ``zero_grad``/``backward``/``step``: what one writes by hand.
* **plain, channels_last**: the same without making the images contiguous, so they stay in the
  NHWC layout of the uint8 array; oneDNN convolutions then take another path (informative: it is
  a memory-format choice, faster or slower depending on the model, not an overhead).
* **factmas finetune**: ``factmas.trainer.batches.Batcher.pair_batches`` (preprocess, dataset-wide
  positive matrix) + ``factmas.trainer.loop.train_step`` (method hooks, penalty, loss parts as floats):
  exactly what ``factmas train`` runs per step.
* **factmas MAS**: the same with MAS holding Ω and θ* (as from task 2 on), so the penalty
  λ Σ Ω (θ − θ*)² and its gradient are in every step.

The loops alternate within each repeat; the ratio factmas / plain is taken repeat by repeat (same CPU
load) and its median is reported against the target ≥ 0.9. The same ratio of process CPU
seconds (``× plain (CPU s)``) is reported beside it: at 1 thread it moves less with other processes'
load than wall time does. Achieved GFLOP/s = FLOPs of one step
(``bench/flops.py``'s ``count_flops``: convolutions, right for depthwise ones, and matrix products
of forward and backward) × steps / seconds, against the measured rate of ``torch.mm`` on 2048² float32 matrices.

``--backbone efficientnet_lite0`` (the default model: 6 frozen stages, feature cache): both loops read
the frozen stages' output from the feature cache (``factmas.model.features.load_or_build`` of a synthetic
224-px dataset of ``--lite-images`` images, or of ``--data``), each image or its mirror image drawn
with probability 1/2 as the trainer does; the plain loop indexes the float16 cache tensor itself,
factmas goes through ``CachedInputs`` and ``Batcher.pair_batches(flip=True)``. No channels_last
variant (the input is a feature map). FLOPs are counted by ``bench/flops.py`` (right for depthwise
convolutions; torch's own count is recorded beside it).
"""
from __future__ import annotations

import argparse
import copy
import itertools
import os
import statistics
import time

import numpy as np
import torch

import common
from factmas.machine.cpu_memory import keep_freed_memory
from factmas.config import ModelConfig, RunConfig
from factmas.space.loss import fact_loss
from factmas.methods import make_method
from factmas.model import IMAGENET_MEAN, IMAGENET_STD, build_model
from factmas.trainer.batches import Batcher
from factmas.trainer.loop import train_step

TARGET = 0.9


class PlainLoop:
    """The hand-written loop: tensors prepared once, then index → normalize → forward → step.

    ``channels_last``: keep the images in the NHWC memory layout that indexing the uint8
    [N, H, W, 3] array and permuting gives (False: make them contiguous NCHW, as torchvision's
    ``ToTensor`` and ``factmas.model.preprocess`` do).
    """

    def __init__(self, data, cfg: RunConfig, channels_last: bool = False, features=None) -> None:
        self.channels_last = channels_last
        # the feature cache float16 [N, 2, C, h, w] (a frozen stem's output), or None: pixels
        self.features = None if features is None else torch.from_numpy(features)
        self.flips = np.random.default_rng(2)
        self.images = torch.from_numpy(np.asarray(data.images))            # uint8 [N, H, W, 3]
        self.tokens = torch.from_numpy(data.tokens.astype(np.int64))
        self.order = torch.from_numpy(data.order.astype(np.int64))
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self.cfg = cfg

    def batch(self, pairs: np.ndarray):
        img = torch.from_numpy(pairs[:, 0].astype(np.int64))
        fact = torch.from_numpy(pairs[:, 1].astype(np.int64))
        if self.features is not None:
            side = torch.from_numpy(self.flips.integers(0, 2, len(pairs)))
            x = self.features[img, side].float()
            return x, self.tokens[fact], self.order[fact], fact[:, None] == fact[None, :]
        x = (self.images[img].permute(0, 3, 1, 2).float().div_(255) - self.mean) / self.std
        x = x if self.channels_last else x.contiguous()
        return x, self.tokens[fact], self.order[fact], fact[:, None] == fact[None, :]

    def step(self, model, opt, pairs: np.ndarray) -> None:
        x, tok, order, positive = self.batch(pairs)
        loss, _ = fact_loss(model.image_branch(x), model.fact_branch(tok, order), order, positive,
                            self.cfg.loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def step_flops(plain: PlainLoop, model, opt, pairs: np.ndarray) -> tuple[int, int]:
    """FLOPs of one training step (forward + backward): (``flops.count_flops``, right for grouped
    convolutions; torch's FlopCounterMode, which counts a depthwise weight gradient ×groups)."""
    import flops
    fixed, _, _ = flops.count_flops(lambda: plain.step(model, opt, pairs))
    return fixed, flops.torch_count_flops(lambda: plain.step(model, opt, pairs))


def mas_with_state(model, reg_lambda: float):
    """A MAS method holding Ω (random, ≥ 0) and θ* (the weights slightly moved), as after task 1."""
    g = torch.Generator().manual_seed(1)
    method = make_method("mas", reg_lambda)
    state = {}
    for n, p in model.named_parameters():
        state[f"omega.{n}"] = torch.rand(p.shape, generator=g)
        state[f"anchor.{n}"] = p.detach() + 0.01 * torch.randn(p.shape, generator=g)
    method.load_state_dict(state)
    return method


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="HDF5 dataset (default: data/flickr8k.h5 if present, else synthetic)")
    ap.add_argument("--steps", type=int, default=12, help="training steps per timed run")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--mm-size", type=int, default=2048, help="n of the n×n torch.mm reference")
    ap.add_argument("--backbone", choices=["small_cnn", "efficientnet_lite0"], default="small_cnn",
                    help="efficientnet_lite0: the default model on its feature cache")
    ap.add_argument("--lite-images", type=int, default=300, help="synthetic 224-px images (Lite0)")
    ap.add_argument("--quick", action="store_true", help="smallest sizes (smoke test)")
    ap.add_argument("--out", default=str(common.RESULTS / "train_overhead.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.repeats, args.batch, args.mm_size = 1, 1, 8, 256
        args.threads = 1
    torch.set_num_threads(args.threads)
    info = common.machine_info()
    # as the factmas command does before any work (factmas/machine/cpu_memory.py), so the figures are the
    # ones training and Ω get; bench/cpu_memory.py measures the difference
    info["keep_freed_memory"] = keep_freed_memory()
    lite = args.backbone == "efficientnet_lite0"
    data, desc = common.backbone_bench_data(args.data, lite, args.quick, args.lite_images)
    cfg = RunConfig()
    cfg.model.backbone = args.backbone
    cfg.train.split = common.first_split(data, cfg.train.split)
    tc = cfg.train
    task_pairs = data.task_pairs(tc.split, 0, "train")
    need = args.steps * args.batch
    rng = np.random.default_rng(0)
    run_pairs = np.resize(task_pairs[rng.permutation(len(task_pairs))], (need, 2))

    torch.manual_seed(tc.seed)
    model_f = build_model(cfg.model, len(data.vocab))
    model_p = copy.deepcopy(model_f)
    init = copy.deepcopy(model_f.state_dict())
    feats = None
    if lite:
        from factmas.model.features import CachedInputs, load_or_build
        feats = load_or_build(model_f, data, progress=False)
        batcher = Batcher(data, inputs=CachedInputs(feats))
    else:
        batcher = Batcher(data)
    plain = PlainLoop(data, cfg, features=feats)
    plain_cl = None if lite else PlainLoop(data, cfg, channels_last=True)
    methods = {"factmas finetune": make_method("finetune"), "factmas MAS": mas_with_state(model_f, 1.0)}

    def run_factmas(method) -> float:
        model_f.load_state_dict(init)
        model_f.train()
        opt = torch.optim.Adam(model_f.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        order = np.random.default_rng(1)
        t0, c0 = time.perf_counter(), time.process_time()
        for batch in itertools.islice(batcher.pair_batches(run_pairs, args.batch, order, flip=lite),
                                      args.steps):
            train_step(model_f, method, opt, batch, cfg)
        return time.perf_counter() - t0, time.process_time() - c0

    def run_plain(loop: PlainLoop) -> float:
        model_p.load_state_dict(init)
        model_p.train()
        opt = torch.optim.Adam(model_p.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        perm = np.random.default_rng(1).permutation(len(run_pairs))
        t0, c0 = time.perf_counter(), time.process_time()
        for lo in range(0, args.steps * args.batch, args.batch):
            loop.step(model_p, opt, run_pairs[perm[lo:lo + args.batch]])
        return time.perf_counter() - t0, time.process_time() - c0

    runners = {"plain PyTorch": lambda: run_plain(plain),
               **({} if plain_cl is None else {"plain, channels_last": lambda: run_plain(plain_cl)}),
               **{k: (lambda m=m: run_factmas(m)) for k, m in methods.items()}}
    for fn in runners.values():                                   # warm-up (allocator, kernels)
        fn()
    mm = [common.matmul_gflops(args.mm_size, repeats=3)]
    seconds = {k: [] for k in runners}
    cpu = {k: [] for k in runners}             # process CPU seconds: at 1 thread, less load-sensitive
    names = list(runners)
    for r in range(args.repeats):
        for k in names[r % len(names):] + names[:r % len(names)]:  # rotate who goes first
            wall, used = runners[k]()
            seconds[k].append(wall)
            cpu[k].append(used)
        print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(
            f"{k} {need / seconds[k][-1]:.0f} img/s" for k in names), flush=True)
    mm.append(common.matmul_gflops(args.mm_size, repeats=3))
    opt = torch.optim.Adam(model_p.parameters(), lr=tc.lr)
    flops, torch_flops = step_flops(plain, model_p, opt, run_pairs[:args.batch])
    peak_mm = statistics.median(m["gflops"] for m in mm)

    rows = []
    for k in names:
        med = statistics.median(seconds[k])
        ratios = [p / s for s, p in zip(seconds[k], seconds["plain PyTorch"])]
        cpu_ratios = [p / s for s, p in zip(cpu[k], cpu["plain PyTorch"])]
        rows.append({"loop": k, "images_per_s": need / med, "ms_per_step": 1e3 * med / args.steps,
                     "vs_plain": statistics.median(ratios), "ratios": ratios, "seconds": seconds[k],
                     "images_per_cpu_s": need / statistics.median(cpu[k]),
                     "vs_plain_cpu": statistics.median(cpu_ratios), "cpu_ratios": cpu_ratios,
                     "cpu_seconds": cpu[k],
                     "gflops": flops * args.steps / med / 1e9,
                     "fraction_of_matmul": flops * args.steps / med / 1e9 / peak_mm})
        if k.startswith("factmas"):
            rows[-1]["target_met"] = rows[-1]["vs_plain"] >= TARGET
    print(f"\nTraining step, {desc}, batch {args.batch}, {args.steps} steps per run, "
          f"median of {args.repeats}; target factmas ≥ {TARGET} × plain")
    common.print_table(rows, [("loop", "loop", ""), ("images_per_s", "images/s", ".0f"),
                              ("ms_per_step", "ms/step", ".1f"), ("vs_plain", "× plain", ".3f"),
                              ("vs_plain_cpu", "× plain (CPU s)", ".3f"),
                              ("gflops", "GFLOP/s", ".2f"), ("fraction_of_matmul", "of mm", ".1%")])
    print(f"step: {flops / 1e9:.3f} GFLOP (forward + backward; torch's FlopCounterMode: "
          f"{torch_flops / 1e9:.3f}); torch.mm {args.mm_size}² float32: "
          f"{peak_mm:.1f} GFLOP/s (median of {[round(m['gflops'], 1) for m in mm]})")
    print(common.load_line(info))
    common.write_results(args.out, {
        "benchmark": "train_overhead", "machine": info, "loadavg_end": list(os.getloadavg()),
        "data": desc, "backbone": args.backbone, "batch": args.batch, "steps": args.steps, "repeats": args.repeats,
        "threads": args.threads, "quick": args.quick, "target_vs_plain": TARGET,
        "step_gflop": flops / 1e9, "step_gflop_torch_flopcounter": torch_flops / 1e9,
        "gflop_per_image": flops / 1e9 / args.batch, "matmul": mm, "matmul_gflops": peak_mm, "results": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
