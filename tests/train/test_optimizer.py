"""``train.optimizer``: Adam (default) or SGD with momentum 0.9 (the official MAS / LFL code);
``train.lr_schedule``: constant (default) or cosine annealing per task."""
from __future__ import annotations

import json

import pytest
import torch

from factmas.config import RunConfig, TrainConfig
from factmas.config_check import ConfigError, validate_config
from factmas.data.synthetic import make_synthetic_dataset
from factmas.run.checkpoint import last_path
from factmas.trainer import train
import numpy as np

from factmas.trainer.loop import make_optimizer, scheduled_lr

TINY_MODEL = {"backbone": "small_cnn", "width": 8, "embed_dim": 16, "word_dim": 16, "fact_hidden": 32,
              "norm_groups": 4}


def test_sgd_momentum_steps_match_the_heavy_ball_formula():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    tc = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=0.01)
    opt = make_optimizer([w], tc)
    assert isinstance(opt, torch.optim.SGD)
    theta, v = w.detach().clone(), torch.zeros(5, dtype=torch.float64)
    for _ in range(3):                                  # naive: v ← μv + (g + λθ), θ ← θ − lr·v
        opt.zero_grad()
        (w ** 3).sum().backward()
        g = 3 * theta ** 2 + 0.01 * theta
        v = g if not v.any() else 0.9 * v + g
        theta = theta - 0.1 * v
        opt.step()
        torch.testing.assert_close(w.detach(), theta)
    assert isinstance(make_optimizer([w], TrainConfig()), torch.optim.Adam)   # the default
    with pytest.raises(ValueError, match="rmsprop"):
        make_optimizer([w], TrainConfig(optimizer="rmsprop"))


def test_unknown_optimizer_is_a_config_error():
    with pytest.raises(ConfigError, match="optimizer"):
        validate_config(RunConfig.from_dict({"train": {"optimizer": "rmsprop"}}))
    with pytest.raises(ConfigError, match="momentum"):
        validate_config(RunConfig.from_dict({"train": {"optimizer": "sgd", "momentum": 1.5}}))


def test_a_run_with_sgd(tmp_path):
    path = make_synthetic_dataset(tmp_path / "syn.h5", n_images=80, image_size=16, num_tasks=2)
    cfg = RunConfig.from_dict({"data": str(path), "out": str(tmp_path / "run"), "model": TINY_MODEL,
                               "train": {"split": "random2_seed0", "method": "mas", "epochs": 1,
                                         "batch_size": 32, "optimizer": "sgd", "lr": 0.01}})
    train(cfg)
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["config"]["train"]["optimizer"] == "sgd" and record["config"]["train"]["momentum"] == 0.9
    ckpt = torch.load(last_path(tmp_path / "run"), weights_only=True)
    state = ckpt["optimizer"]["state"]                 # SGD's state: a momentum buffer per parameter
    assert state and all("momentum_buffer" in s for s in state.values())


@pytest.mark.parametrize("total", [1, 7, 50])
def test_cosine_lr_matches_torchs_cosine_annealing(total):
    rng = np.random.default_rng(total)
    base = float(rng.uniform(1e-4, 1e-2))
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=base)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=0.0)
    for step in range(total):                          # the reference's lr at each step, then step it
        assert scheduled_lr(base, "cosine", step, total) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9)
        assert scheduled_lr(base, "constant", step, total) == base
        opt.step()
        ref.step()
    assert scheduled_lr(base, "cosine", total, total) == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ValueError, match="step"):
        scheduled_lr(base, "step", 0, total)
    with pytest.raises(ValueError, match="total"):
        scheduled_lr(base, "cosine", 0, 0)


def test_a_cosine_run_ends_each_task_near_zero_lr_and_differs_from_constant(tmp_path):
    path = make_synthetic_dataset(tmp_path / "syn.h5", n_images=80, image_size=16, num_tasks=2)
    finals = {}
    for schedule in ("constant", "cosine"):
        out = tmp_path / schedule
        cfg = RunConfig.from_dict({"data": str(path), "out": str(out), "model": TINY_MODEL,
                                   "eval": {"enabled": False},
                                   "train": {"split": "random2_seed0", "method": "finetune", "epochs": 2,
                                             "batch_size": 16, "lr": 0.01, "lr_schedule": schedule}})
        train(cfg)
        ckpt = torch.load(last_path(out), weights_only=True)
        lrs = [g["lr"] for g in ckpt["optimizer"]["param_groups"]]
        finals[schedule] = (lrs, ckpt["model"])
    assert finals["constant"][0] == [0.01]
    assert 0 < finals["cosine"][0][0] < 0.01 * 0.05       # the last step of a task: lr near 0
    differs = any(not torch.equal(a, finals["cosine"][1][k]) for k, a in finals["constant"][1].items()
                  if a.is_floating_point())
    assert differs
    with pytest.raises(ConfigError, match="lr_schedule"):
        validate_config(RunConfig.from_dict({"train": {"lr_schedule": "step"}}))
