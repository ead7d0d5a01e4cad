"""Tasks are 1-based wherever a user reads them (logs, results.md's cosine line, the train command's
last line, data_prep.inspect), as in the tables (T1..Tk) and the progress lines; the checkpoint
files keep their 0-based stage index (task0.pt), which --resume and factmas evaluate read."""
from __future__ import annotations

import logging
import re

from data_prep import inspect
from factmas.cli.train import main
from factmas.data.synthetic import make_synthetic_dataset
from factmas.run.checkpoint import task_names


def test_task_names():
    assert task_names([0, 1, 3]) == "T1, T2, T4" and task_names([]) == "none"


def test_a_run_names_its_tasks_from_1(tmp_path, capsys, caplog):
    data = make_synthetic_dataset(tmp_path / "syn.h5", n_images=40, image_size=16, num_tasks=2)
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        assert main(["--data", str(data), "--split", "random2_seed0", "--out", str(out), "--epochs", "1",
                     "--backbone", "small_cnn", "--batch-size", "16", "--device", "cpu",
                     "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "factmas train: tasks T1, T2 done" in printed
    logs = caplog.text
    assert "tasks done: T1)" in logs and "tasks done: T1, T2)" in logs
    assert "evaluation after stage 1:" in logs and "(row task0)" not in logs
    assert "Ω updated" in logs and ": task 0:" not in logs and ": task 1: Ω updated" in logs
    md = (out / "results.md").read_text()
    cos = next(line for line in md.splitlines() if line.startswith("Mean pairwise cosine"))
    assert re.search(r"initial [\d.]+, after T1 [\d.]+, after T2 [\d.]+\.$", cos), cos
    assert sorted(p.name for p in (out / "checkpoints").glob("task*.pt")) == ["task0.pt", "task1.pt"]

    assert inspect.main([str(data)]) == 0
    table = capsys.readouterr().out
    rows = re.findall(r"^\s+(T\d)\s+\d+\s+\(", table, flags=re.M)
    assert rows[:2] == ["T1", "T2"] and "T0" not in rows
