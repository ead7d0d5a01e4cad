"""RunDir: the one reader/writer of a run directory (paths, config.json, checkpoints by stage)."""
from __future__ import annotations

import json
import math

import pytest

from factmas.config import RunConfig
from factmas.io import atomic_write_json, finite_or_none
from factmas.run.checkpoint import dumps_line, stage_of
from factmas.run.rundir import RunDir, RunDirError


def test_run_dir_config_meta_and_checkpoints(tmp_path):
    run = RunDir(tmp_path / "run")
    assert not run.holds_run() and run.meta() == {} and run.record() == {}
    assert run.latest_checkpoint() is None and run.stage_checkpoints() == []
    with pytest.raises(RunDirError, match="no config.json"):
        run.read_config()
    cfg = RunConfig(data="d.h5", out=str(run.path))
    cfg.train.method, cfg.train.seed, cfg.train.reg_lambda = "ewc", 3, 2.5
    run.prepare(cfg, command="test", data_fingerprint={"sha256": "ab" * 32})
    assert run.holds_run() and run.read_config()[0].train.method == "ewc"
    assert run.meta() == {"method": "ewc", "seed": 3, "split": "random4_seed0", "reg_lambda": 2.5,
                          "data_sha256": "ab" * 32}
    with pytest.raises(RunDirError, match="holds a run"):
        run.check_free()
    run.checkpoints.mkdir()
    for name in ("task0.pt", "task10.pt", "task2.pt", "last.pt", "taskx.pt", "task3.tmp"):
        (run.checkpoints / name).write_bytes(b"")
    assert [s for s, _ in run.stage_checkpoints()] == [0, 2, 10]
    assert run.latest_checkpoint() == run.stage_checkpoint(10)
    assert run.checkpoint() == run.last_checkpoint() == run.checkpoints / "last.pt"
    assert run.checkpoint("task2") == run.checkpoint("task2.pt") == run.stage_checkpoint(2)
    assert [stage_of(n) for n in ("task7.pt", "last.pt", "task.pt", "task7.npz")] == [7, None, None, None]


def test_one_nan_to_null_cleaner(tmp_path):
    obj = {"a": [1.0, float("nan"), (float("inf"), -float("inf"))], "b": {"c": 2, "d": "x"}}
    assert finite_or_none(obj) == {"a": [1.0, None, [None, None]], "b": {"c": 2, "d": "x"}}
    atomic_write_json(tmp_path / "r.json", obj)
    assert json.loads((tmp_path / "r.json").read_text()) == finite_or_none(obj)
    assert json.loads(dumps_line({"x": math.nan})) == {"x": None}
