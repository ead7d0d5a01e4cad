"""Atomic writes and strict configuration."""
from __future__ import annotations

import json
import os

import pytest

from factmas.config import ConfigError, RunConfig
from factmas.io import atomic_path, atomic_write_json, provenance


def test_atomic_path_leaves_old_file_on_error(tmp_path):
    target = tmp_path / "results.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-writ")
            raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no temporary left


def test_atomic_path_refuses_overwrite_and_uses_umask_mode(tmp_path):
    target = tmp_path / "x.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("one")
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(FileExistsError, match="--overwrite"):
        with atomic_path(target, overwrite=False):
            pass
    assert target.read_text() == "one"


def test_json_nan_is_null(tmp_path):
    atomic_write_json(tmp_path / "m.json", {"bwt": float("nan"), "r": [1.0, float("nan")]})
    assert json.loads((tmp_path / "m.json").read_text()) == {"bwt": None, "r": [1.0, None]}


def test_config_roundtrip_and_unknown_keys(tmp_path):
    cfg = RunConfig.from_dict({"train": {"epochs": 2, "reg_lambda": 3}, "loss": {"temperature": 0.2}})
    assert cfg.train.epochs == 2 and cfg.train.reg_lambda == 3.0 and cfg.loss.temperature == 0.2
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match=r"train\.epoch'"):
        RunConfig.from_dict({"train": {"epoch": 2}})
    with pytest.raises(ConfigError, match="train.epochs: expected int"):
        RunConfig.from_dict({"train": {"epochs": "2"}})
    bad = tmp_path / "c.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="c.json"):
        RunConfig.from_json(bad)


def test_provenance_has_versions_and_command():
    rec = provenance({"seed": 3})
    assert rec["seed"] == 3 and "torch" in rec["versions"] and rec["command"]
