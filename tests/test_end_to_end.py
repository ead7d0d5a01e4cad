"""End to end on real Flickr8k photos: data_prep → train with MAS on the default ImageNet
EfficientNet-Lite0 branch (feature cache) → FAISS evaluation → query.

Runs the real command lines as a user would, on a few hundred images and one epoch (< 3 minutes on
2 cores). The folder comes from FACTMAS_FLICKR8K (images/ and captions.txt). Without it the test is
skipped, except under CI=true, where missing data is a failure.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def _flickr8k() -> Path:
    folder = os.environ.get("FACTMAS_FLICKR8K", "")
    ok = folder and (Path(folder) / "captions.txt").is_file() and (
        (Path(folder) / "images").is_dir() or (Path(folder) / "Images").is_dir())
    if not ok:
        msg = f"FACTMAS_FLICKR8K={folder!r} is not a Flickr8k folder with images/ and captions.txt"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + " (required when CI=true)")
        pytest.skip(msg)
    return Path(folder)


def _run(*args: str, expect: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == expect, f"{args} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_flickr8k_subset_end_to_end(tmp_path: Path) -> None:
    src = _flickr8k()
    h5 = tmp_path / "flickr8k_small.h5"
    images_dir = src / "images" if (src / "images").is_dir() else src / "Images"   # Kaggle's spelling
    _run("-m", "data_prep.flickr8k", "--images", str(images_dir), "--captions",
         str(src / "captions.txt"), "--out", str(h5), "--limit-images", "400", "--min-images", "8")
    summary = _run("-m", "data_prep.inspect", str(h5)).stdout
    assert "random4_seed0" in summary

    run = tmp_path / "run_mas"
    _run("-m", "factmas.cli", "train", "--data", str(h5), "--split", "random4_seed0", "--method", "mas",
         "--reg-lambda", "1.0", "--epochs", "1", "--out", str(run))
    results = json.loads((run / "results.json").read_text())
    assert (run / "config.json").is_file() and (run / "results.md").is_file()
    assert list(run.glob("*.png")), "no plots written"
    text = json.dumps(results)
    assert "NaN" not in text
    ckpt = run / "checkpoints" / "last.pt"
    assert ckpt.is_file()
    assert len(list(Path(f"{h5}.features").glob("efficientnet_lite0-f6-*.npy"))) == 1
    assert results["baselines"]["frequency"]["image_to_fact_top5"]["final_all"] is not None
    assert 0 <= results["embedding_mean_cosine"]["task3"] < 1

    images = sorted(images_dir.iterdir())[:2]
    out = _run("-m", "factmas.cli", "query", "--run", str(run), *map(str, images), "--k", "3", "--json").stdout
    answers = json.loads(out)
    assert len(answers) == 2
    bad = _run("-m", "factmas.cli", "query", "--run", str(run), str(images[0]), str(tmp_path / "missing.jpg"),
               expect=1)
    assert "missing.jpg" in bad.stderr + bad.stdout
