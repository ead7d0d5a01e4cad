"""``train.num_workers`` on 2 gloo processes: each rank's DataLoader workers read that rank's rows of
the global batch (``RowShare.host``, the rank fixed before the fork) and the run equals the run
without workers, bit for bit (weights, Ω, results.json)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from factmas.data.synthetic import make_synthetic_dataset

from test_distributed import ABORT, CONFIG, WORKER, numbers, run, torchrun  # this folder's launch helpers


def _launch(data: Path, root: Path, workers: int) -> Path:
    cfg = json.loads(json.dumps(CONFIG))
    cfg["train"]["num_workers"] = workers
    cfg["train"]["epochs"] = 1
    config = root / f"config{workers}.json"
    config.write_text(json.dumps(cfg))
    out = root / f"w{workers}"
    p = run(torchrun(str(WORKER), str(data), str(config), str(out), "mas"))
    if p.returncode != 0 and ABORT in p.stdout + p.stderr:      # see test_distributed.setup
        p = run(torchrun(str(WORKER), str(data), str(config), str(root / f"w{workers}b"), "mas"))
        out = root / f"w{workers}b"
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return out / "mas"


def test_two_processes_with_workers_equal_two_without(tmp_path):
    data = make_synthetic_dataset(tmp_path / "syn.h5", n_images=64, image_size=32, num_tasks=2)
    a, b = _launch(data, tmp_path, 0), _launch(data, tmp_path, 2)
    for stage in (0, 1):
        ca = torch.load(a / "checkpoints" / f"task{stage}.pt", weights_only=True)
        cb = torch.load(b / "checkpoints" / f"task{stage}.pt", weights_only=True)
        assert all(torch.equal(t, cb["model"][k]) for k, t in ca["model"].items())
        assert ca["method"] and all(torch.equal(t, cb["method"][k]) for k, t in ca["method"].items())
    ra = dict(numbers(json.loads((a / "results.json").read_text())))
    rb = dict(numbers(json.loads((b / "results.json").read_text())))
    assert len(ra) > 20 and ra == pytest.approx(rb, abs=0, nan_ok=True)
    assert '"num_workers": 2' in (b / "config.json").read_text()
