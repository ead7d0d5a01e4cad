"""eval/paper_table.py: λ chosen on val images, the plan, the tables, resuming, on synthetic data."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from factmas.data.dataset import read_dataset
from factmas.cli.paper import main
from factmas.experiments.lambda_search import choose_lambdas, extend_grids
from factmas.experiments.paper_table import GRIDS, criterion, subsample_images
from factmas.data.synthetic import make_synthetic_dataset

TINY = {"model": {"backbone": "small_cnn", "width": 8, "embed_dim": 16, "word_dim": 16, "fact_hidden": 32, "norm_groups": 4},
        "train": {"batch_size": 32}}


def _run(label, lam, f2i, i2f):
    summary = {"metrics": {"fact_to_image_map": {"final_all": f2i}, "image_to_fact_map": {"final_all": i2f}}}
    return {"label": label, "reg_lambda": lam, "criterion": criterion(summary)}


def test_criterion_is_the_mean_of_both_directions_or_none():
    rng = np.random.default_rng(7)
    f2i, i2f = rng.random(2)
    assert _run("mas", 1.0, f2i, i2f)["criterion"] == pytest.approx((f2i + i2f) / 2)
    assert _run("mas", 1.0, None, i2f)["criterion"] is None
    assert _run("mas", 1.0, f2i, float("nan"))["criterion"] is None


def test_choose_lambdas_best_criterion_ties_to_the_smaller_and_skips_nan():
    runs = [_run("mas", 1.0, 0.4, 0.6), _run("mas", 0.1, 0.6, 0.4),      # tie (0.5): the smaller
            _run("mas", 10.0, 0.7, 0.1),                                   # best f→i, worse criterion
            _run("si", 10.0, None, 0.3), _run("si", 1.0, 0.2, 0.2),
            _run("ewc", 1.0, float("nan"), 0.1), _run("ewc", 10.0, None, 0.1),
            _run("lwf", 0.0, 0.3, 0.3), _run("lwf", 3.0, 0.3 + 0.5e-4, 0.3)]   # within TIE: 0
    grids = {"mas": (0.1, 1.0, 10.0), "si": (1.0, 10.0), "ewc": (1.0, 10.0, 100.0), "lwf": (0.0, 3.0)}
    assert choose_lambdas(runs, grids) == {"mas": 0.1, "si": 1.0, "ewc": 10.0, "lwf": 0.0}


def test_extend_grids_adds_a_value_beyond_an_edge_only():
    grids = {"mas": (0.0, 1.0, 10.0), "si": (0.0, 1.0, 10.0), "ewc": (0.0, 1.0, 10.0), "lwf": (0.0,)}
    chosen = {"mas": 10.0, "si": 1.0, "ewc": 0.0, "lwf": 0.0}
    assert extend_grids(grids, chosen) == {"mas": (100.0,), "ewc": (0.1,)}
    assert all(0.0 in g for g in GRIDS.values())               # every published grid has λ = 0


def test_subsample_images_drops_images_from_every_split_and_their_pairs(tmp_path):
    data = read_dataset(make_synthetic_dataset(tmp_path / "s.h5", n_images=100, image_size=16))
    sub = subsample_images(data, 0.3)
    kept = sub.image_split >= 0
    assert 10 < kept.sum() < 50 and np.array_equal(sub.image_split[kept], data.image_split[kept])
    assert set(sub.pairs[:, 0]) <= set(np.flatnonzero(kept)) and len(sub.pairs) < len(data.pairs)
    assert subsample_images(data, 1.0) is data


def test_quick_table_on_synthetic_data_and_resume(tmp_path, capsys):
    data = make_synthetic_dataset(tmp_path / "syn.h5", n_images=80, image_size=16, num_tasks=4)
    cfg = tmp_path / "base.json"
    cfg.write_text(json.dumps(TINY))
    out = tmp_path / "table"
    argv = ["--data", str(data), "--out", str(out), "--quick", "--jobs", "1", "--config", str(cfg),
            "--methods", "finetune,mas,joint", "--grid", "mas=0.5,5", "-q"]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    searched = sorted(r["reg_lambda"] for r in res["lambda_search"])
    assert {0.5, 5.0} <= set(searched) and res["chosen_lambda"]["mas"] in searched
    best = max(r["criterion"] for r in res["lambda_search"])
    assert [r["criterion"] for r in res["lambda_search"]
            if r["reg_lambda"] == res["chosen_lambda"]["mas"]] == [best]
    for r in res["lambda_search"]:                             # λ search: val images, never test
        run = json.loads((tmp_path / r["out"] / "results.json").read_text())
        assert run["image_split"] == "val" and r["split"] == "random4_seed0"
    finals = res["runs"]
    assert sorted((r["label"], r["split"]) for r in finals) == sorted(
        (m, s) for m in ("finetune", "mas", "joint")
        for s in ("random4_seed0", "semantic4", "disjoint4_seed0"))
    for r in finals:
        run = json.loads((tmp_path / r["out"] / "results.json").read_text())
        assert run["image_split"] == "test" and run["run"]["method"] == r["method"]
        assert (r["reg_lambda"] == res["chosen_lambda"]["mas"]) == (r["label"] == "mas")
    md = (out / "paper_table.md").read_text()
    for text in ("## Random split", "## Semantic split", "## Image-disjoint split", "| Finetune |",
                 "| MAS |", "| Joint (upper bound) |", "## How λ was chosen", "◀",
                 "| Image-frequency ranking |", "| Untrained model |", "i→f top-5", "mean (standard)"):
        assert text in md
    rows = list(csv.DictReader((out / "paper_table.csv").open()))
    # 3 methods and the 2 reference rows, for each of the 3 split families
    assert len(rows) == 15 and {r["split"] for r in rows} == {"random", "semantic", "disjoint"}
    for r in rows:                       # both directions and LFL's metric in every row
        for c in ("fact_to_image_map.all_mean", "image_to_fact_map.all_mean",
                  "image_to_fact_top5.all_mean", "lfl_top5_standard.mean_mean",
                  "lfl_top5_generalized.mean_mean"):
            assert r[c] != "", (r["label"], c)
    fin = next(r for r in rows if r["label"] == "finetune" and r["split"] == "random")
    run = next(x for x in finals if x["label"] == "finetune" and x["split"] == "random4_seed0")
    one = json.loads((tmp_path / run["out"] / "results.json").read_text())["metrics"]
    assert float(fin["image_to_fact_top5.forgetting_mean"]) == pytest.approx(
        one["image_to_fact_top5"]["forgetting"])
    assert float(fin["lfl_top5_standard.mean_mean"]) == pytest.approx(
        np.mean(one["lfl_top5_standard"]["final"]))
    untrained = next(r for r in rows if r["label"] == "untrained" and r["split"] == "random")
    assert float(untrained["all_mean"]) == pytest.approx(one["fact_to_image_map"]["initial_all"])
    assert untrained["forgetting_mean"] == ""
    joint = next(r for r in rows if r["label"] == "joint" and r["split"] == "random")
    assert joint["forgetting_mean"] == "" and float(joint["all_mean"]) > 0
    assert (out / "paper_table.png").stat().st_size > 1000
    # a run recorded before a config key existed (here train.optimizer/momentum) is the same run when
    # the key is at its default; one recorded with the old flat option keys (omega_data, ewc_gamma,
    # ..., before train.options) is the same run too
    from factmas.config import LEGACY_OPTION_KEYS
    for cfg_path in out.rglob("config.json"):
        rec = json.loads(cfg_path.read_text())
        train = rec["config"]["train"]
        for key in ("optimizer", "momentum"):
            train.pop(key)
        options = train.pop("options").get(train["method"], {})
        for key, (name, default, _) in LEGACY_OPTION_KEYS.items():
            train[key] = options.get(name, default)
        cfg_path.write_text(json.dumps(rec))
    # a second call finds every run complete and trains nothing
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("timing.json")}
    assert len(stamps) == len(searched) + 9
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("timing.json")} == stamps
    # its wall time is said to cover this invocation only: every run was read back
    again = json.loads((out / "results.json").read_text())
    assert again["read_back"] == again["table_runs"] == res["table_runs"] > 0 and res["read_back"] == 0
    assert (f"in this invocation, which read {res['table_runs']} of the {res['table_runs']} runs back"
            in (out / "paper_table.md").read_text())
    assert "which read" not in md and "Runs trained at" not in md       # one commit (or none)
    # --one-run: the same finished runs, MAS's row only on the first random split, and said so
    assert md.count("| MAS |") == 9
    assert main([*argv, "--one-run", "mas"]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("timing.json")} == stamps
    md = (out / "paper_table.md").read_text()
    assert md.count("| MAS |") == 3
    assert "Run on the first random split and seed only (random4_seed0, seed 0; no std): MAS." in md
    # other settings (here the learning rate) are not mistaken for a finished run: trained again
    cfg.write_text(json.dumps({**TINY, "train": {**TINY["train"], "lr": 0.01}}))
    assert main([*argv[:argv.index("--methods")], "--methods", "finetune", "-q"]) == 0
    changed = {p for p in stamps if p.stat().st_mtime_ns != stamps[p]}
    assert changed == {p for p in stamps if "finetune" in p.parts}
    for p in changed:
        assert json.loads((p.parent / "config.json").read_text())["config"]["train"]["lr"] == 0.01


@pytest.mark.parametrize("extra, message", [
    (["--methods", "finetune,nosuch"], "unknown"),
    (["--seeds", "0,7"], "random4_seed7"),
    (["--grid", "mas=abc"], "--grid"),
    (["--disjoint-seeds", "5"], "disjoint4_seed5"),
    (["--methods", "finetune", "--one-run", "mas"], "--one-run"),
])
def test_usage_errors(tmp_path, capsys, extra, message):
    data = make_synthetic_dataset(tmp_path / "syn.h5", n_images=40, image_size=16, num_tasks=4)
    rc = main(["--data", str(data), "--out", str(tmp_path / "o"), "--quick"] + extra)
    assert rc == 2 and message in capsys.readouterr().err


def test_disjoint_default_follows_the_file():
    from factmas.cli.paper import build_parser, settings_from_args
    args = build_parser().parse_args(["--data", "x.h5", "--seeds", "1,2"])
    assert settings_from_args(args, 100, ["random4_seed1", "disjoint4_seed1"]).disjoint_seeds == [1]
    # a file built before the image-disjoint split: the table is made without it
    assert settings_from_args(args, 100, ["random4_seed1", "semantic4"]).disjoint_seeds == []
    args = build_parser().parse_args(["--data", "x.h5", "--disjoint-seeds", "0,1,2"])
    assert settings_from_args(args, 100, []).disjoint_seeds == [0, 1, 2]


def test_bracketed_search_extends_an_edge_until_the_best_is_interior():
    from factmas.experiments.paper_run import bracketed_search
    from factmas.experiments.paper_table import Settings, search_jobs
    peak = {"si": 100.0, "ewc": 0.0}     # the criterion peaks at these λ (log scale); no MAS: no shared λ = 0

    def fake_run_all(jobs, settings):
        out = []
        for j in jobs:
            lam = j["reg_lambda"]
            score = 0.5 - 0.01 * abs(np.log10(lam + 1e-3) - np.log10(peak[j["label"]] + 1e-3))
            out.append({**j, "criterion": score, "seconds": 1.0})
        return out
    s = Settings(data="d.h5", out="o", variants=["si", "ewc"], seeds=[0], semantic_seeds=[],
                 epochs=1, search_epochs=1, grids={"si": (0.0, 1.0, 10.0), "ewc": (0.0, 1.0, 10.0)})
    searched, chosen = bracketed_search(s, search_jobs(s), fake_run_all)
    assert chosen == {"si": 100.0, "ewc": 0.0}
    assert s.grids["si"] == (0.0, 1.0, 10.0, 100.0, 1000.0)         # two rounds: 100, then 1000
    assert s.grids["ewc"] == (0.0, 0.001, 0.01, 0.1, 1.0, 10.0)     # λ = 0 wins: three rounds below
    assert len(searched) == 5 + 6 and searched == sorted(searched, key=lambda r: (r["label"], r["reg_lambda"]))


def test_final_jobs_are_seed_major_one_run_of_each_family_first():
    from factmas.experiments.paper_table import Settings, final_jobs
    s = Settings(data="d.h5", out="o", variants=["finetune", "mas"], seeds=[0, 1, 2], semantic_seeds=[0],
                 epochs=1, search_epochs=1, grids={}, disjoint_seeds=[0, 1])
    jobs = final_jobs(s, {"mas": 10.0})
    splits = list(dict.fromkeys(j["split"] for j in jobs))
    assert splits == ["random4_seed0", "semantic4", "disjoint4_seed0", "random4_seed1", "disjoint4_seed1",
                      "random4_seed2"]
    assert len(jobs) == 2 * 6 and {j["reg_lambda"] for j in jobs if j["label"] == "mas"} == {10.0}
    assert {j["reg_lambda"] for j in jobs if j["label"] == "finetune"} == {0.0}


def test_ablation_rows_carry_their_train_values_and_share_the_zero_lambda_run():
    from factmas.experiments.paper_run import bracketed_search
    from factmas.experiments.paper_table import SGD_LR, Settings, final_jobs, search_jobs
    s = Settings(data="d.h5", out="o", variants=["mas", "mas_normalized", "mas_sgd", "finetune_sgd"],
                 seeds=[0], semantic_seeds=[], epochs=1, search_epochs=1,
                 grids={"mas": (0.0, 1.0), "mas_normalized": (0.0, 3.0)})
    jobs = search_jobs(s)
    assert [(j["label"], j["reg_lambda"]) for j in jobs] == [("mas", 0.0), ("mas", 1.0),
                                                             ("mas_normalized", 3.0)]
    assert jobs[2]["method"] == "mas" and jobs[2]["train"] == {"options": {"mas": {"output": "normalized"}}}
    assert jobs[0]["train"] == {}
    # searched alone, the ablation runs its own λ = 0
    alone = Settings(data="d.h5", out="o", variants=["mas_normalized"], seeds=[0], semantic_seeds=[],
                     epochs=1, search_epochs=1, grids={"mas_normalized": (0.0, 3.0)})
    assert [j["reg_lambda"] for j in search_jobs(alone)] == [0.0, 3.0]

    scores = {("mas", 0.0): 0.30, ("mas", 1.0): 0.32, ("mas_normalized", 3.0): 0.29}
    searched, chosen = bracketed_search(s, jobs, lambda jobs, settings: [
        {**j, "criterion": scores.get((j["label"], j["reg_lambda"]), 0.0)} for j in jobs])
    shared = [r for r in searched if r["label"] == "mas_normalized" and r["reg_lambda"] == 0.0]
    # a grid without λ = 0 gets no shared run (and so cannot choose 0 by it)
    from factmas.experiments.paper_table import share_zero
    assert share_zero(searched[:2], {"mas_normalized": (3.0,)}) == searched[:2]
    assert len(shared) == 1 and shared[0]["shared_from"] == "mas" and shared[0]["criterion"] == 0.30
    assert chosen["mas_normalized"] == 0.0 and s.grids["mas_normalized"][0] == 0.0
    s.seeds, s.semantic_seeds, s.disjoint_seeds = [0, 1], [0], [0]
    jobs = final_jobs(s, {"mas": 1.0, "mas_normalized": 0.3})
    assert {(j["split"], j["seed"]) for j in jobs if j["label"] != "mas"} == {("random4_seed0", 0)}
    assert len([j for j in jobs if j["label"] == "mas"]) == 4        # the method itself: every run
    finals = {j["label"]: j for j in jobs if j["split"] == "random4_seed0"}
    assert finals["mas_sgd"]["train"] == {"optimizer": "sgd", "lr": SGD_LR, "momentum": 0.9}
    assert finals["mas_sgd"]["reg_lambda"] == 1.0 and finals["finetune_sgd"]["reg_lambda"] == 0.0
    assert finals["mas_normalized"]["reg_lambda"] == 0.3


def test_one_run_methods_run_on_the_first_random_run_only_and_must_be_among_the_methods():
    import pytest
    from factmas.cli.paper import build_parser, settings_from_args
    from factmas.experiments.paper_table import final_jobs
    args = build_parser().parse_args(["--data", "x.h5", "--methods", "finetune,ewc,si", "--one-run",
                                      "ewc,si", "--seeds", "0,1", "--semantic-seeds", "3",
                                      "--disjoint-seeds", "0"])
    s = settings_from_args(args, 100, ["random4_seed0", "random4_seed1", "semantic4", "disjoint4_seed0"])
    assert s.one_run == ["ewc", "si"] and not s.first_run_only("finetune")
    jobs = final_jobs(s, {"ewc": 1e3, "si": 1.0})
    runs = {lab: [(j["split"], j["seed"]) for j in jobs if j["label"] == lab] for lab in s.variants}
    assert runs["ewc"] == runs["si"] == [("random4_seed0", 0)]
    assert runs["finetune"] == [("random4_seed0", 0), ("semantic4", 3), ("disjoint4_seed0", 0),
                                ("random4_seed1", 1)]
    bad = build_parser().parse_args(["--data", "x.h5", "--methods", "finetune", "--one-run", "ewc"])
    with pytest.raises(ValueError, match="--one-run.*'ewc'"):
        settings_from_args(bad, 100, [])


def test_a_worker_keeps_freed_memory_before_it_reads_the_data(monkeypatch):
    """Spawned workers skip the ``factmas`` command's start-up; init_worker must do its allocator
    setting itself (without it a paper-table run spent 23% of its CPU time in the kernel)."""
    import torch
    from factmas.machine import cpu_memory
    from factmas.data import dataset
    from factmas.experiments import paper_table
    calls = []
    monkeypatch.setattr(paper_table, "_DATA", None)          # restored after the test
    monkeypatch.setattr(cpu_memory, "keep_freed_memory", lambda: calls.append("keep") or True)
    monkeypatch.setattr(dataset, "read_dataset", lambda path: calls.append(path) or "data")
    threads = torch.get_num_threads()
    try:
        paper_table.init_worker("d.h5", 1.0, threads=1)
    finally:
        torch.set_num_threads(threads)
    assert calls == ["keep", "d.h5"] and paper_table._DATA == "data"


def test_a_run_killed_mid_way_is_resumed_from_its_checkpoint_with_the_uninterrupted_metrics(
        tmp_path, caplog):
    """A stop kills a job after some tasks: the next call continues from the last task checkpoint
    (not from the start) and ends with the metrics of a run that was never killed; a checkpoint
    left by other settings is not continued but trained again."""
    import logging
    from factmas.config import RunConfig
    from factmas.experiments import paper_table as pt
    from factmas.trainer import train
    data = make_synthetic_dataset(tmp_path / "syn.h5", n_images=60, image_size=16, num_tasks=4)
    pt.init_worker(str(data), 1.0)
    j = {"kind": "search", "label": "mas", "method": "mas", "split": "random4_seed0", "seed": 0,
         "reg_lambda": 1.0, "epochs": 1, "image_split": "val", "train": {}}

    def killed(out, lam=1.0):      # the same config run_job builds, stopped after 2 of 4 tasks
        d = {**TINY, "data": str(data), "out": str(out),
             "train": {**TINY["train"], "method": "mas", "split": "random4_seed0", "seed": 0,
                       "reg_lambda": lam, "epochs": 1, "threads": 1, "options": {}},
             "eval": {"enabled": True, "image_split": "val"}}
        cfg = RunConfig.from_dict(d)
        pt.resolve_options(cfg.train)
        train(cfg, overwrite=True, progress=False, data=pt._DATA, limit_tasks=2)

    whole = pt.run_job({**j, "out": str(tmp_path / "whole")}, TINY)
    assert json.loads((tmp_path / "whole" / "timing.json").read_text())["resumed_after_tasks"] == 0
    killed(tmp_path / "cut")
    assert pt.resumable_tasks(tmp_path / "cut", RunConfig.from_dict(
        json.loads((tmp_path / "cut" / "config.json").read_text())["config"]), pt._DATA) == 2
    with caplog.at_level(logging.INFO, logger="factmas.experiments.paper_table"):
        cut = pt.run_job({**j, "out": str(tmp_path / "cut")}, TINY)
    assert "resuming after 2 trained task(s)" in caplog.text
    assert json.loads((tmp_path / "cut" / "timing.json").read_text())["resumed_after_tasks"] == 2
    for key in ("final", "final_all", "forgetting", "bwt"):
        assert cut[key] == whole[key], key
    # a checkpoint of other settings (λ = 3 where the job asks 1): trained from the start
    killed(tmp_path / "other", lam=3.0)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="factmas.experiments.paper_table"):
        other = pt.run_job({**j, "out": str(tmp_path / "other")}, TINY)
    assert "resuming" not in caplog.text
    assert json.loads((tmp_path / "other" / "timing.json").read_text())["resumed_after_tasks"] == 0
    assert other["final"] == whole["final"]


def test_the_report_names_the_data_file_relative_to_the_working_directory(tmp_path, monkeypatch):
    """A data file reached through a link under the working directory is named by that relative
    path (not the link's target on this machine); a file outside it keeps its absolute path."""
    from pathlib import Path
    from factmas.experiments.paper_report import shown_path
    elsewhere = tmp_path / "store"
    elsewhere.mkdir()
    (elsewhere / "d.h5").write_bytes(b"")
    project = tmp_path / "project"
    project.mkdir()
    (project / "data").symlink_to(elsewhere)
    monkeypatch.chdir(project)
    assert shown_path(str(Path("data/d.h5").absolute())) == "data/d.h5"
    assert shown_path(str(elsewhere / "d.h5")) == str(elsewhere / "d.h5")


def test_workers_log_their_runs_progress_tagged_with_the_job(tmp_path, capfd):
    """With --jobs 2 the runs train in spawned workers: their INFO lines (epochs with images/s)
    reach the parent's stderr, each tagged with its job, so that the two runs can be told apart; at
    the parent's WARNING level (--quiet) they stay silent."""
    import logging
    from factmas.experiments import paper_table as pt
    data = make_synthetic_dataset(tmp_path / "syn.h5", n_images=60, image_size=16, num_tasks=2)
    jobs = [{"kind": "search", "label": "mas", "method": "mas", "split": "random2_seed0", "seed": s,
             "reg_lambda": lam, "epochs": 1, "image_split": "val", "train": {},
             "out": str(tmp_path / f"run{s}")} for s, lam in ((0, 1.0), (1, 10.0))]
    settings = pt.Settings(data=str(data), out=str(tmp_path), variants=["mas"], seeds=[0],
                           semantic_seeds=[], epochs=1, search_epochs=1, grids={}, jobs=2, base=TINY)
    root = logging.getLogger()
    level = root.level
    try:
        root.setLevel(logging.INFO)
        rows = pt.run_all(jobs, settings)
        err = capfd.readouterr().err
        assert [r["seed"] for r in rows] == [0, 1]
        for tag in ("[mas random2_seed0 s0 λ=1]", "[mas random2_seed0 s1 λ=10]"):
            assert tag in err, err[-2000:]
        assert any("epoch 1/1" in ln and "images/s" in ln and "[mas random2_seed0 s1 λ=10]" in ln
                   for ln in err.splitlines()), err[-2000:]
        for j in jobs:                          # the same folders again, at the WARNING level
            (Path(j["out"]) / "timing.json").unlink()
        root.setLevel(logging.WARNING)
        pt.run_all(jobs, settings)
        assert "images/s" not in capfd.readouterr().err
    finally:
        root.setLevel(level)


def test_finals_that_need_no_lambda_run_with_the_first_search_round_and_come_back_in_plan_order():
    from factmas.experiments.paper_run import train_paper_runs
    from factmas.experiments.paper_table import Settings, final_jobs
    batches = []

    def fake_run_all(jobs, settings):
        batches.append([(j["kind"], j["label"], j["split"], j["reg_lambda"]) for j in jobs])
        return [{**j, "criterion": 0.5 - 0.01 * abs(j["reg_lambda"] - 10.0)} for j in jobs]
    s = Settings(data="d.h5", out="o", variants=["finetune", "mas", "joint"], seeds=[0, 1],
                 semantic_seeds=[], epochs=1, search_epochs=1, grids={"mas": (0.0, 10.0, 100.0)})
    runs = train_paper_runs(s, fake_run_all)
    assert runs.chosen == {"mas": 10.0}
    free = [(k, lab, sp, lam) for k, lab, sp, lam in batches[0] if k == "final"]
    assert [b[1] for b in batches[0] if b[0] == "search"] == ["mas"] * 3        # the search's first round
    assert sorted(free) == sorted(("final", lab, f"random4_seed{i}", 0.0)
                                  for i in (0, 1) for lab in ("finetune", "joint"))
    assert len(batches) == 2 and {b[1] for b in batches[1]} == {"mas"}          # then MAS's finals
    assert {b[3] for b in batches[1]} == {10.0}
    plan = final_jobs(s, {"mas": 10.0})
    assert [(r["label"], r["split"], r["reg_lambda"]) for r in runs.finals] == \
        [(j["label"], j["split"], j["reg_lambda"]) for j in plan]
    # nothing to search: the λ-free finals still run, once
    batches.clear()
    s2 = Settings(data="d.h5", out="o", variants=["finetune"], seeds=[0], semantic_seeds=[],
                  epochs=1, search_epochs=1, grids={})
    runs = train_paper_runs(s2, fake_run_all)
    assert [b for batch in batches for b in batch] == [("final", "finetune", "random4_seed0", 0.0)]
    assert len(runs.finals) == 1


def test_a_finished_run_on_other_word_vectors_is_not_the_same_run(tmp_path):
    """Fixed fact targets: a run is read back only when its recorded vectors' fingerprint equals
    that of the vectors file the config names now (the same path can hold other vectors, e.g. made
    on another CPU); a learned fact branch must record none."""
    from factmas.config import RunConfig
    from factmas.experiments.paper_resume import same_word_vectors
    from factmas.model.word_targets import load_word_vectors, word_vectors_bytes
    rng = np.random.default_rng(7)
    words = ["<pad>", "dog", "run", "grass"]
    path = tmp_path / "v.npz"

    def vectors():
        v = rng.standard_normal((4, 6)).astype(np.float32)
        v[0] = 0                                                    # the pad row
        return v
    path.write_bytes(word_vectors_bytes(words, vectors(), {}))
    sha = load_word_vectors(path).sha256
    w2v = RunConfig.from_dict({"model": {"fact_targets": "word2vec", "word_vectors": str(path),
                                         "embed_dim": 6}, "loss": {"kind": "sherlock"}})
    learned = RunConfig.from_dict({})
    rec = {"fact_targets": {"fact_targets": "word2vec", "word_vectors_sha256": sha, "dim": 6}}
    assert same_word_vectors(rec, w2v)
    assert not same_word_vectors(rec, learned)
    assert same_word_vectors({}, learned)
    assert not same_word_vectors({}, w2v)
    # the same path, other vectors
    path.write_bytes(word_vectors_bytes(words, vectors(), {}))
    assert not same_word_vectors(rec, w2v)
    path.unlink()                                                   # unreadable: not the same
    assert not same_word_vectors(rec, w2v)


def test_same_run_needs_the_same_settings_data_and_word_vectors(tmp_path):
    """``same_run`` on a run directory's config.json: equal settings (paths aside), the dataset's
    fingerprint and the recorded word vectors; any one of them changed makes it another run."""
    from factmas.config import RunConfig
    from factmas.experiments.paper_resume import same_run
    from factmas.model.word_targets import load_word_vectors, word_vectors_bytes
    from factmas.run.rundir import data_fingerprint
    data = read_dataset(make_synthetic_dataset(tmp_path / "syn.h5", n_images=40, image_size=8,
                                               num_tasks=2), load_images=False)
    rng = np.random.default_rng(11)

    def write_vectors():
        v = rng.standard_normal((len(data.vocab), 6)).astype(np.float32)
        v[0] = 0
        (tmp_path / "v.npz").write_bytes(word_vectors_bytes(data.vocab, v, {}))
        return load_word_vectors(tmp_path / "v.npz").sha256

    sha = write_vectors()
    split = next(n for n in data.splits if n.startswith("random"))
    cfg = RunConfig.from_dict({"model": {"fact_targets": "word2vec", "word_vectors": str(tmp_path / "v.npz"),
                                         "embed_dim": 6}, "loss": {"kind": "sherlock"},
                               "train": {"split": split}, "out": str(tmp_path / "run")})
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({
        "config": {**cfg.to_dict(), "data": "/elsewhere/syn.h5", "out": "/elsewhere/run"},
        "data_fingerprint": data_fingerprint(data, split),
        "fact_targets": {"fact_targets": "word2vec", "word_vectors_sha256": sha, "dim": 6}}))
    assert same_run(run, cfg, data)                                 # the paths do not count
    other = RunConfig.from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "lr": 0.5}})
    assert not same_run(run, other, data)
    assert not same_run(run, RunConfig.from_dict({**cfg.to_dict(), "train": {
        **cfg.to_dict()["train"], "split": next(n for n in data.splits if n != split)}}), data)
    write_vectors()                                                 # the same file, other vectors
    assert not same_run(run, cfg, data)


def test_the_report_names_the_runs_commits_and_what_its_wall_time_covers():
    from factmas.experiments.paper_report import read_back_note, run_commits_line
    a, b = "a" * 40, "b" * 40
    assert run_commits_line({"commit": a, "run_commits": [a]}) == []
    assert run_commits_line({"commit": a, "run_commits": []}) == []
    assert run_commits_line({"commit": a, "run_commits": [a, b]}) == ["Runs trained at: `aaaaaaa`, `bbbbbbb`  "]
    assert run_commits_line({"commit": None, "run_commits": [b]}) == ["Runs trained at: `bbbbbbb`  "]
    assert run_commits_line({"commit": a, "run_commits": [a, a + "-dirty"]}) == [
        "Runs trained at: `aaaaaaa`, `aaaaaaa-dirty`  "]
    assert read_back_note({"read_back": 0, "table_runs": 5, "run_seconds": 60.0}) == ""
    note = read_back_note({"read_back": 3, "table_runs": 5, "run_seconds": 600.0})
    assert "read 3 of the 5 runs back" in note and "add up to 10.0 min" in note
