"""Training on the image-disjoint split (disjoint{k}_seed{s}): each task trains on exactly its own
training images' pairs, and the run's results carry LFL's metric (factmas.evaluation.lfl)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from factmas.config import RunConfig
from factmas.data.dataset import read_dataset
from factmas.data.synthetic import make_synthetic_dataset
from factmas.evaluation.lfl import LFL_METRICS
from factmas.trainer import train

TINY_MODEL = {"backbone": "small_cnn", "width": 8, "embed_dim": 16, "word_dim": 16, "fact_hidden": 32,
              "norm_groups": 4}


@pytest.mark.parametrize("method", ["finetune", "mas"])
def test_training_on_the_disjoint_split(tmp_path, method):
    path = make_synthetic_dataset(tmp_path / "syn.h5", n_images=120, image_size=16, num_tasks=2)
    data = read_dataset(path)
    split = "disjoint2_seed0"
    cfg = RunConfig.from_dict({"data": str(path), "out": str(tmp_path / "run"), "model": TINY_MODEL,
                               "train": {"split": split, "method": method, "reg_lambda": 1.0,
                                         "epochs": 1, "batch_size": 32},
                               "eval": {"enabled": True}})
    train(cfg)
    events = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    seen = [e["pairs"] for e in events if e["event"] == "epoch"]
    want = [len(data.task_pairs(split, t, "train")) for t in range(2)]
    assert seen == want
    # fewer than the random split with the same facts' tasks, where images come back in task 2
    assert sum(want) < sum(len(data.task_pairs("random2_seed0", t, "train")) for t in range(2))
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["split"] == split
    for name in LFL_METRICS:
        R = np.array(res["metrics"][name]["R"], dtype=float)
        assert R.shape == (2, 2) and np.isfinite(R).all()
