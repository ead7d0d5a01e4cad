"""``train.optimizer``: Adam (default) or SGD with momentum 0.9 (the official MAS / LFL code)."""
from __future__ import annotations

import json

import pytest
import torch

from factmas.config import RunConfig, TrainConfig
from factmas.config_check import ConfigError, validate_config
from factmas.data.synthetic import make_synthetic_dataset
from factmas.run.checkpoint import last_path
from factmas.train import train
from factmas.train.loop import make_optimizer

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
