"""``factmas query`` on a run written in the trainer's formats: PNG with alpha, grayscale JPEG, bad files."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from factmas.cli import query
from factmas.config import ModelConfig, RunConfig
from factmas.data.dataset import read_dataset
from factmas.methods import make_method
from factmas.model import build_model, load_image_file, preprocess
from factmas.space import wildcard_distance
from factmas.data.synthetic import make_synthetic_dataset
from factmas.run.checkpoint import save_checkpoint
from factmas.run.rundir import prepare_run_dir


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run directory with config.json and checkpoints/last.pt of a random tiny model."""
    root = tmp_path_factory.mktemp("q")
    data_path = make_synthetic_dataset(root / "syn.h5", n_images=40, image_size=24, num_tasks=2)
    cfg = RunConfig(data=str(data_path), out=str(root / "run"),
                    model=ModelConfig(backbone="small_cnn", embed_dim=8, width=8, word_dim=8, fact_hidden=16, norm_groups=4))
    cfg.train.split = "random2_seed0"
    prepare_run_dir(cfg.out, cfg, command="test")
    data = read_dataset(data_path, load_images=False)
    torch.manual_seed(int(np.random.default_rng().integers(1 << 31)))
    model = build_model(cfg.model, len(data.vocab))
    save_checkpoint(cfg.out, 0, model=model, optimizer=torch.optim.Adam(model.parameters()),
                    method=make_method("finetune"), completed_tasks=[0], config=cfg.to_dict(),
                    history=[], metrics_lines=0)
    rng = np.random.default_rng()
    rgba = root / "alpha.png"
    Image.fromarray(rng.integers(0, 256, (37, 50, 4), dtype=np.uint8), "RGBA").save(rgba)
    gray = root / "gray.jpg"
    Image.fromarray(rng.integers(0, 256, (61, 29), dtype=np.uint8), "L").save(gray, "JPEG")
    broken = root / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return {"root": root, "run": cfg.out, "model": model.eval(), "data": data,
            "images": [str(rgba), str(gray)], "broken": str(broken), "missing": str(root / "no.png")}


def _brute_force_topk(run, path, k):
    with torch.no_grad():
        x = preprocess(load_image_file(path, 24)[None])      # mean with the mirror image (flip_average)
        phi = (run["model"].image_branch(x) + run["model"].image_branch(torch.flip(x, dims=[3]))) / 2
        order = torch.as_tensor(run["data"].order.astype(np.int64))
        psi = run["model"].fact_branch(torch.as_tensor(run["data"].tokens.astype(np.int64)), order)
    d, i = torch.topk(wildcard_distance(phi, psi, order)[0], k, largest=False)
    return d.numpy(), i.numpy()


