"""TensorBoard events (train.tensorboard, ``factmas train --tensorboard``): read back with
TensorBoard's EventAccumulator, the tags, steps and values agree with the run's own records;
without the tensorboard package the setting is refused (exit 2) before any work."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from factmas import config_check  # noqa: E402
from factmas.cli.train import main  # noqa: E402
from factmas.config import ConfigError, RunConfig  # noqa: E402
from factmas.data.synthetic import make_synthetic_dataset  # noqa: E402
from factmas.trainer import resume, train  # noqa: E402
from factmas.trainer.tensorboard import r_matrix  # noqa: E402

TINY_MODEL = {"backbone": "small_cnn", "width": 8, "embed_dim": 8, "word_dim": 8, "fact_hidden": 16,
              "norm_groups": 4}
PARTS = ("total", "task", "penalty", "extra", "regression", "contrastive")


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("tb") / "syn.h5", n_images=80,
                                  image_size=16, num_tasks=2)


def _cfg(data_path, out, **train) -> RunConfig:
    t = {"split": "random2_seed0", "method": "mas", "epochs": 2, "batch_size": 16, "device": "cpu",
         "tensorboard": True, **train}
    return RunConfig.from_dict({"data": str(data_path), "out": str(out), "model": TINY_MODEL, "train": t})


def _events(run_dir) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _jsonl(run_dir, event):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if r["event"] == event]


def test_events_hold_loss_parts_speed_metrics_per_task_and_r(data_path, tmp_path):
    out = tmp_path / "run"
    train(_cfg(data_path, out), progress=False)
    acc = _events(out)
    scalars, images = set(acc.Tags()["scalars"]), set(acc.Tags()["images"])
    assert {f"loss/{p}" for p in PARTS} <= scalars
    assert {"epoch/loss_total", "epoch/loss_task", "epoch/penalty", "speed/images_per_s"} <= scalars
    for m in ("fact_to_image_map", "fact_to_image_map_at_k", "image_to_fact_top1", "image_to_fact_top5",
              "image_to_fact_map"):
        assert {f"{m}/T1", f"{m}/T2", f"{m}/all"} <= scalars, m
    assert {"val_loss/T1", "val_loss/T2"} <= scalars
    assert images == {"R/fact_to_image_map"}

    epochs = _jsonl(out, "epoch")
    steps = sum(e["steps"] for e in epochs)
    total = acc.Scalars("loss/total")
    assert [e.step for e in total] == list(range(1, steps + 1))       # one per optimizer step
    speed = acc.Scalars("speed/images_per_s")
    assert [e.value for e in speed] == pytest.approx([e["images_per_s"] for e in epochs], rel=1e-5)
    assert [e.step for e in speed] == list(np.cumsum([e["steps"] for e in epochs]))
    ep_loss = [e.value for e in acc.Scalars("epoch/loss_total")]
    assert ep_loss == pytest.approx([e["train_total"] for e in epochs], rel=1e-5)
    # the per-step values average (weighted by batch) to the epoch's mean
    first = [e.value for e in total[:epochs[0]["steps"]]]
    assert np.mean(first) == pytest.approx(epochs[0]["train_total"], rel=0.2)

    res = json.loads((out / "results.json").read_text())["metrics"]["fact_to_image_map"]
    got = {e.step: e.value for e in acc.Scalars("fact_to_image_map/all")}
    assert sorted(got) == [0, 1, 2]                                   # initial, after task 1, 2
    assert got[0] == pytest.approx(res["initial_all"], abs=1e-6)
    assert [got[1], got[2]] == pytest.approx(res["all"], abs=1e-6)
    t1 = {e.step: e.value for e in acc.Scalars("fact_to_image_map/T1")}
    assert [t1[1], t1[2]] == pytest.approx([r[0] for r in res["R"]], abs=1e-6)
    r_img = acc.Images("R/fact_to_image_map")
    assert [e.step for e in r_img] == [1, 2] and all(e.width > 50 and e.height > 50 for e in r_img)


def test_a_resumed_run_continues_the_step_count_without_repeats(data_path, tmp_path):
    out = tmp_path / "run"
    train(_cfg(data_path, out, epochs=1), progress=False, limit_tasks=1)
    first = len(_events(out).Scalars("loss/total"))
    resume(out, progress=False)
    steps = [e.step for e in _events(out).Scalars("loss/total")]
    assert first > 0 and sorted(steps) == list(range(1, len(steps) + 1))
    assert len(steps) == sum(e["steps"] for e in _jsonl(out, "epoch"))
    assert sorted(e.step for e in _events(out).Scalars("fact_to_image_map/all")) == [0, 1, 2]


def test_off_by_default_writes_no_events(data_path, tmp_path):
    assert RunConfig().train.tensorboard is False
    out = tmp_path / "run"
    train(_cfg(data_path, out, epochs=1, tensorboard=False), progress=False, limit_tasks=1)
    assert not (out / "tensorboard").exists()


def test_r_matrix_from_rows_with_json_keys():
    rows = [{"stage": -1, "retrieval": {"m": {"0": 0.1, "1": 0.2, "all": 0.15}}},
            {"stage": 0, "retrieval": {"m": {"0": 0.5, "1": None, "all": 0.4}}},
            {"stage": 1, "retrieval": {"m": {0: 0.3, 1: 0.6, "all": 0.45}}}]
    np.testing.assert_array_equal(r_matrix(rows, "m", 2), [[0.5, np.nan], [0.3, 0.6]])


def test_without_tensorboard_installed_the_key_and_flag_are_refused(data_path, tmp_path, monkeypatch,
                                                                    capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match=r"train\.tensorboard \(--tensorboard\).*factmas\[tb\]"):
        config_check.validate_config(_cfg(data_path, tmp_path / "x"))
    config_check.validate_config(_cfg(data_path, tmp_path / "x", tensorboard=False))     # off: fine
    out = tmp_path / "cli"
    assert main(["--data", str(data_path), "--split", "random2_seed0", "--out", str(out), "--epochs", "1",
                 "--backbone", "small_cnn", "--tensorboard", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "tensorboard" in err and "pip install 'factmas[tb]'" in err and "Traceback" not in err
    assert not out.exists()                                           # refused before any work
    with pytest.raises(ConfigError, match=r"train\.tensorboard: expected bool"):
        RunConfig.from_dict({"train": {"tensorboard": "yes"}})
