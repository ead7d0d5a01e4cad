"""The continual trainer and ``factmas train`` (factmas.trainer) on tiny synthetic datasets."""
from __future__ import annotations

import json

import h5py
import pytest
import torch

import factmas.trainer.loop as loop_module
from factmas.config import RunConfig
from factmas.data.synthetic import make_synthetic_dataset
from factmas.trainer import resume, train
from factmas.data.dataset import read_dataset
from factmas.trainer.batches import batch_bounds
from factmas.run.checkpoint import last_path, load_checkpoint, stage_path
from factmas.cli.train import main

TINY_MODEL = {"backbone": "small_cnn", "width": 8, "embed_dim": 16, "word_dim": 16, "fact_hidden": 32, "norm_groups": 4}
TIMING = {"seconds", "images_per_s", "task_end_seconds", "stage_seconds", "timing"}


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("data") / "syn.h5", n_images=240,
                                  image_size=16, num_tasks=2)


def _cfg(data_path, out, eval_enabled=False, loss=None, **train) -> RunConfig:
    t = {"split": "random2_seed0", "method": "mas", "reg_lambda": 1.0, "epochs": 1, "batch_size": 32}
    t.update(train)
    return RunConfig.from_dict({"data": str(data_path), "out": str(out), "model": TINY_MODEL,
                                "loss": loss or {}, "train": t, "eval": {"enabled": eval_enabled}})


def _config_file(tmp_path, data_path, **train):
    path = tmp_path / "run_config.json"
    path.write_text(json.dumps(_cfg(data_path, "", **train).to_dict()))
    return str(path)


def _strip(obj):
    """Drop wall-clock fields, which differ between two runs of the same computation."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _metrics(run_dir):
    return [_strip(json.loads(line)) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_mas_forgets_the_first_task_less_than_finetune(data_path, tmp_path):
    """Semantic split (tasks by subject): finetune on task 2 overwrites task 1; MAS keeps more of it.

    Forgetting = task-1 validation loss after task 2 minus after task 1, and the drop of task 1's
    fact→image mAP on the test images. Deterministic: fixed seeds, single-threaded CPU.
    """
    forgetting = {}
    for method, lam in (("finetune", 0.0), ("mas", 100.0)):
        # settings pinned (not the defaults, which are tuned for Flickr8k): plain Sherlock-weighted
        # loss, no augmentation (shifts move the synthetic colour bands)
        cfg = _cfg(data_path, tmp_path / method, eval_enabled=True, split="semantic2", method=method,
                   reg_lambda=lam, epochs=3, augment_flip=False, augment_shift=0, lr=1e-3,
                   loss={"regression_weight": 1.0, "contrastive_weight": 1.0, "temperature": 0.1,
                         "fact_softmax_weight": 0.0})
        h = train(cfg, progress=False).history
        assert [r["label"] for r in h] == ["initial", "task0", "task1"]
        val = [r["val_loss"][0] for r in h]
        mAP = [r["retrieval"]["fact_to_image_map"]["0"] for r in h]
        forgetting[method] = (val[2] - val[1], mAP[1] - mAP[2])
        assert val[1] < val[0] and mAP[1] > mAP[0]          # task 1 was learned
        assert h[2]["val_loss"][1] < h[0]["val_loss"][1]    # task 2 was learned too
    ft, mas = forgetting["finetune"], forgetting["mas"]
    assert ft[0] > 1.0 and ft[1] > 0.2, f"finetune should forget here: {ft}"
    assert mas[0] < 0.5 * ft[0] and mas[1] < 0.5 * ft[1], forgetting


def test_resume_equals_uninterrupted_run(data_path, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(_cfg(data_path, full, eval_enabled=True), progress=False)
    train(_cfg(data_path, cut, eval_enabled=True), progress=False, limit_tasks=1)
    assert stage_path(cut, 0).is_file() and not stage_path(cut, 1).exists()
    with open(cut / "metrics.jsonl", "a") as f:                  # what a killed task 2 had written
        f.write(json.dumps({"event": "epoch", "stage": 1, "train_total": 123.0}) + "\n")
    assert main(["--resume", str(cut), "--no-progress", "-q"]) == 0
    a, b = load_checkpoint(last_path(full)), load_checkpoint(last_path(cut))
    assert a["completed_tasks"] == b["completed_tasks"] == [0, 1]
    for part in ("model", "method"):
        assert a[part].keys() == b[part].keys() and len(a[part]) > 0
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part} {k} differs after resume"
    assert any(k.startswith("omega.") and bool(a["method"][k].abs().sum() > 0) for k in a["method"])
    assert _metrics(full) == _metrics(cut)
    assert _strip(a["history"]) == _strip(b["history"])
    ra = json.loads((full / "results.json").read_text())
    rb = json.loads((cut / "results.json").read_text())
    assert _strip(ra["metrics"]) == _strip(rb["metrics"]) and ra["stages"] == [0, 1]


@pytest.mark.parametrize("method,extra", [("ewc", {}), ("si", {}), ("l-mas", {}), ("lwf", {}),
                                          ("mas", {"omega_output": "normalized"})])
def test_every_method_at_lambda_zero_trains_mas_lambda_zero_model(data_path, tmp_path, method, extra):
    """What lets paper_table share MAS's λ = 0 search run (``SAME_AT_ZERO``): bit-identical weights."""
    train(_cfg(data_path, tmp_path / "mas", reg_lambda=0.0), progress=False)
    train(_cfg(data_path, tmp_path / "other", method=method, reg_lambda=0.0, **extra), progress=False)
    a, b = load_checkpoint(last_path(tmp_path / "mas")), load_checkpoint(last_path(tmp_path / "other"))
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"{method}: {k} differs"


