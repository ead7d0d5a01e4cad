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


# ---- method options: train.options.<method>, and the old flat keys of earlier versions ----------

def _recorded_configs() -> list:
    from pathlib import Path
    root = Path(__file__).resolve().parents[1] / "docs" / "results"
    return sorted(root.rglob("config.json"))


def test_every_recorded_config_json_loads_with_its_methods_complete_options():
    """docs/results/**/config.json were written with the flat keys (omega_*, ewc_gamma, si_xi): each
    loads, and its method's section equals what a run records now (``resolve_options``)."""
    import copy
    from factmas.methods import resolve_options
    paths = _recorded_configs()
    assert len(paths) > 50
    methods = set()
    for path in paths:
        rec = json.loads(path.read_text(encoding="utf-8"))
        cfg = RunConfig.from_dict(rec.get("config", rec))
        tc = cfg.train
        assert list(tc.options) == ([tc.method] if tc.method not in ("finetune", "joint", "lwf")
                                    else []), path
        resolved = copy.deepcopy(tc)
        resolve_options(resolved)
        assert resolved.options == tc.options, path       # nothing missing, nothing foreign
        old = rec.get("config", rec)["train"]
        if tc.method in ("mas", "l-mas") and "omega_data" in old:
            assert tc.options[tc.method]["data"] == old["omega_data"], path
            assert tc.options[tc.method]["output"] == old.get("omega_output", "raw"), path
        methods.add(tc.method)
    assert {"mas", "finetune", "joint", "ewc", "si", "lwf", "l-mas"} <= methods


def test_new_form_roundtrips_and_old_keys_equal_the_new_form(tmp_path):
    old = RunConfig.from_dict({"train": {"method": "ewc", "ewc_gamma": 0.9, "omega_alpha": 0.3,
                                         "omega_accumulate": "alpha", "omega_data": "train",
                                         "si_xi": 0.1}})
    new = RunConfig.from_dict({"train": {"method": "ewc", "options": {"ewc": {
        "gamma": 0.9, "alpha": 0.3, "accumulate": "alpha", "max_samples": None}}}})
    assert old.to_dict() == new.to_dict()
    path = tmp_path / "c.json"
    path.write_text(json.dumps(new.to_dict()))
    assert RunConfig.from_json(path) == new
    assert "ewc_gamma" not in json.dumps(new.to_dict())           # new runs write the new form


def test_old_key_beside_the_new_section_must_agree():
    with pytest.raises(ConfigError, match=r"train.ewc_gamma = 0.5 and train.options.ewc.gamma = 0.9"):
        RunConfig.from_dict({"train": {"method": "ewc", "ewc_gamma": 0.5,
                                       "options": {"ewc": {"gamma": 0.9}}}})


@pytest.mark.parametrize("options, words", [
    ({"mas": {"gama": 1.0}}, ["unknown key 'train.options.mas.gama'", "accumulate"]),
    ({"mas": {"alpha": "half"}}, ["train.options.mas.alpha: expected float"]),
    ({"mas": {"data": "dev"}}, ["train.options.mas.data (--omega-data)", "'dev'"]),
    ({"ewc": {"max_samples": 0}}, ["train.options.ewc.max_samples (--omega-max-samples)", ">= 1"]),
    ({"si": {"xi": -1}}, ["train.options.si.xi (--si-xi)", "> 0"]),
    ({"nosuch": {}}, ["train.options.nosuch: unknown method"]),
    ({"mas": 3}, ["train.options.mas: expected an object"]),
])
def test_bad_method_options_are_named_before_work_starts(options, words):
    """Every section is checked by its method's Options (also a section the run's method ignores)."""
    from factmas.config_check import validate_config
    cfg = RunConfig.from_dict({"train": {"method": "finetune", "options": options}})
    with pytest.raises(ConfigError) as e:
        validate_config(cfg)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_the_old_key_table_names_options_of_the_methods_that_read_them():
    """``LEGACY_OPTION_KEYS`` (frozen history) maps onto fields the reading methods still have, with
    the defaults they still have (so an old config.json means what it meant)."""
    import dataclasses
    from factmas.config import LEGACY_OPTION_KEYS
    from factmas.methods import METHODS
    for key, (name, default, readers) in LEGACY_OPTION_KEYS.items():
        for method in readers:
            fields = {f.name: f for f in dataclasses.fields(METHODS[method].Options)}
            assert name in fields and fields[name].default == default, (key, method)
            assert fields[name].metadata["flag"] == key.replace("_", "-"), (key, method)
    with pytest.raises(ConfigError, match="train.options: expected an object"):
        RunConfig.from_dict({"train": {"omega_data": "test", "options": ["mas"]}})
