"""Running a frozen stem on the CPU through OpenVINO or ONNX Runtime: the feature cache's fast path
(issue 32).

A frozen stem (``factmas.model.frozen.FrozenStem``) never trains, so it can run outside torch. On the
default model's 6 frozen Lite0 stages, ONNX Runtime (BatchNorm folded into the convolutions, fused
depthwise kernels) runs the cache 2.0-2.1× as fast as torch's eager CPU path at 1 thread (batch 2
against torch's batch 8), with the same features to the cache's float16 tolerance (bench/cache_speed.py, docs/benchmarks.md
"Feature cache"). Used when the optional PyPI packages ``onnxruntime`` and ``onnx`` (the exporter's
serializer) are installed (``pip install factmas[fast-cache]``); otherwise, on a GPU, with gradients
or when it fails to export, the stem runs in torch as before.

OpenVINO (PyPI ``openvino``, Intel's inference runtime, also in ``factmas[fast-cache]``) is preferred
where it is installed (``ENGINES``). It was opt-in for one stop: with its stems built earlier in one
pytest process, tests/train/test_train.py ended in a segmentation fault (2026-12-06). The cause was a
Core per compiled model: on an AMX CPU each Core's plugin swaps the thread's signal stack and,
destroyed in creation order, leaves it on unmapped memory (``openvino_core``, which now keeps one Core
for the process). On the default model's frozen stages it ran 1.4× as fast as ONNX Runtime side
by side (2.83× against 2.03× torch's eager batch 8, 55–57 % of the 1-thread ``torch.mm`` rate on the
Xeon of docs/benchmarks.md § 8.6, ``bench/results/cache_speed_engines.json``), with the same
features to float16 rounding (largest difference 0.43 of the tolerance, as ONNX Runtime's). It runs
in float32 (``INFERENCE_PRECISION_HINT``: a CPU with AMX or AVX-512 BF16 would otherwise run in
bfloat16, whose features differ by more). ``fast_engine()`` names the engine in use ("openvino",
"onnxruntime" or None), and the feature cache's key names it (``factmas.model.features``), so a
cache built by one engine never stands in for another's.

``OrtStem(body)``: ``__call__(x float32 [B, 3, H, W] CPU) -> float32 [B, C, h, w] CPU``; a compiled
model (OpenVINO) or session (ONNX Runtime) per input size (H, W) (padding of a "same" convolution
depends on it), each built on first use with ``torch.get_num_threads()`` threads at that time
(rebuilt when the count changes). Not picklable state: a deep copy or a pickled stem starts without
sessions.

May import: torch, and openvino / onnxruntime / onnx when present.
"""
from __future__ import annotations

import functools
import importlib.util
import io
import logging
import warnings

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)


ENGINES = ("openvino", "onnxruntime")      # in order of preference (the fastest first; the segmentation
# fault that made OpenVINO opt-in for one stop is fixed by openvino_core)
_NEEDS = {"openvino": ("openvino",), "onnxruntime": ("onnxruntime", "onnx")}


@functools.lru_cache(maxsize=None)
def _importable(engine: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in _NEEDS[engine])


def fast_engine() -> str | None:
    """The fast path's engine: the first of ``ENGINES`` whose packages can be imported, else None."""
    return next((e for e in ENGINES if _importable(e)), None)


def ort_available() -> bool:
    """True when a fast engine (OpenVINO, or ONNX Runtime with ``onnx``) can be imported. (The name
    is older than OpenVINO's path: ``factmas.model.frozen`` asks it whether the fast path can run.)"""
    return fast_engine() is not None


@functools.lru_cache(maxsize=None)
def openvino_core():
    """The process's one ``openvino.Core``: every OpenVINO stem compiles through it, and it lives
    until the interpreter exits. Raises ImportError without ``openvino``.

    Why one: on a CPU with AMX (e.g. Xeon Sapphire Rapids), the CPU plugin of each Core mmaps a
    signal stack of AT_MINSIGSTKSZ + 8 KiB, installs it with ``sigaltstack`` on the thread that made
    the Core (in place of faulthandler's), and when the Core is destroyed it unmaps that stack and
    puts back the one it found, if its own is still installed (``SigAltStackSetup``,
    openvinotoolkit/openvino PR 11894). Two Cores destroyed in the order they were made leave the
    thread on the first Core's unmapped stack, and the next signal handled there (a SIGTERM, a
    Ctrl-C) ends the process with a segmentation fault inside CPython's signal handler. A Core per
    compiled model (as before, 2026-12-06) did exactly that: tests/model/test_stem_engine.py and then
    tests/train/test_train.py's SIGTERM test in one pytest process, exit 139 (openvino 2026.4.1,
    glibc 2.36, Linux 6.18). One Core, never destroyed before exit, has one plugin, whose stack
    stays mapped. Reproduced without factmas by scripts/openvino_sigaltstack_repro.py; guarded by
    tests/model/test_stem_engine.py::test_openvino_stems_dropped_in_order_survive_a_signal.
    """
    import openvino as ov
    return ov.Core()


class OrtStem:
    """ONNX Runtime sessions of a frozen ``body`` (module docstring).

    Raises (from ``__call__``): RuntimeError when the export or the session fails (the caller falls
    back to torch and logs why).
    """

    def __init__(self, body: nn.Module) -> None:
        self.body = body
        self.sessions: dict[tuple[int, int], tuple[int, object]] = {}

    def _session(self, shape: tuple[int, ...]):
        """The runner (numpy float32 [B, 3, H, W] → numpy float32 [B, C, h, w]) of this input size."""
        key, threads = (int(shape[-2]), int(shape[-1])), torch.get_num_threads()
        if key in self.sessions and self.sessions[key][0] == threads:
            return self.sessions[key][1]
        engine = fast_engine()
        if engine is None:
            raise RuntimeError("neither openvino nor onnxruntime + onnx is installed")
        run = (self._openvino if engine == "openvino" else self._onnxruntime)(key, threads)
        self.sessions[key] = (threads, run)
        return run

    def _openvino(self, key: tuple[int, int], threads: int):
        import openvino as ov
        example = torch.zeros(1, 3, *key)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")             # the tracer's notes on "same" padding's shapes
            model = ov.convert_model(self.body, example_input=example,
                                     input=[ov.PartialShape([-1, 3, key[0], key[1]])])
        compiled = openvino_core().compile_model(model, "CPU", {
            "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1})
        request = compiled.create_infer_request()
        log.info("frozen stem: OpenVINO %s model for %dx%d input, %d thread(s)",
                 ov.__version__, key[0], key[1], threads)

        def run(x: np.ndarray) -> np.ndarray:
            request.infer({0: x})
            return request.get_output_tensor(0).data.copy()
        return run

    def _onnxruntime(self, key: tuple[int, int], threads: int):
        import onnxruntime as ort
        buf = io.BytesIO()
        example = torch.zeros(1, 3, *key)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")             # the tracer's notes on "same" padding's shapes
            torch.onnx.export(self.body, (example,), buf, input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        session = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
        log.info("frozen stem: ONNX Runtime %s session for %dx%d input, %d thread(s)",
                 ort.__version__, key[0], key[1], threads)
        return lambda x: session.run(None, {"x": x})[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        run = self._session(tuple(x.shape))
        return torch.from_numpy(run(np.ascontiguousarray(x.detach().numpy(), dtype=np.float32)))
