"""Joint training (the upper bound): one stage on the union of all tasks' training pairs, one row of R."""
from __future__ import annotations

import json
import re

import numpy as np

from factmas.config import RunConfig
from factmas.data.dataset import read_dataset
from factmas.data.experience import experiences
from factmas.methods import Joint, make_method
from factmas.evaluation.report import read_results
from factmas.data.synthetic import make_synthetic_dataset
from factmas.trainer import plan_stages, resume, train
from factmas.run.checkpoint import last_path, load_checkpoint

TINY_MODEL = {"backbone": "small_cnn", "width": 8, "embed_dim": 16, "word_dim": 16, "fact_hidden": 32, "norm_groups": 4}


def test_plan_stages_joint_is_one_merged_experience_of_all_tasks(tmp_path):
    path = make_synthetic_dataset(tmp_path / "syn.h5", n_images=80, image_size=16, num_tasks=3)
    data = read_dataset(path)
    tasks = experiences(data, "random3_seed0")
    assert [(s.index, s.tasks) for s in plan_stages(make_method("joint"), tasks)] == [(0, [0, 1, 2])]
    assert [(s.index, s.tasks) for s in plan_stages(make_method("mas"), tasks)] == [(0, [0]), (1, [1]), (2, [2])]
    assert type(make_method("joint", 5.0)) is Joint
    joint = plan_stages(make_method("joint"), tasks)[0]
    for which in ("train", "val", "test"):       # the merged experience is the one built for all tasks
        assert np.array_equal(joint.pairs[which], data.task_pairs("random3_seed0", [0, 1, 2], which))
        assert np.array_equal(joint.images[which], np.unique(joint.pairs[which][:, 0]))
        for t in range(3):
            assert np.array_equal(tasks[t].pairs[which], data.task_pairs("random3_seed0", t, which))
    assert np.array_equal(joint.facts, np.sort(np.concatenate([t.facts for t in tasks])))


def test_joint_trains_on_the_union_and_reports_one_row(tmp_path):
    path = make_synthetic_dataset(tmp_path / "syn.h5", n_images=80, image_size=16, num_tasks=3)
    out = tmp_path / "run"
    cfg = RunConfig.from_dict({"data": str(path), "out": str(out), "model": TINY_MODEL,
                               "train": {"split": "random3_seed0", "method": "joint", "epochs": 2,
                                         "batch_size": 16}, "eval": {"enabled": True}})
    state = train(cfg, progress=False)
    data = read_dataset(path)
    union = data.task_pairs("random3_seed0", [0, 1, 2], "train")
    assert state.completed_tasks == [0, 1, 2]
    assert [r["label"] for r in state.history] == ["initial", "task0"]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [x for x in lines if x["event"] == "epoch"]
    assert [(e["stage"], e["tasks"], e["pairs"]) for e in epochs] == [(0, [0, 1, 2], len(union))] * 2
    for t in range(3):                       # every task alone is a strict part of the union
        assert 0 < len(data.task_pairs("random3_seed0", t, "train")) < len(union)
    res = read_results(out)
    e = res["metrics"]["fact_to_image_map"]
    assert res["stages"] == [0] and len(e["R"]) == 1 and len(e["final"]) == 3
    assert e["final"] == e["R"][0] and e["final_all"] is not None
    assert e["forgetting"] is None and e["bwt"] is None
    assert np.isfinite(e["final_all"]) and e["final_all"] > e["initial_all"]
    md = (out / "results.md").read_text()                  # R: the initial row and one trained row
    assert len(re.findall(r"^\| (?:initial|after [^|]+) \|", md, flags=re.M)) == 2
    assert load_checkpoint(last_path(out))["completed_tasks"] == [0, 1, 2]
    assert resume(out, progress=False).completed_tasks == [0, 1, 2]        # nothing left to train