def test_resume_of_a_finished_run_changes_nothing(data_path, tmp_path):
    out = tmp_path / "run"
    train(_cfg(data_path, out, eval_enabled=True), progress=False)
    before = last_path(out).read_bytes()
    calibration = (out / "calibration.json").read_bytes()      # fitted after the last task
    state = resume(out, progress=False)
    assert state.completed_tasks == [0, 1] and last_path(out).read_bytes() == before
    assert (out / "calibration.json").read_bytes() == calibration


def test_non_finite_loss_stops_naming_task_epoch_step(data_path, tmp_path, monkeypatch, capsys):
    real = loop_module.fact_loss
    steps_task_1 = len(batch_bounds(len(read_dataset(data_path).task_pairs("random2_seed0", 0)), 32))
    calls = {"n": 0}

    def loss_that_breaks_in_task_2(phi, psi, order, positive, cfg, candidates=None):
        loss, parts = real(phi, psi, order, positive, cfg, candidates)
        if torch.is_grad_enabled():                         # training steps, not validation
            calls["n"] += 1
            if calls["n"] > steps_task_1 + 1:
                loss = loss * float("nan")
        return loss, parts

    monkeypatch.setattr(loop_module, "fact_loss", loss_that_breaks_in_task_2)
    out = tmp_path / "run"
    cfg = _config_file(tmp_path, data_path, epochs=1)
    assert main(["--data", str(data_path), "--out", str(out), "--config", cfg, "--no-progress", "-q"]) == 1
    err = capsys.readouterr().err
    assert "non-finite loss nan in task 2/2, epoch 1/1, step 2 " in err and "task0.pt is kept" in err
    good = load_checkpoint(last_path(out))
    assert good["completed_tasks"] == [0] and not stage_path(out, 1).exists()
    assert all(bool(torch.isfinite(v).all()) for v in good["model"].values() if v.is_floating_point())
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["event"] == "error"
    monkeypatch.setattr(loop_module, "fact_loss", real)        # the cause fixed: resume finishes
    assert main(["--resume", str(out), "--no-progress", "-q"]) == 0
    assert load_checkpoint(last_path(out))["completed_tasks"] == [0, 1]


def test_huge_learning_rate_is_a_training_error(data_path, tmp_path, capsys):
    cfg = _config_file(tmp_path, data_path, lr=1e30, epochs=2)
    code = main(["--data", str(data_path), "--out", str(tmp_path / "run"), "--config", cfg,
                 "--no-progress", "-q"])
    assert code == 1 and "non-finite loss" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, valid", [("--split", "random9", "random2_seed0"),
                                                ("--method", "sgd", "finetune")])
def test_unknown_split_or_method_lists_the_valid_ones(data_path, tmp_path, capsys, flag, value, valid):
    out = tmp_path / "run"
    argv = ["--data", str(data_path), "--out", str(out), "--split", "random2_seed0", "--no-progress"]
    code = main(argv + [flag, value])
    err = capsys.readouterr().err
    assert code == 2 and repr(value) in err and valid in err
    assert not (out / "config.json").exists()


