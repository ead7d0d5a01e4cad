"""FLOP counts that are right for grouped and depthwise convolutions, and the default model's GFLOP
per image with each stage's fraction of the machine's ``torch.mm`` rate.

    .venv/bin/python bench/flops.py [--threads 1] [--quick] [--out FILE]

Why: torch's ``FlopCounterMode`` counts a convolution's weight gradient as a convolution of the input
(``C_in`` channels) with the output gradient, ignoring ``groups``: a depthwise convolution's weight
gradient is counted ``groups`` times too high (×1152 on Lite0's widest depthwise layer), and a Lite0
training step reads 185 GFLOP where about 35 are done (issue 32).

Hand derivation (FLOPs = 2 × multiply-adds, the convention of ``FlopCounterMode`` and of
``common.matmul_gflops``'s 2n³; bias additions, BatchNorm and activations not counted):

* ``nn.Conv2d``, input [B, C_in, H, W], weight [C_out, C_in/g, k_h, k_w], output [B, C_out, H_o, W_o],
  g groups: every output element is a sum over C_in/g · k_h · k_w products, so

      forward      = 2 · B · C_out · H_o · W_o · (C_in/g) · k_h · k_w
      grad input   = the same (each product's input term receives ∂y · w once: a transposed conv)
      grad weight  = the same (each weight entry sums ∂y · x over the B · H_o · W_o places it met)

  i.e. each of the three is one multiply-add per (output element, tap, input channel of its group);
  ``FlopCounterMode`` counts the weight gradient with C_in in place of C_in/g (×g).
* ``nn.Linear`` (and ``mm``), input [N, i], weight [o, i]: forward = grad input = grad weight
  = 2 · N · i · o.

``conv2d_flops`` and ``linear_flops`` are these formulas; ``count_flops`` is ``FlopCounterMode`` with
``aten.convolution_backward`` replaced by them (every other op as torch counts it);
``module_flops`` counts by forward hooks on Conv2d/Linear (forward always, the weight gradient when the
weight requires grad, the input gradient when the input does), a second, independent count.
tests/bench/test_flops.py checks the formulas against a brute-force count of the multiplications of a
loop-computed convolution and its gradients (groups 1, 2 and depthwise), and both counters against them.

The report (``main``): GFLOP per image of (1) a training step on cached features (Lite0, 6 frozen
stages, 224 px, batch 64: image and fact branch forward, loss, backward), (2) exact MAS Ω of the image
branch (``abs_grad_sums``, batch 256: FLOPs as executed, the per-sample gradient products included),
(3) the frozen-stage cache forward (batch 8, torch; timed in ONNX Runtime too when installed, the
work counted from torch); measured images/s of each at ``--threads`` and the
fraction of ``torch.mm`` 2048² at the same threads. Writes bench/results/flops.json.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections import defaultdict
from typing import Any, Callable

import torch
from torch import nn

import common

RESULTS = common.RESULTS / "flops.json"


# ---- formulas -------------------------------------------------------------------------------------
def conv2d_flops(batch: int, c_in: int, c_out: int, out_hw: tuple[int, int], kernel: tuple[int, int],
                 groups: int = 1) -> dict[str, int]:
    """FLOPs of a 2-D convolution (module docstring): {"forward", "grad_input", "grad_weight"}, each
    2 · B · C_out · H_o · W_o · (C_in / groups) · k_h · k_w.

    Raises:
        ValueError: ``c_in`` or ``c_out`` not divisible by ``groups``.
    """
    if c_in % groups or c_out % groups:
        raise ValueError(f"conv2d_flops: channels {c_in} → {c_out} not divisible by groups {groups}")
    n = 2 * batch * c_out * out_hw[0] * out_hw[1] * (c_in // groups) * kernel[0] * kernel[1]
    return {"forward": n, "grad_input": n, "grad_weight": n}


def linear_flops(rows: int, d_in: int, d_out: int) -> dict[str, int]:
    """FLOPs of y = x Wᵀ for x [rows, d_in], W [d_out, d_in]: forward, grad input, grad weight,
    each 2 · rows · d_in · d_out."""
    n = 2 * rows * d_in * d_out
    return {"forward": n, "grad_input": n, "grad_weight": n}


def _conv_backward(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                   _output_padding, groups, output_mask, out_shape=None, **kwargs) -> int:
    """``FlopCounterMode`` formula for ``aten.convolution_backward`` with groups (``conv2d_flops``)."""
    if transposed:
        from torch.utils.flop_counter import conv_backward_flop
        return conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation,
                                  transposed, _output_padding, groups, output_mask, out_shape)
    per = 2 * grad_out_shape[0] * math.prod(grad_out_shape[1:]) * math.prod(w_shape[1:])
    return per * int(bool(output_mask[0])) + per * int(bool(output_mask[1]))


def count_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int], Any]:
    """(total FLOPs, FLOPs per aten op name, fn's result) of running ``fn`` under ``FlopCounterMode``
    with the grouped-convolution backward formula (module docstring)."""
    from torch.utils.flop_counter import FlopCounterMode
    aten = torch.ops.aten
    with FlopCounterMode(display=False, custom_mapping={aten.convolution_backward: _conv_backward}) as c:
        out = fn()
    per_op = {str(k): int(v) for k, v in c.get_flop_counts().get("Global", {}).items()}
    return int(c.get_total_flops()), per_op, out


def torch_count_flops(fn: Callable[[], Any]) -> int:
    """Total FLOPs of ``fn`` as torch's own ``FlopCounterMode`` counts them (for comparison)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as c:
        fn()
    return int(c.get_total_flops())


class module_flops:
    """Context manager counting Conv2d and Linear FLOPs by forward hooks (module docstring).

    ``with module_flops(model) as count: loss = ...; loss.backward()`` then ``count.total()`` and
    ``count.by_kind()`` → {"conv", "depthwise conv", "grouped conv", "linear"} × {"forward",
    "grad_input", "grad_weight"}. It assumes one backward over everything run inside (a training step).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model, self.rows, self.handles = model, [], []

    def _hook(self, m: nn.Module, inputs, output) -> None:
        x = inputs[0]
        grad = torch.is_grad_enabled()
        if isinstance(m, nn.Conv2d):
            f = conv2d_flops(x.shape[0], m.in_channels, m.out_channels, tuple(output.shape[-2:]),
                             m.kernel_size, m.groups)
            kind = ("conv" if m.groups == 1 else
                    "depthwise conv" if m.groups == m.in_channels else "grouped conv")
        else:
            f = linear_flops(x.numel() // x.shape[-1], m.in_features, m.out_features)
            kind = "linear"
        self.rows.append({"kind": kind, "forward": f["forward"],
                          "grad_input": f["grad_input"] if grad and x.requires_grad else 0,
                          "grad_weight": f["grad_weight"] if grad and m.weight.requires_grad else 0})

    def __enter__(self) -> "module_flops":
        for m in self.model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                self.handles.append(m.register_forward_hook(self._hook))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()

    def by_kind(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = defaultdict(lambda: {"forward": 0, "grad_input": 0, "grad_weight": 0})
        for r in self.rows:
            for k in ("forward", "grad_input", "grad_weight"):
                out[r["kind"]][k] += r[k]
        return dict(out)

    def total(self) -> int:
        return sum(r["forward"] + r["grad_input"] + r["grad_weight"] for r in self.rows)


# ---- the default model's stages -------------------------------------------------------------------
def default_parts(vocab: int = 300, image_size: int = 224, seed: int = 0):
    """The default model (``ModelConfig()``), a cached-feature batch source and random facts."""
    from factmas.config import ModelConfig
    from factmas.model import build_model
    torch.manual_seed(seed)
    model = build_model(ModelConfig(), vocab)
    return model


def random_facts(n: int, vocab: int, g: torch.Generator):
    """tokens int64 [n, 3, 4] (0-padded), order int64 [n] in 1..3."""
    order = torch.randint(1, 4, (n,), generator=g)
    tokens = torch.randint(1, vocab, (n, 3, 4), generator=g)
    tokens[:, :, 1:][torch.rand(n, 3, 3, generator=g) < 0.5] = 0
    tokens[torch.arange(3)[None, :].expand(n, 3) >= order[:, None]] = 0
    return tokens, order


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--train-batch", type=int, default=64, help="the trainer's batch_size")
    ap.add_argument("--omega-batch", type=int, default=256, help="the trainer's aux_batch_size")
    ap.add_argument("--cache-batch", type=int, default=8, help="factmas.model.features.compute_features's")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--vocab", type=int, default=300)
    ap.add_argument("--quick", action="store_true", help="smallest sizes (smoke test)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    if args.quick:
        args.image_size, args.train_batch, args.omega_batch, args.cache_batch = 64, 4, 4, 2
        args.repeats, args.threads = 1, 1
    torch.set_num_threads(args.threads)
    from factmas.machine.cpu_memory import keep_freed_memory
    from factmas.config import LossConfig
    from factmas.space.loss import fact_loss
    from factmas.methods.mas import image_norm_loss
    from factmas.methods.quadratic import eval_mode
    from factmas.persample.hooks import abs_grad_sums

    info = common.machine_info()
    info["keep_freed_memory"] = keep_freed_memory()
    g = torch.Generator().manual_seed(0)
    model = default_parts(args.vocab)
    pixels = torch.randn(max(args.train_batch, args.omega_batch, args.cache_batch), 3, args.image_size,
                         args.image_size, generator=g)
    feats = torch.cat([model.image_input(pixels[i:i + 8]) for i in range(0, len(pixels), 8)])
    tokens, order = random_facts(len(feats), args.vocab, g)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-4)
    loss_cfg = LossConfig()

    def train_step(b=args.train_batch):
        model.train()
        opt.zero_grad(set_to_none=True)
        positive = torch.eye(b, dtype=torch.bool)
        loss, _ = fact_loss(model.image_branch(feats[:b]), model.fact_branch(tokens[:b], order[:b]),
                            order[:b], positive, loss_cfg)
        loss.backward()
        opt.step()

    def omega(b=args.omega_batch):
        with eval_mode(model):
            return abs_grad_sums(model, image_norm_loss, [feats[:b]])

    stem = model.image_stem

    def cache(b=args.cache_batch, engine="torch"):
        stem.engine = engine           # "auto": ONNX Runtime when installed (FlopCounterMode sees none)
        try:
            return stem(pixels[:b])
        finally:
            stem.engine = "torch"

    stem.engine = "torch"
    stages = {"train step (cached features)": (train_step, args.train_batch),
              "exact Ω, image branch": (omega, args.omega_batch),
              "cache forward (frozen stages), torch": (cache, args.cache_batch)}
    from factmas.model.stem_engine import ort_available
    if ort_available():
        from factmas.model.features import default_batch
        stem.engine = "auto"
        b_ort = default_batch(stem, "cpu")           # the cache's batch in ONNX Runtime (2)
        stem.engine = "torch"
        stages["cache forward (frozen stages), onnxruntime"] = (lambda: cache(b_ort, "auto"), b_ort)
    rows = []
    for name, (fn, b) in stages.items():
        if name.endswith("onnxruntime"):                  # the same work per image as the torch form
            rows.append({**{k: v for k, v in rows[-1].items() if k not in ("stage", "batch")},
                         "stage": name, "batch": b})
            continue
        fixed, per_op, _ = count_flops(fn)
        torch_total = torch_count_flops(fn)
        with module_flops(model) as hooks:
            fn()
        rows.append({"stage": name, "batch": b, "gflop_per_image": fixed / b / 1e9,
                     "torch_flopcounter_gflop_per_image": torch_total / b / 1e9,
                     "torch_overcount": torch_total / fixed, "hooks_gflop_per_image": hooks.total() / b / 1e9,
                     "hooks_by_kind_gflop": {k: {kk: vv / b / 1e9 for kk, vv in v.items()}
                                             for k, v in hooks.by_kind().items()},
                     "per_op_gflop_per_image": {k: v / b / 1e9 for k, v in per_op.items()}})
    mm = [common.matmul_gflops(2048 if not args.quick else 256, repeats=3)]
    for r, (name, (fn, b)) in zip(rows, stages.items()):
        med, runs = common.median_seconds(fn, args.repeats, warmup=1)
        r.update(seconds=runs, images_per_s=b / med)
    mm.append(common.matmul_gflops(2048 if not args.quick else 256, repeats=3))
    rate = statistics.median(m["gflops"] for m in mm)
    for r in rows:
        r["gflops"] = r["gflop_per_image"] * r["images_per_s"]
        r["fraction_of_matmul"] = r["gflops"] / rate
    print(f"\nGFLOP per image (grouped-conv-correct count), {args.image_size} px, {args.threads} thread(s)")
    common.print_table(rows, [("stage", "stage", ""), ("batch", "batch", "d"),
                              ("gflop_per_image", "GFLOP/img", ".3f"),
                              ("torch_overcount", "torch ×", ".2f"),
                              ("hooks_gflop_per_image", "hooks", ".3f"),
                              ("images_per_s", "img/s", ".1f"), ("gflops", "GFLOP/s", ".1f"),
                              ("fraction_of_matmul", "of mm", ".1%")])
    print(f"torch.mm 2048² float32: {rate:.1f} GFLOP/s (median of {[round(m['gflops'], 1) for m in mm]})")
    print(common.load_line(info))
    common.write_results(args.out, {
        "benchmark": "flops", "machine": info, "loadavg_end": list(os.getloadavg()),
        "image_size": args.image_size, "threads": args.threads, "repeats": args.repeats,
        "quick": args.quick, "matmul": mm, "matmul_gflops": rate, "results": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
