"""The frozen stem's ONNX Runtime path (factmas.model.stem_engine): the same float16-rounded features
as torch to the cache's tolerance, sessions that follow the weights, a copyable stem, and a clear
fallback to torch when ONNX Runtime fails."""
from __future__ import annotations

import copy
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np

import pytest
import torch

from factmas.config import ModelConfig
from factmas.model import build_model
from factmas.model import stem_engine
from factmas.model.frozen import FrozenStem

pytestmark = pytest.mark.skipif(not stem_engine.ort_available(),
                                reason="onnxruntime and onnx not installed (pip install factmas[fast-cache])")

TOL = 2e-3          # one float16 step near 1: the rule tests/test_features.py gives cached vs live


@pytest.fixture(scope="module")
def stem():
    torch.manual_seed(0)
    return build_model(ModelConfig(backbone="efficientnet_lite0", embed_dim=8), 20).image_stem


def _torch(stem: FrozenStem, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return stem.body(x).to(torch.float16).float()


def test_onnxruntime_gives_the_torch_features_to_float16_rounding(stem):
    g = torch.Generator().manual_seed(1)
    for size, batch in ((64, 3), (96, 5)):          # a session per input size; any batch size
        x = torch.randn(batch, 3, size, size, generator=g)
        got = stem(x)
        assert stem._ort is not None and not stem._ort_failed          # the fast path ran
        ref = _torch(stem, x)
        assert got.dtype == torch.float32 and got.shape == ref.shape
        assert torch.equal(got, got.to(torch.float16).float())         # float16-rounded
        assert torch.allclose(got, ref, rtol=TOL, atol=TOL)
        assert not torch.allclose(got, _torch(stem, x.flip(-1)), rtol=TOL, atol=TOL)   # can fail


def test_engine_torch_is_the_body_and_bad_engines_are_refused(stem):
    plain = copy.deepcopy(stem)
    plain.engine = "torch"
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(plain(x), _torch(stem, x)) and plain._ort is None
    with pytest.raises(ValueError, match="engine 'onnx'; valid"):
        FrozenStem(torch.nn.Identity(), engine="onnx")


def test_session_follows_weights_and_copies_start_without_sessions(stem):
    s = copy.deepcopy(stem)
    assert s._ort is None
    x = torch.randn(2, 3, 64, 64)
    before = s(x)
    with torch.no_grad():
        for p in s.body.parameters():
            p.mul_(1.1)                         # as load_state_dict would write new weights
            break
    after = s(x)
    assert torch.allclose(after, _torch(s, x), rtol=TOL, atol=TOL)
    assert not torch.allclose(after, before, rtol=TOL, atol=TOL)
    assert pickle.loads(pickle.dumps(s))._ort is None


def test_failure_falls_back_to_torch_with_a_warning(stem, monkeypatch, caplog):
    s = copy.deepcopy(stem)

    def broken(self, shape):
        raise RuntimeError("no exporter here")
    monkeypatch.setattr(stem_engine.OrtStem, "_session", broken)
    x = torch.randn(2, 3, 64, 64)
    with caplog.at_level(logging.WARNING):
        got = s(x)
    assert torch.equal(got, _torch(s, x)) and s._ort_failed
    assert f"{stem_engine.fast_engine()} unavailable (RuntimeError: no exporter here)" in caplog.text


def test_gradient_free_and_non_float32_inputs_stay_on_torch(stem):
    s = copy.deepcopy(stem).double()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    assert s(x).dtype == torch.float32 and s._ort is None


def test_cache_batch_follows_the_engine(stem):
    from factmas.model.features import default_batch
    s = copy.deepcopy(stem)
    assert default_batch(s, "cpu") == 2                 # ONNX Runtime's fastest batch
    assert default_batch(s, torch.device("cuda")) == 8  # torch on a GPU (no GPU needed to ask)
    s.engine = "torch"
    assert default_batch(s, "cpu") == 8
    assert default_batch(torch.nn.Identity(), "cpu") == 8


@pytest.mark.parametrize("engine", ["openvino", "onnxruntime"])
def test_each_engine_gives_the_torch_features_and_names_the_cache(stem, engine, monkeypatch):
    """Both fast engines (OpenVINO preferred where installed, else ONNX Runtime) give torch's
    features to float16 rounding, and the feature cache's key names the engine in use (a cache of
    one engine never stands in for another's; torch's key has no engine)."""
    if not stem_engine._importable(engine):
        pytest.skip(f"{engine} not installed")
    from factmas.model import features
    monkeypatch.setattr(stem_engine, "ENGINES", (engine,))
    assert stem_engine.fast_engine() == engine
    s = copy.deepcopy(stem)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    got = s(x)
    assert s._ort is not None and not s._ort_failed
    assert torch.allclose(got, _torch(s, x), rtol=TOL, atol=TOL)
    assert not torch.allclose(got, _torch(s, x.flip(-1)), rtol=TOL, atol=TOL)

    class Data:
        path, images = "/nonexistent/data.h5", np.zeros((2, 8, 8, 3), np.uint8)

    class Model:
        cfg = ModelConfig(backbone="efficientnet_lite0")
        image_stem = s
    keys = {}
    for name in (engine, "torch"):
        s.engine = "auto" if name == engine else "torch"
        keys[name] = features.cache_file(Data, Model).name
    monkeypatch.setattr(stem_engine, "ENGINES", tuple(e for e in ("openvino", "onnxruntime") if e != engine))
    if stem_engine.fast_engine() is not None:
        s.engine = "auto"
        keys["other"] = features.cache_file(Data, Model).name
    assert len(set(keys.values())) == len(keys)                        # every engine its own key


def test_no_fast_engine_means_torch(stem, monkeypatch):
    monkeypatch.setattr(stem_engine, "ENGINES", ())
    assert stem_engine.fast_engine() is None and not stem_engine.ort_available()
    s = copy.deepcopy(stem)
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(s(x), _torch(s, x)) and s._ort is None


SIGNAL_CHILD = """
import gc, os, signal, sys, time
import torch
from torch import nn
from factmas.errors import Terminated, sigterm_raises
from factmas.model import stem_engine
stem_engine.ENGINES = ("openvino",)
stem = stem_engine.OrtStem(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
for size in (16, 24):                   # a compiled model per input size, both alive
    stem(torch.zeros(1, 3, size, size))
del stem
gc.collect()                            # dropped in the order they were made
print("cores", stem_engine.openvino_core.cache_info().misses, flush=True)
with sigterm_raises():                  # as factmas train does; CPython's handler runs on the
    try:                                # thread's alternate signal stack
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    except Terminated:
        print("terminated", flush=True)
"""


def test_openvino_stems_dropped_in_order_survive_a_signal():
    """The segmentation fault that made OpenVINO opt-in (2026-12-06): two compiled models, each with
    its own ``openvino.Core``, dropped in the order they were made, left the main thread's alternate
    signal stack on unmapped memory (on a CPU with AMX), and the next SIGTERM killed the process
    (exit -11) instead of raising ``Terminated`` (``stem_engine.openvino_core``). In a subprocess, so
    that a crash fails this test and not the run; the count of Cores made (1) is checked on any CPU."""
    if not stem_engine._importable("openvino"):
        pytest.skip("openvino not installed")
    root = str(Path(stem_engine.__file__).resolve().parents[2])
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    r = subprocess.run([sys.executable, "-c", SIGNAL_CHILD], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr[-2000:]}"
    assert r.stdout.split() == ["cores", "1", "terminated"]