def test_query_png_alpha_and_gray_jpeg_json(run, capsys):
    status = query.main(["--run", run["run"], *run["images"], "--k", "4", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert status == 0
    assert [r["image"] for r in out] == run["images"]
    for r, path in zip(out, run["images"]):
        d_ref, i_ref = _brute_force_topk(run, path, 4)
        assert [f["fact_id"] for f in r["facts"]] == list(i_ref)
        np.testing.assert_allclose([f["distance"] for f in r["facts"]], d_ref, atol=1e-5)
        f = r["facts"][0]
        assert f["text"] == run["data"].fact_text(f["fact_id"]) and f["text"].startswith("<")


def test_query_text_output_and_bad_images(run, capsys):
    status = query.main(["--run", run["run"], run["broken"], run["images"][1], run["missing"],
                         "--k", "3"])
    cap = capsys.readouterr()
    assert status == 1
    assert run["broken"] in cap.err and run["missing"] in cap.err and "2 of 3" in cap.err
    lines = cap.out.splitlines()
    assert "wildcard distance" in lines[0] and "smaller = closer" in lines[0]   # the number's meaning
    assert lines[1] == run["images"][1] and len(lines) == 5          # the good image, 3 facts
    assert lines[2].strip().startswith("1. <")


def test_query_k_beyond_facts_and_bad_run(run, tmp_path, capsys):
    n = run["data"].num_facts
    assert query.main(["--run", run["run"], run["images"][0], "--k", str(n + 50), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["facts"]) == n
    assert query.main(["--run", str(tmp_path), run["images"][0]]) == 2
    assert "config.json" in capsys.readouterr().err
    assert query.main(["--run", run["run"], run["images"][0], "--checkpoint", "task7"]) == 2
    assert "task7.pt" in capsys.readouterr().err
    assert query.main(["--run", run["run"], run["images"][0], "--data", str(tmp_path / "x.h5")]) == 2
    assert "x.h5" in capsys.readouterr().err


# ---- calibrated confidence (factmas calibrate, calibration.json) --------------------------------

def _calibrated(run, threshold=None):
    """Fit the run's calibrator with `factmas calibrate`; optionally force its threshold p*."""
    from factmas.cli import calibrate
    from factmas.evaluation.calibration import load_calibrator, save_calibrator
    assert calibrate.main(["--run", run["run"], "--k", "3"]) == 0
    path = f"{run['run']}/calibration.json"
    cal = load_calibrator(path)
    if threshold is not None:
        cal.threshold = threshold
        cal.probability = cal.probability * 0.9          # p ≤ 0.9 < p* = 1 whatever was fitted
        save_calibrator(path, cal)
    return cal


def test_calibrate_writes_json_fitted_on_val_for_these_weights(run, capsys):
    from factmas.evaluation.calibration_fit import weights_sha256
    cal = _calibrated(run)
    assert "wrote" in capsys.readouterr().out
    raw = json.loads(open(f"{run['run']}/calibration.json", encoding="utf-8").read())
    n_val = int((run["data"].image_split == 1).sum())
    assert raw["image_split"] == "val" and raw["fitted_on"]["images"] == n_val
    assert raw["fitted_on"]["pairs"] == n_val * 3 and raw["fitted_on"]["k"] == 3
    assert raw["weights_sha256"] == weights_sha256(run["model"].state_dict())
    assert raw["checkpoint"] == "last.pt" and raw["data_sha256"]
    assert 0 <= cal.threshold <= 1


def test_query_json_carries_probabilities(run, capsys):
    cal = _calibrated(run)
    capsys.readouterr()
    assert query.main(["--run", run["run"], *run["images"], "--k", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for r in out:
        p = [f["probability"] for f in r["facts"]]
        np.testing.assert_allclose(p, cal.predict([f["distance"] for f in r["facts"]]))
        assert p == sorted(p, reverse=True)             # closer facts are no less likely
        assert r["threshold"] == cal.threshold and r["abstain"] == (max(p) < cal.threshold)


def test_query_abstains_below_the_threshold(run, capsys):
    _calibrated(run, threshold=1.0)                      # nothing reaches p* = 1 ...
    capsys.readouterr()
    assert query.main(["--run", run["run"], run["images"][0], "--k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "p:" in lines[0] and "not shown" in lines[0]
    assert lines[1] == run["images"][0] and len(lines) == 3
    assert lines[2].startswith("  no known fact fits this photo (best: <") and ", p = 0." in lines[2]
    assert query.main(["--run", run["run"], run["images"][0], "--k", "3", "--all"]) == 0
    lines = capsys.readouterr().out.splitlines()       # --all: the 3 facts with p, then the verdict
    assert len(lines) == 6 and all("p = " in s for s in lines[2:5])
    _calibrated(run, threshold=0.0)                      # ... and everything reaches p* = 0
    capsys.readouterr()
    assert query.main(["--run", run["run"], run["images"][0], "--k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and "no known fact" not in "".join(lines)
    assert lines[2].strip().startswith("1. <") and "D = " in lines[2] and "p = " in lines[2]


@pytest.mark.parametrize("content, why", [
    ('{"format": "factmas-calibration/1", "distance": [0.', "not JSON"),
    ('{"format": "factmas-calibration/1", "distance": [1, 0], "probability": [0.5, 0.4], '
     '"threshold": 0.5}', "increasing order"),
])
def test_broken_or_missing_calibration_gives_a_note_not_a_traceback(run, capsys, content, why):
    path = f"{run['run']}/calibration.json"
    with open(path, "w", encoding="utf-8") as f:
        f.write(content)
    assert query.main(["--run", run["run"], run["images"][0], "--json"]) == 0
    cap = capsys.readouterr()
    assert "calibration.json" in cap.err and why in cap.err and "factmas calibrate" in cap.err
    r = json.loads(cap.out)[0]
    assert r["abstain"] is None and all(f["probability"] is None for f in r["facts"])
    import os
    os.remove(path)
    assert query.main(["--run", run["run"], run["images"][0]]) == 0
    cap = capsys.readouterr()
    assert "no calibration" in cap.err and "Traceback" not in cap.err


def test_calibration_of_other_weights_is_not_used(run, tmp_path, capsys):
    _calibrated(run)
    import shutil
    other = tmp_path / "other.json"
    shutil.copy(f"{run['run']}/calibration.json", other)
    raw = json.loads(other.read_text())
    raw["weights_sha256"] = "0" * 64
    other.write_text(json.dumps(raw))
    capsys.readouterr()
    assert query.main(["--run", run["run"], run["images"][0], "--json", "--calibration",
                       str(other)]) == 0
    cap = capsys.readouterr()
    assert "other weights" in cap.err and json.loads(cap.out)[0]["facts"][0]["probability"] is None


def test_calibrate_bad_options_exit_2(run, tmp_path, capsys):
    from factmas.cli import calibrate
    assert calibrate.main(["--run", run["run"], "--target-precision", "1.5"]) == 2
    assert "--target-precision" in capsys.readouterr().err
    assert calibrate.main(["--run", run["run"], "--k", "0"]) == 2
    assert "--k" in capsys.readouterr().err
    assert calibrate.main(["--run", str(tmp_path)]) == 2
    assert "config.json" in capsys.readouterr().err
