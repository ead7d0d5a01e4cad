"""The CUDA test subset (``pytest -m cuda``; ``scripts/gpu_check.sh`` runs it): on a GPU, the model's
training step, exact MAS Ω, the cached image inputs, the FAISS GPU index and a one-task run give what
the CPU gives. Skipped without a CUDA GPU (and the FAISS test without FAISS GPUs)."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from factmas.config import LossConfig, RunConfig
from factmas.space.loss import fact_loss
from factmas.methods.mas import loop_mas_importance, mas_importance
from factmas.methods.quadratic import eval_mode

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def strict_float32():
    """No TF32 (cuDNN enables it for convolutions by default): GPU and CPU then agree to float32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _facts(n: int, vocab: int, g: torch.Generator):
    order = torch.randint(1, 4, (n,), generator=g)
    tokens = torch.randint(1, vocab, (n, 3, 2), generator=g)
    tokens[torch.arange(3)[None, :].expand(n, 3) >= order[:, None]] = 0
    return tokens, order


def _rel(a: dict, b: dict) -> float:
    return max(float((a[k].cpu() - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-30)) for k in b)


def test_training_step_gradient_on_cuda_equals_cpu(tiny_model):
    model = tiny_model(double=False)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 3, 16, 16, generator=g)
    tokens, order = _facts(6, 20, g)
    positive = torch.eye(6, dtype=torch.bool)
    grads = []
    for m, dev in ((model, "cpu"), (copy.deepcopy(model).to(CUDA), CUDA)):
        m.zero_grad()
        loss, _ = fact_loss(m.image_branch(x.to(dev)), m.fact_branch(tokens.to(dev), order.to(dev)),
                            order.to(dev), positive.to(dev), LossConfig())
        loss.backward()
        grads.append({n: p.grad.detach().cpu() for n, p in m.named_parameters()})
    assert _rel(grads[1], grads[0]) < 1e-4


def test_exact_omega_on_cuda_equals_cpu_and_the_loop(tiny_model):
    model = tiny_model(double=False)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(10, 3, 16, 16, generator=g)
    tokens, order = _facts(10, 20, g)
    cpu = mas_importance(model, [x[:6], x[6:]], [(tokens[:6], order[:6]), (tokens[6:], order[6:])])
    gpu_model = copy.deepcopy(model).to(CUDA)
    xg, tg, og = x.to(CUDA), tokens.to(CUDA), order.to(CUDA)
    with eval_mode(gpu_model):
        gpu = mas_importance(gpu_model, [xg[:6], xg[6:]], [(tg[:6], og[:6]), (tg[6:], og[6:])])
        loop = loop_mas_importance(gpu_model, [xg], [(tg, og)])
    assert _rel(gpu, cpu) < 1e-4
    assert _rel(gpu, {k: v.cpu() for k, v in loop.items()}) < 1e-4


def test_cached_inputs_on_cuda_equal_cpu():
    from factmas.model.features import CachedInputs
    feats = np.random.default_rng(0).standard_normal((9, 2, 4, 3, 3)).astype(np.float16)
    ids, flip = np.array([3, 0, 8, 3]), np.array([True, False, True, False])
    a = CachedInputs(feats, "cpu").get(ids, flip)
    b = CachedInputs(feats, CUDA).get(ids, flip)
    assert b.device.type == "cuda" and torch.equal(a, b.cpu())


def test_faiss_gpu_index_gives_the_cpu_ranking():
    faiss = pytest.importorskip("faiss")
    if not hasattr(faiss, "get_num_gpus") or faiss.get_num_gpus() == 0:
        pytest.skip("FAISS sees no GPU (faiss-cpu installed; factmas[gpu] gives faiss-gpu)")
    from factmas.evaluation import retrieval
    g = torch.Generator().manual_seed(5)
    phi, psi = torch.randn(50, 3, 8, generator=g) * 3, torch.randn(40, 3, 8, generator=g)
    order = torch.randint(1, 4, (40,), generator=g)
    order[:3] = torch.tensor([1, 2, 3])                      # every order present
    psi[torch.arange(3)[None, :] >= order[:, None]] = 0.0    # absent slots are zeros, as the model gives
    dc, ic = retrieval.FactIndex(psi, order, gpu=False).search(phi, 10)
    dg, ig = retrieval.FactIndex(psi, order, gpu=True).search(phi, 10)
    np.testing.assert_allclose(dg, dc, rtol=1e-5, atol=1e-5)
    assert (ig == ic).mean() > 0.99                  # ties may swap


def test_one_task_on_cuda_writes_a_finite_evaluation(tmp_path):
    from factmas.data.synthetic import make_synthetic_dataset
    from factmas.trainer import train
    path = make_synthetic_dataset(tmp_path / "d.h5", n_images=120, image_size=16, num_tasks=2)
    cfg = RunConfig.from_dict({
        "data": str(path), "out": str(tmp_path / "run"),
        "model": {"backbone": "small_cnn", "width": 8, "embed_dim": 16, "word_dim": 16,
                  "fact_hidden": 32, "norm_groups": 4},
        "train": {"split": "random2_seed0", "method": "mas", "epochs": 1, "batch_size": 32,
                  "device": "cuda"}})
    state = train(cfg, limit_tasks=1, progress=False)
    assert state.completed_tasks == [0]
    text = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert "NaN" not in text and any(json.loads(ln).get("event") == "task_end" for ln in text.splitlines())
