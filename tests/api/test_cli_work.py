"""The work the commands used to do themselves, now library functions with typed parameters (issue
29, "a thin CLI"): ``evaluate_into`` (``factmas evaluate RUN``), ``CheckpointMetrics.markdown``
(``factmas evaluate --checkpoint``), ``compare(out=...)`` (``factmas compare --out``); each command
prints what they return."""
from __future__ import annotations

import json

import numpy as np
import pytest

import factmas
from factmas.api.evaluate import EvaluateError, evaluate_into
from factmas.outdir import OutputError


def test_evaluate_into_writes_the_default_folder_and_matches_run_evaluate(api_runs, tmp_path, capsys):
    from factmas.cli.evaluate import main
    run = factmas.load_run(api_runs["main"] / "mas")
    out = tmp_path / "ev"
    folder, paths = evaluate_into(run.path, out, image_split="val")
    assert folder == out and out / "results.json" in paths and out / "results.md" in paths
    written = json.loads((out / "results.json").read_text())
    again = run.evaluate(image_split="val")
    for m in again.metrics:
        np.testing.assert_allclose(np.array(written["metrics"][m]["R"], float), again.R[m],
                                   atol=1e-6, equal_nan=True)
    assert written["evaluated"]["image_split"] == "val" and written["complete"]
    # the command prints results.md and the paths it wrote
    assert main([str(run.path), "--out", str(tmp_path / "cli"), "--image-split", "val", "-q"]) == 0
    text = capsys.readouterr().out
    assert (tmp_path / "cli" / "results.md").read_text() in text and "wrote " in text
    default, _ = evaluate_into(run.path, image_split="val", image_pool="task")
    assert default == run.path / "evaluations" / "val-task-pool"


def test_evaluate_into_refuses_before_any_work(api_runs, tmp_path, monkeypatch):
    from factmas.api import evaluate as ev
    from factmas.run.load import RunLoadError
    run_dir = api_runs["main"] / "finetune"
    first, _ = evaluate_into(run_dir, tmp_path / "old")
    monkeypatch.setattr(ev, "evaluate_run", lambda *a, **k: pytest.fail("evaluated before --out was checked"))
    with pytest.raises(EvaluateError, match="is a run directory"):
        evaluate_into(run_dir, run_dir)
    with pytest.raises(EvaluateError, match="already holds results.json"):
        evaluate_into(run_dir, first)
    with pytest.raises(RunLoadError, match="config.json"):
        evaluate_into(tmp_path / "old", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_checkpoint_markdown_has_every_metric_row_and_task_column(api_runs):
    from factmas.evaluation.evaluator import METRICS
    from factmas.evaluation.report import LABELS
    one = factmas.load_run(api_runs["main"] / "mas").evaluate_checkpoint("task1")
    text = one.markdown()
    header = text.splitlines()[0]
    assert all(c in header for c in ("metric", "T1", "T2", "all"))
    for m in METRICS:
        row = next(line for line in text.splitlines() if line.startswith(f"| {LABELS[m]} |"))
        assert f"{100 * one.metrics[m]['all']:.2f}" in row
    assert "timing: " in text


def test_compare_writes_the_files_it_returns_and_refuses_an_existing_one(api_runs, tmp_path):
    runs = [api_runs["main"] / "finetune", api_runs["main"] / "mas"]
    prefix = tmp_path / "table"
    table = factmas.compare(runs, out=prefix)
    assert (tmp_path / "table.md").read_text() == table.markdown()
    assert (tmp_path / "table.csv").read_text() == table.csv()
    with pytest.raises(OutputError, match="table.md"):
        factmas.compare(runs, out=prefix)
    again = factmas.compare(runs, out=prefix, overwrite=True)
    assert again.markdown() == table.markdown()
    (tmp_path / "dir.md").mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        factmas.compare(runs, out=tmp_path / "dir")
    with pytest.raises(OutputError, match="lies inside"):            # not into a run's folder
        factmas.compare(runs, out=api_runs["main"] / "mas" / "cmp")
    assert not (api_runs["main"] / "mas" / "cmp.md").exists()
