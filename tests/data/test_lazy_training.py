"""A tiny training run (pixel backbone, evaluation on) gives the same figures and weights whether the
dataset's images are lazy (``H5Images``, the default) or one numpy array (``in_memory=True``)."""
from __future__ import annotations

import json

import numpy as np
import torch

from factmas.config import RunConfig
from factmas.data.dataset import read_dataset
from factmas.data.lazy_images import H5Images
from factmas.data.synthetic import make_synthetic_dataset
from factmas.run.checkpoint import last_path, load_checkpoint
from factmas.trainer import train

TINY_MODEL = {"backbone": "small_cnn", "width": 8, "embed_dim": 16, "word_dim": 16, "fact_hidden": 32,
              "norm_groups": 4}
TIMING = {"seconds", "images_per_s", "task_end_seconds", "stage_seconds", "timing"}


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def test_lazy_and_in_memory_images_train_identically(tmp_path):
    path = make_synthetic_dataset(tmp_path / "syn.h5", n_images=120, image_size=16, num_tasks=2)
    runs = {}
    for name, in_memory in (("memory", True), ("lazy", False)):
        data = read_dataset(path, in_memory=in_memory)
        assert isinstance(data.images, np.ndarray if in_memory else H5Images)
        out = tmp_path / name
        cfg = RunConfig.from_dict({"data": str(path), "out": str(out), "model": TINY_MODEL,
                                   "train": {"split": "random2_seed0", "method": "mas", "reg_lambda": 1.0,
                                             "epochs": 1, "batch_size": 16},
                                   "eval": {"enabled": True}})
        torch.manual_seed(0)
        train(cfg, progress=False, data=data)
        metrics = [_strip(json.loads(line)) for line in (out / "metrics.jsonl").read_text().splitlines()]
        state = load_checkpoint(last_path(out))
        runs[name] = (metrics, state)
    (m_mem, s_mem), (m_lazy, s_lazy) = runs["memory"], runs["lazy"]
    assert m_mem == m_lazy and any("retrieval" in json.dumps(r) for r in m_lazy)
    weights = [k for k, v in s_mem["model"].items() if torch.is_tensor(v)]
    assert weights and all(torch.equal(s_mem["model"][k], s_lazy["model"][k]) for k in weights)
