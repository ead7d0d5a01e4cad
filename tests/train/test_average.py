"""``train.swa_start_epoch``: stochastic weight averaging within a task (factmas.trainer.average),
checked against the plain mean of the weights recorded after each averaged step."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from factmas.config import RunConfig, TrainConfig
from factmas.config_check import ConfigError, validate_config
from factmas.data.synthetic import make_synthetic_dataset
from factmas.run.checkpoint import stage_path
from factmas.trainer import train
from factmas.trainer.average import WeightAverage

TINY_MODEL = {"backbone": "small_cnn", "width": 8, "embed_dim": 16, "word_dim": 16, "fact_hidden": 32,
              "norm_groups": 4}


def test_the_average_is_the_mean_of_the_snapshots_and_leaves_frozen_weights(rng):
    torch.manual_seed(int(rng.integers(1 << 30)))
    model = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 3))
    model[1].bias.requires_grad_(False)
    avg = WeightAverage(model, start_epoch=1)
    snaps = []
    for _ in range(int(rng.integers(2, 7))):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        avg.update(model)
        snaps.append({n: p.detach().clone() for n, p in model.named_parameters()})
    with torch.no_grad():
        model[1].bias.fill_(7.0)                           # frozen: must stay as it is now
    assert avg.apply(model) == len(snaps) == avg.steps
    for n, p in model.named_parameters():
        if n == "1.bias":
            assert torch.equal(p, torch.full_like(p, 7.0))
        else:
            ref = torch.stack([s[n].double() for s in snaps]).mean(0)
            assert torch.allclose(p.double(), ref, atol=1e-6), n


def test_no_averaged_step_leaves_the_model_unchanged_and_epochs_count_from_one():
    model = nn.Linear(3, 2)
    before = [p.detach().clone() for p in model.parameters()]
    avg = WeightAverage(model, start_epoch=2)
    assert avg.apply(model) == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert [avg.averaging(e) for e in range(3)] == [False, True, True]
    with pytest.raises(ValueError, match="swa_start_epoch must be >= 1"):
        WeightAverage(model, start_epoch=0)


def test_a_task_ends_with_the_mean_of_the_weights_of_its_averaged_epochs(tmp_path, monkeypatch):
    """finetune, 2 tasks × 2 epochs, averaging epoch 2: each task's checkpoint holds the mean of the
    trainable weights recorded after each step of its second epoch; without SWA it does not."""
    path = make_synthetic_dataset(tmp_path / "syn.h5", n_images=80, image_size=16, num_tasks=2)
    recorded: list[list[dict]] = []
    update = WeightAverage.update

    def recording(self, model):
        if self.steps == 0:
            recorded.append([])
        recorded[-1].append({n: p.detach().clone() for n, p in model.named_parameters()
                             if p.requires_grad})
        update(self, model)
    monkeypatch.setattr(WeightAverage, "update", recording)
    outs = {}
    for swa in (None, 2):
        out = tmp_path / f"swa{swa}"
        cfg = RunConfig.from_dict({"data": str(path), "out": str(out), "model": TINY_MODEL,
                                   "eval": {"enabled": False},
                                   "train": {"split": "random2_seed0", "method": "finetune",
                                             "epochs": 2, "batch_size": 16, "lr": 0.01,
                                             "swa_start_epoch": swa}})
        train(cfg, progress=False)
        outs[swa] = out
    assert len(recorded) == 2 and all(len(r) > 1 for r in recorded)     # one mean per task
    for stage, snaps in enumerate(recorded):
        saved = torch.load(stage_path(outs[2], stage), weights_only=True)["model"]
        plain = torch.load(stage_path(outs[None], stage), weights_only=True)["model"]
        for n in snaps[0]:
            ref = torch.stack([s[n].double() for s in snaps]).mean(0)
            assert torch.allclose(saved[n].double(), ref, atol=1e-6), (stage, n)
        assert any(not torch.equal(saved[n], plain[n]) for n in snaps[0])


@pytest.mark.parametrize("value,match", [(0, "an integer >= 1 or null"), (1.5, "expected int")])
def test_a_bad_swa_start_epoch_is_refused_naming_the_key(value, match):
    with pytest.raises(ConfigError, match=f"swa_start_epoch.*{match}"):
        validate_config(RunConfig.from_dict({"train": {"swa_start_epoch": value}}))


def test_swa_is_on_by_default_and_a_start_after_the_last_epoch_averages_nothing(tmp_path, monkeypatch):
    """The default (SWA from epoch 2, chosen on val) averages with 2 epochs per task; with 1 epoch,
    or a start after the last epoch, no weights are averaged and the run equals SWA off."""
    assert TrainConfig().swa_start_epoch == 2
    validate_config(RunConfig.from_dict({"train": {"swa_start_epoch": 4, "epochs": 3}}))
    path = make_synthetic_dataset(tmp_path / "syn.h5", n_images=80, image_size=16, num_tasks=2)
    updates = []
    update = WeightAverage.update
    monkeypatch.setattr(WeightAverage, "update", lambda self, m: (updates.append(1), update(self, m)))
    saved = {}
    for name, train_extra in (("default_e1", {"epochs": 1}), ("off_e1", {"epochs": 1, "swa_start_epoch": None}),
                              ("default_e2", {"epochs": 2})):
        out = tmp_path / name
        updates.clear()
        cfg = RunConfig.from_dict({"data": str(path), "out": str(out), "model": TINY_MODEL,
                                   "eval": {"enabled": False},
                                   "train": {"split": "random2_seed0", "method": "finetune",
                                             "batch_size": 16, "lr": 0.01, **train_extra}})
        train(cfg, progress=False)
        saved[name] = (len(updates), torch.load(stage_path(out, 1), weights_only=True)["model"])
    assert saved["default_e1"][0] == 0 and saved["default_e2"][0] > 0
    a, b = saved["default_e1"][1], saved["off_e1"][1]
    assert all(torch.equal(a[n], b[n]) for n in a)