def test_other_schema_version_is_a_clear_usage_error(data_path, tmp_path, capsys):
    old = make_synthetic_dataset(tmp_path / "old.h5", n_images=20, image_size=8)
    with h5py.File(old, "a") as h:
        h.attrs["schema_version"] = 99
    code = main(["--data", str(old), "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "old.h5: schema_version" in err and "99" in err and "reads 1" in err


def test_bad_command_lines_are_usage_errors(data_path, tmp_path, capsys):
    assert main(["--data", str(data_path)]) == 2                      # no --out
    assert main(["--resume", str(tmp_path), "--method", "mas"]) == 2   # settings come from the run
    assert main(["--resume", str(tmp_path / "nothing")]) == 2          # not a run directory
    assert main(["--epochs", "two"]) == 2                              # argparse
    assert main(["--help"]) == 0
    capsys.readouterr()


def test_config_json_and_refusing_an_existing_run(data_path, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = _config_file(tmp_path, data_path, method="finetune")
    argv = ["--data", str(data_path), "--out", str(out), "--config", cfg, "--seed", "3",
            "--reg-lambda", "0.5", "--threads", "1", "--no-progress", "-q"]
    threads = torch.get_num_threads()
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    record = json.loads((out / "config.json").read_text())
    assert record["torch_threads"] == 1
    assert set(record) >= {"config", "seed", "versions", "git_commit", "command", "data_provenance"}
    want = _cfg(data_path, out, method="finetune", seed=3, reg_lambda=0.5, threads=1).to_dict()
    want["data"] = str(data_path.resolve())
    assert record["config"] == want and record["seed"] == 3
    assert record["data_provenance"]["source"] == "factmas.synthetic"
    assert record["command"].startswith("factmas train --data ") and "--seed 3" in record["command"]
    assert "torch" in record["versions"]
    events = [json.loads(x)["event"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert events == ["initial", "epoch", "task_end", "epoch", "task_end"]
    capsys.readouterr()
    assert main(argv) == 2 and "--resume" in capsys.readouterr().err    # a run is there
    try:
        assert main(argv + ["--overwrite"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 5


def test_resume_refuses_a_rebuilt_dataset(tmp_path, capsys):
    path = make_synthetic_dataset(tmp_path / "d.h5", n_images=60, image_size=8, num_tasks=2)
    out = tmp_path / "run"
    train(_cfg(path, out), progress=False, limit_tasks=1)
    assert json.loads((out / "config.json").read_text())["data_fingerprint"]["images"] == 60
    make_synthetic_dataset(path, n_images=70, image_size=8, num_tasks=2)        # rebuilt in place
    assert main(["--resume", str(out), "--no-progress", "-q"]) == 2
    err = capsys.readouterr().err
    assert "not the dataset run" in err and "images 60 → 70" in err
    make_synthetic_dataset(path, n_images=60, image_size=8, num_tasks=2)        # the original again
    assert main(["--resume", str(out), "--no-progress", "-q"]) == 0


def test_validation_loss_equals_a_per_batch_forward(data_path):
    """EvalHook embeds each validation image and fact once; the naive reference runs the model on
    every pair batch, as training does."""
    from factmas.model import build_model
    from factmas.trainer.batches import Batcher
    from factmas.trainer.evalhook import EvalHook
    from factmas.trainer.loop import forward_loss

    data = read_dataset(data_path)
    cfg = _cfg(data_path, "")
    torch.manual_seed(1)
    model = build_model(cfg.model, len(data.vocab)).eval()
    batcher = Batcher(data)
    from factmas.data.experience import experiences
    hook = EvalHook(experiences(data, "random2_seed0"), batcher,
                    lambda phi, psi, order, pos: loop_module.fact_loss(phi, psi, order, pos, cfg.loss),
                    batch_size=16, embed_batch=7)
    got = hook.validation_loss(model)
    with torch.no_grad():
        for t in range(2):
            pairs = data.task_pairs("random2_seed0", t, "val")
            assert len(pairs) > 16
            total = sum(float(forward_loss(model, b, cfg)[0]) * len(b["fact_idx"])
                        for b in batcher.pair_batches(pairs, 16))
            assert got[t] == pytest.approx(total / len(pairs), rel=1e-5)


def test_sigterm_stops_cleanly_and_the_run_resumes(data_path, tmp_path, monkeypatch, capsys):
    import os
    import signal
    real = loop_module.fact_loss
    steps_task_1 = len(batch_bounds(len(read_dataset(data_path).task_pairs("random2_seed0", 0)), 32))
    calls = {"n": 0}

    def loss_then_sigterm(phi, psi, order, positive, cfg, candidates=None):
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == steps_task_1 + 3:                # in task 2: a scheduler stops the job
                os.kill(os.getpid(), signal.SIGTERM)
        return real(phi, psi, order, positive, cfg, candidates)

    monkeypatch.setattr(loop_module, "fact_loss", loss_then_sigterm)
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGTERM)
    cfg = _config_file(tmp_path, data_path)
    assert main(["--data", str(data_path), "--out", str(out), "--config", cfg, "--no-progress", "-q"]) == 143
    assert signal.getsignal(signal.SIGTERM) is before
    assert f"--resume {out}" in capsys.readouterr().err
    assert load_checkpoint(last_path(out))["completed_tasks"] == [0]
    assert main(["--resume", str(out), "--no-progress", "-q"]) == 0
    assert load_checkpoint(last_path(out))["completed_tasks"] == [0, 1]
