"""eval/calibration_report.py on a tiny trained run: the val-chosen rows, test coverage, the foreign photos."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from factmas.config import ModelConfig, RunConfig
from factmas.data.synthetic import make_synthetic_dataset
from factmas.evaluation.calibration import load_calibrator, save_calibrator
from factmas.trainer import train

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cr")
    data = make_synthetic_dataset(root / "syn.h5", n_images=80, image_size=16, num_tasks=2)
    cfg = RunConfig(data=str(data), out=str(root / "run"),
                    model=ModelConfig(backbone="small_cnn", embed_dim=8, width=8, word_dim=8,
                                      fact_hidden=16, norm_groups=4))
    cfg.train.split, cfg.train.epochs, cfg.train.batch_size, cfg.train.device = "random2_seed0", 1, 16, "cpu"
    train(cfg, progress=False)
    return root / "run"


def _report(*args, expect=0):
    proc = subprocess.run([sys.executable, "eval/calibration_report.py", *map(str, args)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == expect, proc.stderr[-3000:]
    return proc


def test_report_rows_and_foreign_photos(run, tmp_path):
    cal = load_calibrator(run / "calibration.json")
    cal.threshold, cal.probability = 1.0, cal.probability * 0.9       # p* above every p: abstain
    save_calibrator(run / "calibration.json", cal)
    _report(run, "--out", tmp_path / "cal", "--targets", "0.3", "0.9")
    rep = json.loads((tmp_path / "cal.json").read_text())
    md = (tmp_path / "cal.md").read_text()
    r = rep["runs"][0]
    assert r["calibrator"] == "calibration.json" and r["threshold"] == 1.0
    assert [x["target"] for x in r["rows"]] == [None, 0.3, cal.meta["target_precision"], 0.9]
    none = r["rows"][0]
    assert none["test"]["coverage"] == 1.0 and none["test"]["shown"] == none["test"]["pairs"]
    for row in r["rows"][1:]:
        if row["reached"]:
            assert row["val"]["precision"] >= row["target"] - 1e-12
        assert 0 <= row["test"]["abstention"] <= 1
        assert row["test"]["pairs"] == none["test"]["pairs"]
    assert "| none (all top-k) |" in md and "test abstention" in md
    try:
        import skimage  # noqa: F401
    except ImportError:
        assert "scikit-image is not installed" in md
        return
    photos = r["ood"]["photos"]
    assert len(photos) >= 10 and all(x["abstain"] for x in photos)
    assert r["ood"]["abstention"] == 1.0 and "| astronaut | yes |" in md


def test_report_fits_in_memory_without_a_calibration_file(run, tmp_path):
    (run / "calibration.json").unlink()
    _report(run, "--out", tmp_path / "cal", "--no-ood")
    rep = json.loads((tmp_path / "cal.json").read_text())
    assert rep["runs"][0]["calibrator"].startswith("fitted now")
    assert not (run / "calibration.json").exists()                      # the run is not written
    assert np.isfinite(rep["runs"][0]["test_reliability"]["brier"])
    proc = _report(run, "--targets", "1.5", expect=2)
    assert "--targets" in proc.stderr
