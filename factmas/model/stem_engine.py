"""Running a frozen stem on the CPU through ONNX Runtime: the feature cache's fast path (issue 32).

A frozen stem (``factmas.model.frozen.FrozenStem``) never trains, so it can run outside torch. On the
default model's 6 frozen Lite0 stages, ONNX Runtime (BatchNorm folded into the convolutions, fused
depthwise kernels) runs the cache 2.0-2.1× as fast as torch's eager CPU path at 1 thread (batch 2
against torch's batch 8), with the same features to the cache's float16 tolerance (bench/cache_speed.py, docs/benchmarks.md
"Feature cache"). Used when the optional PyPI packages ``onnxruntime`` and ``onnx`` (the exporter's
serializer) are installed (``pip install factmas[fast-cache]``); otherwise, on a GPU, with gradients
or when it fails to export, the stem runs in torch as before.

``OrtStem(body)``: ``ready()`` says whether the packages are importable; ``__call__(x float32
[B, 3, H, W] CPU) -> float32 [B, C, h, w] CPU``; a session per input size (H, W) (padding of a
"same" convolution depends on it), each built on first use with intra-op threads =
``torch.get_num_threads()`` at that time (rebuilt when the count changes). Not picklable state: a
deep copy or a pickled stem starts without sessions.

May import: torch, and onnxruntime / onnx when present.
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


@functools.lru_cache(maxsize=None)
def ort_available() -> bool:
    """True when ``onnxruntime`` and ``onnx`` can be imported (the fast path's optional packages)."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


class OrtStem:
    """ONNX Runtime sessions of a frozen ``body`` (module docstring).

    Raises (from ``__call__``): RuntimeError when the export or the session fails (the caller falls
    back to torch and logs why).
    """

    def __init__(self, body: nn.Module) -> None:
        self.body = body
        self.sessions: dict[tuple[int, int], tuple[int, object]] = {}

    def _session(self, shape: tuple[int, ...]):
        import onnxruntime as ort
        key, threads = (int(shape[-2]), int(shape[-1])), torch.get_num_threads()
        if key in self.sessions and self.sessions[key][0] == threads:
            return self.sessions[key][1]
        buf = io.BytesIO()
        example = torch.zeros(1, *shape[1:])
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
        self.sessions[key] = (threads, session)
        log.info("frozen stem: ONNX Runtime %s session for %dx%d input, %d thread(s)",
                 ort.__version__, key[0], key[1], threads)
        return session

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        session = self._session(tuple(x.shape))
        y = session.run(None, {"x": np.ascontiguousarray(x.detach().numpy(), dtype=np.float32)})[0]
        return torch.from_numpy(y)
