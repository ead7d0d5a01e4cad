"""``factmas evaluate`` never replaces a run's results unasked and refuses missing stages;
``compare`` refuses runs of other datasets, splits, image splits or unfinished runs."""
from __future__ import annotations

import json
import shutil

import pytest

from factmas.cli import evaluate as evaluate_cli
from factmas.cli import compare as compare_cli
from factmas.config import RunConfig
from factmas.data.synthetic import make_synthetic_dataset
from factmas.trainer import train

TINY_MODEL = {"width": 4, "embed_dim": 4, "word_dim": 4, "fact_hidden": 8, "norm_groups": 2}


def _train(data, out, seed=0, limit=None):
    cfg = RunConfig.from_dict({"data": str(data), "out": str(out), "model": TINY_MODEL,
                               "train": {"split": "random2_seed0", "method": "finetune", "epochs": 1,
                                         "batch_size": 16, "seed": seed}})
    train(cfg, progress=False, limit_tasks=limit)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    data = make_synthetic_dataset(root / "a.h5", n_images=60, image_size=8, num_tasks=2)
    other = make_synthetic_dataset(root / "b.h5", n_images=60, image_size=8, num_tasks=2, seed=5)
    return {"a0": _train(data, root / "a0"), "a1": _train(data, root / "a1", seed=1),
            "b0": _train(other, root / "b0"), "cut": _train(data, root / "cut", limit=1)}


def _snapshot(run):
    return {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_evaluate_writes_its_own_dir_and_never_the_runs_results(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["a0"], run)
    before = _snapshot(run)
    assert evaluate_cli.main([str(run), "-q"]) == 0
    res = json.loads((run / "evaluations" / "test" / "results.json").read_text())
    assert res["image_split"] == "test" and res["complete"] is True
    assert res["evaluated"]["image_split"] == "test" and res["run"]["data_sha256"]
    # the run's own files; its manifest (issue 30) gains the evaluation's files, so that --overwrite
    # of the run deletes them with it
    assert [p for p, b in before.items() if p.name != ".factmas-written" and p.read_bytes() != b] == []
    manifest = (run / ".factmas-written").read_text().splitlines()
    assert before[run / ".factmas-written"].decode().splitlines() == manifest[:len(manifest) - 4]
    assert "evaluations/test/results.json" in manifest
    capsys.readouterr()
    assert evaluate_cli.main([str(run), "-q"]) == 2                      # results already there
    assert "--overwrite" in capsys.readouterr().err
    assert evaluate_cli.main([str(run), "-q", "--overwrite"]) == 0
    assert evaluate_cli.main([str(run), "-q", "--out", str(run)]) == 2   # the run's results
    assert "--replace-results" in capsys.readouterr().err
    assert [p for p, b in before.items() if p.name != ".factmas-written" and p.read_bytes() != b] == []
    assert evaluate_cli.main([str(run), "-q", "--image-split", "val"]) == 0
    val = json.loads((run / "evaluations" / "val" / "results.json").read_text())
    assert val["image_split"] == "val" and "`val` split" in (run / "evaluations" / "val" /
                                                             "results.md").read_text()
    assert evaluate_cli.main([str(run), "-q", "--out", str(run), "--replace-results"]) == 0
    assert not (run / ".lock").exists()


def test_evaluate_refuses_missing_stage_checkpoints(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["a0"], run)
    (run / "checkpoints" / "task0.pt").unlink()
    capsys.readouterr()
    assert evaluate_cli.main([str(run), "-q"]) == 2
    err = capsys.readouterr().err
    assert "lacks task0.pt" in err and "--stages 1" in err
    assert not (run / "evaluations").exists()
    assert evaluate_cli.main([str(run), "-q", "--stages", "0"]) == 2     # not there either
    assert evaluate_cli.main([str(run), "-q", "--stages", "x"]) == 2
    assert evaluate_cli.main([str(run), "-q", "--stages", "1"]) == 0
    res = json.loads((run / "evaluations" / "test" / "results.json").read_text())
    assert res["stages"] == [1] and res["complete"] is False
    capsys.readouterr()
    assert evaluate_cli.main([str(runs["cut"]), "-q", "--out", str(tmp_path / "c")]) == 2
    assert "lacks task1.pt" in capsys.readouterr().err                  # an unfinished run


@pytest.mark.parametrize("pick, extra, reason", [
    (("a0", "b0"), [], "differ in dataset"),
    (("a0", "cut"), [], "unfinished run"),
])
def test_compare_refuses_unlike_runs(runs, capsys, pick, extra, reason):
    assert compare_cli.main([str(runs[k]) for k in pick] + extra) == 2
    assert reason in capsys.readouterr().err
    assert compare_cli.main([str(runs[k]) for k in pick] + ["--allow-mixed"]) == 0


def test_compare_refuses_mixed_image_splits_and_accepts_like_runs(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["a1"], run)
    assert evaluate_cli.main([str(run), "-q", "--image-split", "val"]) == 0
    capsys.readouterr()
    val = run / "evaluations" / "val"
    assert compare_cli.main([str(runs["a0"]), str(val)]) == 2
    assert "differ in image split" in capsys.readouterr().err
    assert compare_cli.main([str(runs["a0"]), str(val), "--allow-mixed"]) == 0
    out = capsys.readouterr().out
    assert "[val images]" in out                                        # a row of its own
    assert compare_cli.main([str(runs["a0"]), str(runs["a1"])]) == 0
    assert "| finetune | random2_seed0 | 2 |" in capsys.readouterr().out


def test_compare_tables_recall_at_k_from_results_json(runs, capsys):
    """Issue 31: R@K is a table like the other metrics, its cells the runs' results.json values."""
    assert compare_cli.main([str(runs["a0"]), str(runs["a1"]), "--metric", "fact_to_image_recall_at_5"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| finetune | random2_seed0 | 2 |"))
    finals = [json.loads((runs[k] / "results.json").read_text())["metrics"]["fact_to_image_recall_at_5"]
              ["final_all"] for k in ("a0", "a1")]
    mean_all = sum(finals) / 2 * 100
    assert f"{mean_all:.2f}" in row
