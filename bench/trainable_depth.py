"""Trainable depth (issue 27): images/s of one training step for EfficientNet-Lite0 with
``model.freeze_stages`` = 6, 5, 4, 0 at 224 and 128 px, and what the feature cache costs.

    .venv/bin/python bench/trainable_depth.py [--frozen 6,5,4,0] [--sizes 224,128] [--batch 16]
        [--steps 4] [--threads 1] [--quick] [--out bench/results/trainable_depth.json]

``freeze_stages`` k freezes the stem convolution and the first k of Lite0's 7 block stages (read from
the feature cache, ``factmas.model.features``); stages k+1..6 and the forked heads (stage 7, head
convolution, Linear) train. k = 0 trains all but the stem convolution: the end-to-end regime of
Lifelong Fact Learning (VGG-16 end to end) as near as this backbone gets; 6 is the default.

Per (input size, k): the model is ``build_model(ModelConfig(freeze_stages=k))`` (ImageNet weights,
frozen BatchNorm); the input of a step is the frozen stem's output for ``--batch`` random images, as
the trainer reads it from the cache (the stem's own cost is paid once per image, when the cache is
built: ``stem images/s``, one timed call after a warm-up, torch eager: the cache's ONNX Runtime
engine is about 2x faster, ``bench/cache_speed.py``). A step is what the trainer does: the image branch forward, the fact branch
on the batch's facts and on ``--candidates`` task facts (L_all of the default loss), ``fact_loss``
with the default ``LossConfig``, backward, Adam. Reported: median seconds per step over ``--steps``
timed steps after one warm-up step, images/s = batch / that, trainable parameters, and the cache's
size (float16, image + mirror image) per image and for Flickr8k's 7,889 images.

Times are from a 2-core CPU shared with other jobs: the load average is recorded before and after;
read ratios between depths in one run, not absolute figures across runs.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import common
from factmas.config import LossConfig, ModelConfig
from factmas.model import build_model, preprocess
from factmas.space.loss import fact_loss

FLICKR8K_IMAGES = 7889


def _facts(rng: np.random.Generator, n: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.as_tensor(rng.integers(1, 4, n))
    tokens = torch.zeros(n, 3, 4, dtype=torch.long)
    for s in range(3):
        tokens[:, s, 0] = torch.as_tensor(rng.integers(1, vocab, n)) * (order > s)
    return tokens, order


def measure(k: int, size: int, batch: int, steps: int, candidates: int, vocab: int = 234) -> dict:
    """One (frozen stages, input size) cell; see the module docstring."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = build_model(ModelConfig(freeze_stages=k, stem_engine="torch"), vocab)
    stem, branch = model.image_stem.eval(), model.image_branch
    pixels = preprocess(torch.as_tensor(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)))
    with torch.no_grad():
        feats = stem(pixels).float()                         # warm-up, then one timed call
        t0 = time.perf_counter()
        stem(pixels)
        stem_s = time.perf_counter() - t0
    tokens, order = _facts(rng, batch, vocab)
    c_tokens, c_order = _facts(rng, candidates, vocab)
    own = torch.as_tensor(rng.integers(0, candidates, batch))
    positive = torch.eye(batch, dtype=torch.bool)
    c_positive = torch.zeros(batch, candidates, dtype=torch.bool)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=3e-4)
    cfg = LossConfig()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        phi = branch(feats)
        psi = model.fact_branch(tokens, order)
        cand = {"psi": model.fact_branch(c_tokens, c_order), "order": c_order, "own": own,
                "positive": c_positive}
        loss, _ = fact_loss(phi, psi, order, positive, cfg, cand)
        loss.backward()
        opt.step()

    step()                                                   # warm-up (allocations, oneDNN plans)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    per_image = 2 * int(np.prod(feats.shape[1:])) * 2        # float16, image + mirror image
    return {"input_px": size, "freeze_stages": k, "trainable_stages": f"{k + 1}-7 + head",
            "trainable_params": sum(p.numel() for p in branch.parameters()),
            "batch": batch, "steps_timed": steps, "step_seconds_median": round(med, 4),
            "step_seconds": [round(t, 4) for t in times],
            "train_images_per_s": round(batch / med, 2),
            "stem_images_per_s": round(batch / max(stem_s, 1e-9), 1),
            "cache_shape": list(feats.shape[1:]), "cache_bytes_per_image": per_image,
            "cache_gib_flickr8k": round(per_image * FLICKR8K_IMAGES / 2**30, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frozen", default="6,5,4,0")
    p.add_argument("--sizes", default="224,128")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--candidates", type=int, default=90, help="task facts of L_all (about 361/4)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="batch 4, 1 timed step (a smoke test)")
    p.add_argument("--out", default=str(common.RESULTS / "trainable_depth.json"))
    a = p.parse_args(argv)
    if a.quick:
        a.batch, a.steps = 4, 1
    torch.set_num_threads(a.threads)
    before = common.machine_info()
    rows = []
    for size in (int(s) for s in a.sizes.split(",")):
        for k in (int(s) for s in a.frozen.split(",")):
            rows.append(measure(k, size, a.batch, a.steps, a.candidates))
            r = rows[-1]
            print(f"{size} px, frozen {k}: {r['train_images_per_s']:.1f} images/s "
                  f"({r['step_seconds_median']:.3f} s/step of {a.batch}), "
                  f"{r['trainable_params']:,} trainable parameters, cache "
                  f"{r['cache_gib_flickr8k']} GiB for Flickr8k", flush=True)
    for size in {r["input_px"] for r in rows}:               # ratios against the default depth
        base = next((r for r in rows if r["input_px"] == size and r["freeze_stages"] == 6), None)
        for r in rows:
            if base and r["input_px"] == size:
                r["speed_vs_frozen6"] = round(r["train_images_per_s"] / base["train_images_per_s"], 3)
    common.write_results(a.out, {"benchmark": "trainable_depth", "settings": vars(a),
                                 "machine": before, "load_after": common.machine_info()["loadavg_1_5_15"],
                                 "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
