"""LwF adapted to embeddings: the distillation loss (zero for equal models, a naive reference,
gradient only into the new model), the frozen copy, and a run through the trainer."""
from __future__ import annotations

import pytest
import torch

from factmas.config import RunConfig
from factmas.methods import LwF, TaskContext, make_method
from factmas.methods.lwf import distillation_loss
from factmas.data.synthetic import make_synthetic_dataset
from factmas.trainer import train

TINY_MODEL = {"backbone": "small_cnn", "width": 8, "embed_dim": 16, "word_dim": 16, "fact_hidden": 32, "norm_groups": 4}


def ctx(task: int) -> TaskContext:
    def none(*a):
        raise AssertionError("LwF reads no data at task boundaries")
    return TaskContext(task=task, device=torch.device("cpu"), image_batches=none, fact_batches=none,
                       pair_batches=none)


def test_distillation_loss_against_a_naive_reference():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 3, 7, generator=g, dtype=torch.float64)
    b = torch.randn(5, 3, 7, generator=g, dtype=torch.float64)
    expected = 0.0
    for k in range(5):
        for s in range(3):
            expected += float(((a[k, s] / a[k, s].norm() - b[k, s] / b[k, s].norm()) ** 2).sum())
    assert abs(float(distillation_loss(a, b)) - expected / 5) < 1e-12
    assert float(distillation_loss(a, 3.0 * a)) < 1e-24                # slot scale does not matter
    with pytest.raises(ValueError, match=r"\[B, 3, d\]"):
        distillation_loss(a, b[:4])


def test_lwf_loss_is_zero_when_models_are_equal_and_grows_after_a_change(tiny_model):
    model = tiny_model(double=False)
    images = torch.randn(6, 3, 16, 16)
    method = make_method("lwf", 2.0)
    assert isinstance(method, LwF)
    method.on_task_start(model, ctx(0))
    assert method.old is None and method.extra_loss(model, {"images": images}, {}) == 0.0
    method.on_task_start(model, ctx(1))
    assert method.old is not model and not any(p.requires_grad for p in method.old.parameters())
    out = {"phi": model.image_branch(images)}
    loss = method.extra_loss(model, {"images": images}, out)
    assert float(loss.detach()) == 0.0
    with torch.no_grad():
        for p in model.image_branch.parameters():
            p.add_(0.1 * torch.randn_like(p))
    out = {"phi": model.image_branch(images)}
    loss = method.extra_loss(model, {"images": images}, out)
    expected = 2.0 * distillation_loss(out["phi"].detach(), method.old.image_branch(images))
    assert float(loss.detach()) > 1e-3 and abs(float(loss.detach()) - float(expected)) < 1e-5
    loss.backward()
    assert all(p.grad is None for p in method.old.parameters())
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.parameters())
    method.on_task_end(model, ctx(1))
    assert method.old is None
    with pytest.raises(ValueError, match="reg_lambda"):
        LwF(-1.0)


def test_lwf_runs_two_tasks_through_the_trainer(tmp_path):
    data = make_synthetic_dataset(tmp_path / "syn.h5", n_images=60, image_size=16, num_tasks=2)
    cfg = RunConfig.from_dict({"data": str(data), "out": str(tmp_path / "run"), "model": TINY_MODEL,
                               "train": {"split": "random2_seed0", "method": "lwf", "reg_lambda": 1.0,
                                         "epochs": 1, "batch_size": 16},
                               "eval": {"enabled": False}})
    state = train(cfg, progress=False)
    assert state.completed_tasks == [0, 1]
    import json
    epochs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    extra = [e["train_extra"] for e in epochs if e.get("event") == "epoch"]
    assert extra[0] == 0.0 and extra[1] > 0.0          # distillation only on the second task
