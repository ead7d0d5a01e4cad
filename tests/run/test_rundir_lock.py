"""A run directory is owned by one process at a time (factmas.run.lock), and --overwrite removes
the old run's artefacts before anything new is written."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from factmas.config import RunConfig
from factmas.data.synthetic import make_synthetic_dataset
from factmas.trainer import RunDirError, train
from factmas.cli.train import main
from factmas.run.lock import LOCK_NAME, RunLock, pid_alive

TINY_MODEL = {"backbone": "small_cnn", "width": 8, "embed_dim": 16, "word_dim": 16, "fact_hidden": 32, "norm_groups": 4}


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("data") / "syn.h5", n_images=80,
                                  image_size=8, num_tasks=2)


def _cfg(data_path, out, **train):
    t = {"split": "random2_seed0", "method": "finetune", "epochs": 1, "batch_size": 32, **train}
    return RunConfig.from_dict({"data": str(data_path), "out": str(out), "model": TINY_MODEL,
                                "train": t, "eval": {"enabled": True}})


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_live_owner_refuses_a_second_process(tmp_path):
    run = tmp_path / "run"
    with RunLock(run):
        owner = json.loads((run / LOCK_NAME).read_text())
        assert owner["pid"] == os.getpid()
        # a second process (here: another lock object, as a second `factmas train` would take)
        with pytest.raises(RunDirError, match=f"in use by process {os.getpid()}"):
            with RunLock(run):
                pass
        assert (run / LOCK_NAME).is_file()            # the refused one did not remove it
    assert not (run / LOCK_NAME).exists()             # released on exit


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    dead = _dead_pid()
    assert not pid_alive(dead)
    import socket
    (run / LOCK_NAME).write_text(json.dumps({"pid": dead, "host": socket.gethostname()}))
    with RunLock(run):
        assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert sorted(p.name for p in run.iterdir()) == []


def test_a_reused_pid_with_another_start_time_is_stale(tmp_path):
    import socket
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                             "start": "1"}))   # our PID, but not our start time
    if RunLock(run).record["start"] is None:
        pytest.skip("no /proc start times here")
    with RunLock(run):
        pass


def test_train_refuses_a_locked_run_dir_and_writes_nothing(data_path, tmp_path, capsys):
    run = tmp_path / "run"
    with RunLock(run):
        code = main(["--data", str(data_path), "--out", str(run), "--split", "random2_seed0",
                     "--no-progress", "-q"])
        assert code == 2 and "in use by process" in capsys.readouterr().err
        assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]


def test_overwrite_removes_the_old_runs_artefacts_first(data_path, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(_cfg(data_path, run), progress=False)
    (run / "evaluations" / "x").mkdir(parents=True)
    old = {p.name for p in run.iterdir()}
    assert {"results.json", "results.md", "r_heatmap.png", "map_per_task.png", "metrics.jsonl",
            "config.json", "checkpoints", "evaluations"} <= old
    import factmas.trainer.loop as loop

    def killed(self, *a, **k):          # the new run is killed before its first task ends
        raise KeyboardInterrupt
    monkeypatch.setattr(loop.ContinualTrainer, "run", killed)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(data_path, run), progress=False, overwrite=True)
    left = sorted(p.name for p in run.rglob("*"))
    # only the new run's config, its manifest, and the folder x that factmas did not make (issue 30:
    # --overwrite deletes only the files the manifest lists)
    assert left == [".factmas-written", "config.json", "evaluations", "x"], left


def test_a_run_without_checkpoints_is_still_a_run(data_path, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    before = (run / "config.json").read_bytes()
    code = main(["--data", str(data_path), "--out", str(run), "--split", "random2_seed0",
                 "--no-progress", "-q"])
    assert code == 2 and "--resume" in capsys.readouterr().err
    assert (run / "config.json").read_bytes() == before
