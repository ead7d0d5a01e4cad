"""Checkpoints, the metrics log and the trainer's batches (factmas.run.checkpoint/rundir/batches)."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from factmas.data.dataset import read_dataset
from factmas.data.synthetic import make_synthetic_dataset
from factmas.data.experience import PairIndex
from factmas.trainer.batches import Batcher, batch_bounds, make_rng, stage_seed
from factmas.run.checkpoint import (CheckpointError, last_path, latest_checkpoint, load_checkpoint,
                                    plain, save_checkpoint, stage_path)
from factmas.run.rundir import MetricsLog, RunDirError


class _Method:
    name = "mas"

    def __init__(self, state):
        self._state = state

    def state_dict(self):
        return self._state


def _trained_model_and_adam(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.GroupNorm(2, 4), torch.nn.Linear(4, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 5)).pow(2).mean().backward()
        opt.step()
    return model, opt


def test_round_trip_with_weights_only(tmp_path):
    model, opt = _trained_model_and_adam()
    omega = {f"omega.{n}": torch.rand_like(p) for n, p in model.named_parameters()}
    history = [{"label": "initial", "val_loss": [np.float32(1.5), None, float("nan")],
                "retrieval": {"map": np.array([0.1, 0.2]), "n": np.int64(3)}}]
    path = save_checkpoint(tmp_path, 2, model=model, optimizer=opt, method=_Method(omega),
                           completed_tasks=[0, 1, 2], config={"train": {"lr": 0.01}},
                           history=history, metrics_lines=7)
    assert path == stage_path(tmp_path, 2) and last_path(tmp_path).is_file()
    state = load_checkpoint(path)
    assert state["stage"] == 2 and state["completed_tasks"] == [0, 1, 2] and state["metrics_lines"] == 7
    for k, v in model.state_dict().items():
        assert torch.equal(state["model"][k], v)
    for k, v in omega.items():
        assert torch.equal(state["method"][k], v)
    opt2 = torch.optim.Adam(model.parameters(), lr=1e-2)
    opt2.load_state_dict(state["optimizer"])
    for a, b in zip(opt.state.values(), opt2.state.values()):
        assert all(torch.equal(a[k], b[k]) for k in ("exp_avg", "exp_avg_sq"))
    row = state["history"][0]
    assert row["val_loss"][0] == 1.5 and row["val_loss"][1] is None and math.isnan(row["val_loss"][2])
    assert row["retrieval"] == {"map": [pytest.approx(0.1), pytest.approx(0.2)], "n": 3}
    assert not list(tmp_path.glob("checkpoints/.*.tmp"))


def test_plain_rejects_objects():
    assert plain({1: (np.int32(2), torch.tensor([1.0]))}) == {"1": [2, [1.0]]}
    with pytest.raises(TypeError, match="cannot store a object"):
        plain({"x": object()})


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pt: not a factmas checkpoint .*starts with b'not '"):
        load_checkpoint(bad)
    bad.write_bytes(b"PK\x03\x04 a damaged zip")             # looks like one, cannot be read
    with pytest.raises(CheckpointError, match="garbage.pt: cannot read"):
        load_checkpoint(bad)
    other = tmp_path / "other.pt"
    torch.save({"model": {}}, other)
    with pytest.raises(CheckpointError, match="not a factmas checkpoint"):
        load_checkpoint(other)
    torch.save({"format": "factmas-checkpoint", "version": 1, "stage": 0}, other)
    with pytest.raises(CheckpointError, match="lacks key 'completed_tasks'"):
        load_checkpoint(other)


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, opt = _trained_model_and_adam()
    args = dict(model=model, optimizer=opt, method=_Method({}), completed_tasks=[0], config={},
                history=[], metrics_lines=1)
    save_checkpoint(tmp_path, 0, **args)
    before = last_path(tmp_path).read_bytes()

    def broken_save(obj, f):            # serializing fails half-way (into memory since issue 30)
        f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, 1, **args)
    monkeypatch.undo()

    def full(fd):                        # the file write fails: the error names the checkpoint
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space") as e:
        save_checkpoint(tmp_path, 1, **args)
    assert e.value.errno == 28 and e.value.filename == str(stage_path(tmp_path, 1))
    assert last_path(tmp_path).read_bytes() == before
    assert not stage_path(tmp_path, 1).exists()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.pt", "task0.pt"]


def test_latest_checkpoint_is_numeric(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    d = tmp_path / "checkpoints"
    d.mkdir()
    for name in ("task2.pt", "task10.pt", "task9.pt", "last.pt", "taskX.pt"):
        (d / name).write_bytes(b"")
    assert latest_checkpoint(tmp_path).name == "task10.pt"


def test_metrics_log_truncate(tmp_path):
    m = MetricsLog(tmp_path)
    for i in range(4):
        m.append({"i": i, "loss": float("nan") if i == 3 else 0.5})
    assert [r["i"] for r in m.read()] == [0, 1, 2, 3] and m.read()[3]["loss"] is None
    m.truncate(2)
    assert [r["i"] for r in m.read()] == [0, 1] and m.lines == 2
    with pytest.raises(RunDirError, match="has 2 lines, the checkpoint expects 5"):
        m.truncate(5)


# ---- batches ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = make_synthetic_dataset(tmp_path_factory.mktemp("d") / "syn.h5", n_images=60, image_size=16)
    return read_dataset(path)


def test_positive_matrix_against_brute_force(data):
    idx = PairIndex(data.pairs, data.num_facts)
    truth = {(int(i), int(f)) for i, f in data.pairs}
    rng = np.random.default_rng(1)
    img, fact = rng.integers(0, len(data.images), 40), rng.integers(0, data.num_facts, 40)
    img[:10], fact[:10] = data.pairs[:10, 0], data.pairs[:10, 1]      # some true pairs for sure
    pos = idx.positive_matrix(img, fact)
    want = np.array([[(int(i), int(f)) in truth for f in fact] for i in img])
    assert pos.dtype == bool and pos.shape == (40, 40) and pos.any()
    np.testing.assert_array_equal(pos, want)


def test_pair_batches_cover_each_pair_once_and_are_seeded(data):
    b = Batcher(data)
    pairs = data.task_pairs("random2_seed0", 0, "train")

    def epoch(seed, ep):
        return [(bt["image_idx"].numpy(), bt["fact_idx"].numpy())
                for bt in b.pair_batches(pairs, 16, make_rng(seed, 0, ep))]

    e0 = epoch(0, 0)
    got = np.concatenate([np.stack(x, 1) for x in e0])
    assert sorted(map(tuple, got)) == sorted(map(tuple, pairs.tolist()))
    assert all(np.array_equal(a[0], c[0]) for a, c in zip(e0, epoch(0, 0)))
    assert not np.array_equal(np.concatenate([x[1] for x in e0]),
                              np.concatenate([x[1] for x in epoch(0, 1)]))
    batch = next(b.pair_batches(pairs, 16, make_rng(0, 0, 0)))
    assert batch["images"].dtype == torch.float32 and batch["images"].shape == (16, 3, 16, 16)
    assert batch["tokens"].dtype == torch.int64 and batch["tokens"].shape[:2] == (16, 3)
    assert batch["order"].dtype == torch.int64 and batch["positive"].dtype == torch.bool
    assert bool(batch["positive"].diagonal().all())


def test_batch_bounds_and_seeds():
    assert batch_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert batch_bounds(9, 4) == [(0, 4), (4, 9)]          # a trailing single pair joins the last batch
    assert batch_bounds(1, 4) == [(0, 1)] and batch_bounds(0, 4) == []
    assert stage_seed(0, 1) == stage_seed(0, 1) != stage_seed(0, 2) != stage_seed(1, 2)


def test_config_json_roundtrip(tmp_path):
    from factmas.config import RunConfig
    from factmas.run.rundir import prepare_run_dir, read_run_config
    cfg = RunConfig(data="x.h5", out=str(tmp_path))
    cfg.train.seed = 5
    prepare_run_dir(tmp_path, cfg, command="factmas train ...", data_provenance={"source": "s"})
    back, record = read_run_config(tmp_path)
    assert back == cfg and record["seed"] == 5 and record["data_provenance"] == {"source": "s"}
    assert "torch" in record["versions"] and record["command"] == "factmas train ..."
    json.loads((tmp_path / "config.json").read_text())
