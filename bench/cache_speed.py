"""The frozen-stage feature cache: ways to run the default model's frozen stages, side by side.

    .venv/bin/python bench/cache_speed.py [--images 48] [--threads 1] [--repeats 3]
                                          [--skip compile onnxruntime] [--quick] [--out FILE]

The frozen stages of the default model (EfficientNet-Lite0, 6 of 7 block stages, 224-px input,
``build_model(ModelConfig()).image_stem``) over ``--images`` random uint8 images and their mirror
images, as ``factmas.model.features.compute_features`` runs them, in these forms:

* ``eager NCHW b8``: today's path before issue 32 (batch 8, contiguous NCHW); the baseline;
* ``eager NCHW bB`` and ``channels_last bB``: larger batches; the weights and the input in
  ``torch.channels_last`` (NHWC; oneDNN's preferred layout for depthwise convolutions);
* ``jit.freeze bB`` (+ ``channels_last``): ``torch.jit.trace`` → ``torch.jit.freeze`` →
  ``torch.jit.optimize_for_inference`` (BatchNorm folded into the convolutions, oneDNN fusions);
* ``torch.compile bB``: inductor on the CPU (compile time recorded apart);
* ``onnxruntime bB``: the frozen stages exported to ONNX (``torch.onnx.export``) and run by ONNX
  Runtime (PyPI ``onnxruntime``, optional) with 1 intra-op thread per ``--threads``;
  ``onnxruntime no-spin/no-arena bB``: the same with sequential execution, no spinning, no memory
  arena and no memory patterns;
* ``openvino bB``: the frozen stages converted by ``openvino.convert_model`` and compiled for the
  CPU (PyPI ``openvino``, optional) in float32 (``INFERENCE_PRECISION_HINT``), ``--threads``
  threads, one stream.

Each form's features are compared with the baseline's: the largest |difference| / (2e-3 + 2e-3·|base|)
(one float16 step near 1, the tolerance tests/test_features.py gives cached against live features),
the fraction of values above that tolerance and the largest absolute difference; a form is *equal*
when no value is above the tolerance (the cache stores float16). Times:
median of ``--repeats`` runs, forms in rotating order; ``× base``: the median of per-repeat ratios
against the baseline (load cancels). GFLOP per image from ``bench/flops.py`` (right for depthwise
convolutions), fraction of ``torch.mm`` 2048² at the same threads. Writes bench/results/cache_speed.json.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

import common
import flops

RESULTS = common.RESULTS / "cache_speed.json"


def run_torch(module, images: np.ndarray, batch: int, channels_last: bool) -> np.ndarray:
    """float16 [N, 2, C, h, w] of ``module`` (pixels → features) over images and mirror images."""
    from factmas.model import preprocess
    out = []
    with torch.inference_mode():
        for lo in range(0, len(images), batch):
            x = preprocess(images[lo:lo + batch])
            pair = []
            for flip in (0, 1):
                xi = x.flip(-1) if flip else x
                if channels_last:
                    xi = xi.contiguous(memory_format=torch.channels_last)
                pair.append(module(xi).to(torch.float16).contiguous().numpy())
            out.append(np.stack(pair, 1))
    return np.concatenate(out)


def run_ort(session, images: np.ndarray, batch: int) -> np.ndarray:
    """The same through an ONNX Runtime session of the frozen stages."""
    from factmas.model import preprocess
    name = session.get_inputs()[0].name
    out = []
    for lo in range(0, len(images), batch):
        x = preprocess(images[lo:lo + batch])
        pair = [session.run(None, {name: (x.flip(-1) if f else x).numpy()})[0].astype(np.float16)
                for f in (0, 1)]
        out.append(np.stack(pair, 1))
    return np.concatenate(out)


def run_ov(compiled, images: np.ndarray, batch: int) -> np.ndarray:
    """The same through an OpenVINO compiled model of the frozen stages."""
    from factmas.model import preprocess
    request = compiled.create_infer_request()
    out = []
    for lo in range(0, len(images), batch):
        x = preprocess(images[lo:lo + batch])
        pair = []
        for f in (0, 1):
            request.infer({0: (x.flip(-1) if f else x).numpy()})
            pair.append(request.get_output_tensor(0).data.astype(np.float16))
        out.append(np.stack(pair, 1))
    return np.concatenate(out)


TOL = 2e-3     # rtol = atol: one float16 step near 1 (the rule of tests/test_features.py)


def closeness(got: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    """(max |got − ref| / (TOL + TOL·|ref|), fraction of values above 1 there, max |got − ref|)."""
    r = ref.astype(np.float32)
    d = np.abs(got.astype(np.float32) - r)
    s = d / (TOL + TOL * np.abs(r))
    return float(s.max()), float((s > 1).mean()), float(d.max())


def build_forms(body: torch.nn.Module, args, example: torch.Tensor) -> tuple[dict, dict]:
    """name → callable(images) → float16 features; and name → setup seconds / errors."""
    forms, setup = {}, {}
    body_cl = copy.deepcopy(body).to(memory_format=torch.channels_last)
    forms["eager NCHW b8"] = lambda im: run_torch(body, im, 8, False)
    for b in args.batches:
        forms[f"eager NCHW b{b}"] = lambda im, b=b: run_torch(body, im, b, False)
        forms[f"channels_last b{b}"] = lambda im, b=b: run_torch(body_cl, im, b, True)
    if "jit" not in args.skip:
        try:
            t0 = time.perf_counter()
            with torch.no_grad():
                frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(body, example)))
                frozen_cl = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(
                    body_cl, example.contiguous(memory_format=torch.channels_last))))
            setup["jit.freeze"] = time.perf_counter() - t0
            for b in args.batches:
                forms[f"jit.freeze b{b}"] = lambda im, b=b: run_torch(frozen, im, b, False)
                forms[f"jit.freeze channels_last b{b}"] = lambda im, b=b: run_torch(frozen_cl, im, b, True)
        except Exception as e:                                   # recorded, the others still run
            setup["jit.freeze error"] = f"{type(e).__name__}: {str(e)[:300]}"
    if "compile" not in args.skip:
        try:
            t0 = time.perf_counter()
            compiled = torch.compile(body_cl)
            run_torch(compiled, np.zeros((max(args.batches), 224, 224, 3), np.uint8), max(args.batches), True)
            setup["torch.compile"] = time.perf_counter() - t0
            b = max(args.batches)
            forms[f"torch.compile channels_last b{b}"] = lambda im: run_torch(compiled, im, b, True)
        except Exception as e:
            setup["torch.compile error"] = f"{type(e).__name__}: {str(e)[:300]}"
    if "onnxruntime" not in args.skip:
        try:
            import onnxruntime as ort
            t0 = time.perf_counter()
            path = Path(tempfile.mkdtemp(prefix="factmas_ort_")) / "stem.onnx"
            torch.onnx.export(body, (example,), str(path), input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, dynamo=False)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = args.threads
            opts.inter_op_num_threads = 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            setup["onnxruntime"] = time.perf_counter() - t0
            setup["onnxruntime_version"] = ort.__version__
            forms["onnxruntime b8"] = lambda im: run_ort(session, im, 8)
            for b in args.batches:
                forms[f"onnxruntime b{b}"] = lambda im, b=b: run_ort(session, im, b)
            # the session options of issue 32's list: no spinning, sequential execution, the
            # memory arena and patterns off (each on by default)
            opts2 = ort.SessionOptions()
            opts2.intra_op_num_threads = args.threads
            opts2.inter_op_num_threads = 1
            opts2.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts2.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            opts2.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts2.enable_cpu_mem_arena = False
            opts2.enable_mem_pattern = False
            session2 = ort.InferenceSession(str(path), opts2, providers=["CPUExecutionProvider"])
            for b in args.batches:
                forms[f"onnxruntime no-spin/no-arena b{b}"] = lambda im, b=b: run_ort(session2, im, b)
        except Exception as e:
            traceback.print_exc()
            setup["onnxruntime error"] = f"{type(e).__name__}: {str(e)[:300]}"
    if "openvino" not in args.skip:
        try:
            import openvino as ov
            from factmas.model.stem_engine import openvino_core
            t0 = time.perf_counter()
            model = ov.convert_model(body, example_input=example[:1],
                                     input=[ov.PartialShape([-1, 3, example.shape[2], example.shape[3]])])
            # f32 kept (a CPU with AMX/bf16 would otherwise run in bf16: not the same features)
            compiled = openvino_core().compile_model(model, "CPU", {   # the library's one Core
                "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": args.threads,
                "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1})
            setup["openvino"] = time.perf_counter() - t0
            setup["openvino_version"] = ov.__version__
            for b in args.batches:
                forms[f"openvino b{b}"] = lambda im, b=b: run_ov(compiled, im, b)
        except Exception as e:
            traceback.print_exc()
            setup["openvino error"] = f"{type(e).__name__}: {str(e)[:300]}"
    return forms, setup


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 48])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--skip", nargs="*", default=[], choices=["jit", "compile", "onnxruntime", "openvino"])
    ap.add_argument("--quick", action="store_true", help="smallest sizes (smoke test)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.batches, args.repeats, args.image_size = 4, [4], 1, 64
        args.skip = sorted(set(args.skip) | {"compile"})
    torch.set_num_threads(args.threads)
    from factmas.config import ModelConfig
    from factmas.machine.cpu_memory import keep_freed_memory
    from factmas.model import build_model
    info = common.machine_info()
    info["keep_freed_memory"] = keep_freed_memory()
    torch.manual_seed(0)
    stem = build_model(ModelConfig(), 300).image_stem.eval()
    stem.engine = "torch"                     # FLOPs counted in torch (ONNX Runtime: its own form)
    body = stem.body
    images = np.random.default_rng(0).integers(0, 256, (args.images, args.image_size, args.image_size, 3),
                                               dtype=np.uint8)
    example = torch.randn(8, 3, args.image_size, args.image_size)
    gflop_per_image = flops.count_flops(lambda: stem(example[:1]))[0] / 1e9
    forms, setup = build_forms(body, args, example)
    ref = forms["eager NCHW b8"](images)
    rows = {}
    for name, fn in list(forms.items()):
        try:
            got = fn(images)                                     # warm-up, and the features compared
        except Exception as e:
            setup[f"{name} error"] = f"{type(e).__name__}: {str(e)[:300]}"
            del forms[name]
            continue
        worst, frac, max_abs = closeness(got, ref)
        rows[name] = {"form": name, "max_diff_over_tol": worst, "fraction_over_tol": frac,
                      "max_abs_diff": max_abs, "equal": worst <= 1.0, "seconds": []}
    mm = [common.matmul_gflops(2048 if not args.quick else 256, repeats=3)]
    names = list(forms)
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            forms[name](images)
            rows[name]["seconds"].append(time.perf_counter() - t0)
        print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(
            f"{n} {2 * args.images / rows[n]['seconds'][-1]:.1f}" for n in names), flush=True)
    mm.append(common.matmul_gflops(2048 if not args.quick else 256, repeats=3))
    rate = statistics.median(m["gflops"] for m in mm)
    base = rows["eager NCHW b8"]["seconds"]
    for row in rows.values():
        med = statistics.median(row["seconds"])
        row["images_per_s"] = 2 * args.images / med
        row["vs_base"] = statistics.median(b / s for b, s in zip(base, row["seconds"]))
        row["gflops"] = gflop_per_image * row["images_per_s"]
        row["fraction_of_matmul"] = row["gflops"] / rate
    table = sorted(rows.values(), key=lambda r: -r["vs_base"])
    print(f"\nfrozen stages of Lite0 (6 stages, {args.image_size} px), {args.images} images + mirrors, "
          f"{args.threads} thread(s), median of {args.repeats}; {gflop_per_image:.3f} GFLOP per image")
    common.print_table(table, [("form", "form", ""), ("images_per_s", "img/s", ".1f"),
                               ("vs_base", "× base", ".2f"), ("fraction_of_matmul", "of mm", ".1%"),
                               ("max_diff_over_tol", "diff/tol", ".2f"),
                               ("fraction_over_tol", ">tol", ".1e"), ("max_abs_diff", "max |diff|", ".1e")])
    print(f"setup: {setup}")
    print(f"torch.mm 2048² float32: {rate:.1f} GFLOP/s (median of {[round(m['gflops'], 1) for m in mm]})")
    print(common.load_line(info))
    common.write_results(args.out, {
        "benchmark": "cache_speed", "machine": info, "loadavg_end": list(os.getloadavg()),
        "images": args.images, "image_size": args.image_size, "threads": args.threads,
        "repeats": args.repeats, "quick": args.quick, "gflop_per_image": gflop_per_image,
        "matmul": mm, "matmul_gflops": rate, "setup": setup, "results": table})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
