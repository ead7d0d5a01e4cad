"""results.json / results.md / plots from hand-made evaluation rows; the Evaluator's record API."""
import json

import numpy as np
import pytest

from factmas.evaluation import metrics as M
from factmas.evaluation.evaluator import HEADLINE, METRICS
from factmas.evaluation.report import (build_results, is_complete, normalize_metrics, read_results, row_key,
                                       stage_label, write_report)
from factmas.run.rundir import RunDir

T = 3
R = np.array([[0.8, 0.1, 0.2], [0.6, 0.7, 0.3], [0.5, 0.4, 0.9]])
B = np.array([0.05, 0.15, 0.1])


def _row(values, all_value):
    d = {m: {j: float(v) * (1 + i) / 5 for j, v in enumerate(values)} for i, m in enumerate(METRICS)}
    d[HEADLINE] = {j: float(v) for j, v in enumerate(values)}
    for m in METRICS:
        d[m]["all"] = all_value
    d["timing"] = {"embed_s": 1.0, "search_s": 0.5, "metrics_s": 0.25}
    d["counts"] = {"facts": {0: 3, 1: 4, 2: 5, "all": 12}}
    return d


def _rows():
    rows = {"initial": _row(B, 0.1)}
    rows.update({i: _row(R[i], 0.3 + 0.1 * i) for i in range(T)})
    return rows


def test_build_results_R_and_summaries():
    res = build_results(_rows(), T, run_name="mas_s0", split="random3_seed0")
    e = res["metrics"][HEADLINE]
    np.testing.assert_allclose(e["R"], R)
    np.testing.assert_allclose(e["initial"], B)
    np.testing.assert_allclose(e["final"], R[-1])
    assert e["all"] == pytest.approx([0.3, 0.4, 0.5]) and e["final_all"] == pytest.approx(0.5)
    assert e["average"] == pytest.approx(M.average_accuracy(R))
    assert e["forgetting"] == pytest.approx(0.3)
    assert e["bwt"] == pytest.approx(-0.3)
    assert e["fwt"] == pytest.approx(0.075)
    assert res["stages"] == [0, 1, 2] and res["columns"] == ["T1", "T2", "T3"]
    assert list(res["timing"]) == ["initial", "task0", "task1", "task2"]


def test_joint_or_unfinished_run_has_no_forgetting(tmp_path):
    rows = {"initial": _row(B, 0.1), 0: _row(R[2], 0.5)}       # one stage (joint) over 3 tasks
    res = build_results(rows, T, run={"method": "joint", "seed": 0}, stage_tasks=[[0, 1, 2]])
    assert res["stage_tasks"] == [[0, 1, 2]] and res["complete"] is True
    e = res["metrics"][HEADLINE]
    assert e["final"] == pytest.approx(list(R[2]))
    assert e["forgetting"] is None and e["bwt"] is None and e["fwt"] is None
    assert e["average"] == pytest.approx(R[2].mean())
    write_report(tmp_path, res)
    md = (tmp_path / "results.md").read_text()
    assert "| after joint training | 50.00 | 40.00 | 90.00 | 50.00 |" in md
    assert "| – | – | – |" in md                                # forgetting, BWT, FWT undefined
    # image→fact's "all" ranks all facts, a task only its own: said under the metrics table
    assert "a task's test images rank only that task's facts" in md
    assert 'in "all" every test image ranks all facts of every task' in md
    legacy = {k: v for k, v in res.items() if k not in ("stage_tasks", "complete")}
    assert stage_label(legacy, 0) == "after joint training" and is_complete(legacy)   # older files
    seq = build_results(rows, T, run={"method": "mas", "seed": 0})      # one task per stage: unfinished
    assert seq["stage_tasks"] == [[0], [1], [2]] and not seq["complete"] and not is_complete(seq)
    assert stage_label(seq, 0) == "after T1"


def test_write_report_files(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"config": {"train": {"method": "mas", "split": "random3_seed0", "reg_lambda": 2.0}}, "seed": 4}))
    rows = _rows()
    rows[0][HEADLINE][2] = float("nan")      # e.g. a task without test images; unused by F, BWT, FWT
    paths = write_report(tmp_path, build_results(rows, T, run_name="mas_s4", run=RunDir(tmp_path).meta()))
    assert {p.name for p in paths} == {"results.json", "results.md", "r_heatmap.png", "map_per_task.png"}
    for p in paths:
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = read_results(tmp_path)
    assert res["run"] == {"method": "mas", "seed": 4, "split": "random3_seed0", "reg_lambda": 2.0}
    assert res["metrics"][HEADLINE]["R"][0][2] is None      # NaN written as null
    md = (tmp_path / "results.md").read_text()
    assert "| mas_s4 | 50.00 | 40.00 | 90.00 | 50.00 | 60.00 | 30.00 | -30.00 | +7.50 |" in md
    assert "| initial | 5.00 | 15.00 | 10.00 | 10.00 |" in md
    assert "mAP@100" in md


def test_record_round_trip_through_json(tmp_path):
    rows = _rows()
    back = {row_key(k if k == "initial" else f"task{k}"): normalize_metrics(json.loads(json.dumps(
        {m: ({str(j): (None if np.isnan(v) else v) for j, v in d.items()} if m in METRICS else d)
         for m, d in r.items()}, default=str))) for k, r in rows.items()}
    a, b = build_results(rows, T), build_results(back, T)
    assert a["metrics"] == b["metrics"]


def test_row_key_and_read_errors(tmp_path):
    assert row_key("initial") == "initial" and row_key("task2") == 2 and row_key(3) == 3
    assert row_key("1") == 1
    for bad in ("final", -1, "task", True):
        with pytest.raises(ValueError, match="evaluation row"):
            row_key(bad)
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(ValueError, match="not a factmas results file"):
        read_results(tmp_path)
    with pytest.raises(ValueError, match="cannot read"):
        read_results(tmp_path / "missing.json")


# ---------------------------------------------------------------- compare and evaluate_cli

from factmas.cli import compare as compare_cli  # noqa: E402


def _write_run(path, method, seed, final, lam=1.0):
    rows = {"initial": _row(B, 0.1), 0: _row(R[0], 0.3), 1: _row(R[1], 0.4), 2: _row(final, 0.5)}
    res = build_results(rows, T, run_name=path.name,
                        run={"method": method, "seed": seed, "split": "random3_seed0", "reg_lambda": lam})
    write_report(path, res)
    return res


def test_compare_mean_std_over_seeds(tmp_path, capsys):
    finals = [np.array([0.5, 0.4, 0.9]), np.array([0.3, 0.6, 0.7])]
    for s, f in enumerate(finals):
        _write_run(tmp_path / "runs" / f"mas_s{s}", "mas", s, f)
    _write_run(tmp_path / "runs" / "ft_s0", "finetune", 0, R[2])
    assert compare_cli.main([str(tmp_path / "runs"), "--out", str(tmp_path / "cmp")]) == 0
    md = capsys.readouterr().out
    t1 = np.array([0.5, 0.3]) * 100
    assert f"| mas λ=1 | random3_seed0 | 2 | {t1.mean():.2f} ± {t1.std(ddof=1):.2f} |" in md
    assert "| finetune | random3_seed0 | 1 | 50.00 | 40.00 | 90.00 |" in md
    assert "; mean ± std over seeds (a row of one seed has no ± std)" in md.splitlines()[0]
    rows = (tmp_path / "cmp.csv").read_text().splitlines()
    assert rows[0].startswith("method,split,n_seeds,seeds,T1_mean,T1_std")
    mas = next(r.split(",") for r in rows if r.startswith("mas"))
    assert mas[:4] == ["mas λ=1", "random3_seed0", "2", "0 1"]
    assert float(mas[4]) == pytest.approx(0.4) and float(mas[5]) == pytest.approx(np.std([0.5, 0.3], ddof=1))
    assert (tmp_path / "cmp.md").read_text() == md.split("wrote")[0]
    assert compare_cli.main([str(tmp_path / "nothing")]) == 2
    assert "no results.json" in capsys.readouterr().err


def test_compare_heading_of_one_seed_per_row_promises_no_std(tmp_path, capsys):
    _write_run(tmp_path / "runs" / "ft_s0", "finetune", 0, R[2])
    _write_run(tmp_path / "runs" / "mas_s0", "mas", 0, R[1])
    assert compare_cli.main([str(tmp_path / "runs")]) == 0
    md = capsys.readouterr().out
    assert md.splitlines()[0].endswith("; one seed per row (no std)")
    assert "±" not in md
    for s in (0, 1):
        _write_run(tmp_path / "runs2" / f"mas_s{s}", "mas", s, R[2])
    assert compare_cli.main([str(tmp_path / "runs2")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "mean ± std over seeds" in first                 # references (one value) may join


def test_evaluate_cli_recomputes_a_trained_run(tmp_path, capsys):
    """A tiny real run (trainer → checkpoints), then `factmas evaluate` gives the same results."""
    from factmas.cli import evaluate as evaluate_cli
    from factmas.config import ModelConfig, RunConfig
    from factmas.data.synthetic import make_synthetic_dataset
    from factmas.trainer import train

    data = make_synthetic_dataset(tmp_path / "s.h5", n_images=60, image_size=12, num_tasks=2)
    cfg = RunConfig(data=str(data), out=str(tmp_path / "run"),
                    model=ModelConfig(backbone="small_cnn", embed_dim=4, width=4, word_dim=4, fact_hidden=8, norm_groups=2))
    cfg.train.split, cfg.train.method, cfg.train.epochs, cfg.train.batch_size = "random2_seed0", "mas", 1, 16
    train(cfg, progress=False)
    saved = read_results(cfg.out)
    assert saved["stages"] == [0, 1] and saved["metrics"][HEADLINE]["initial"] is not None
    assert evaluate_cli.main([cfg.out, "--out", str(tmp_path / "re"), "-q"]) == 0
    again = read_results(tmp_path / "re")
    assert again["metrics"] == saved["metrics"]               # the initial model rebuilt from the seed
    assert again["run"]["method"] == "mas"
    capsys.readouterr()
    assert evaluate_cli.main([cfg.out, "--checkpoint", "task0", "--json", "-q"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert one[HEADLINE]["all"] == pytest.approx(saved["metrics"][HEADLINE]["all"][0])
    assert evaluate_cli.main([str(tmp_path), "-q"]) == 2


def test_recorder_keeps_rows_apart_from_measuring(tmp_path):
    """The Recorder replays rows that went through JSON, calls its baselines once, writes the report."""
    from factmas.evaluation.recorder import Recorder
    calls = []
    rec = Recorder(T, "random3_seed0", baselines=lambda: calls.append(1) or {"frequency": _row(B, 0.1)},
                   stage_tasks=[[0], [1], [2]])
    for key, metrics in _rows().items():
        rec.record(key if key == "initial" else f"task{key}", json.loads(json.dumps(metrics)))
    res = rec.results("r")
    assert res == build_results(_rows(), T, run_name="r", split="random3_seed0",
                                baselines={"frequency": _row(B, 0.1)}, stage_tasks=[[0], [1], [2]])
    paths = rec.write(tmp_path, run={"method": "mas"}, note="x")
    assert calls == [1] and read_results(tmp_path)["note"] == "x" and len(paths) == 4
    assert read_results(tmp_path)["run_name"] == tmp_path.name and res["complete"]
    with pytest.raises(ValueError, match="evaluation row"):
        rec.record("final", {})


def test_plots_show_both_directions_one_panel_each(tmp_path, monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from factmas.evaluation import report
    titles, ylabels = [], []
    real_save = report._save

    def spy(fig, path):              # what each figure shows, read before it is written
        titles.append([ax.get_title() for ax in fig.axes])
        ylabels.append([ax.get_ylabel() for ax in fig.axes])
        return real_save(fig, path)
    monkeypatch.setattr(report, "_save", spy)
    res = build_results(_rows(), T, run_name="mas_s0")
    report.write_plots(res, tmp_path)
    heat, lines = titles[0], ylabels[1]
    for name in ("fact→image mAP (%)", "image→fact mAP (%)", "image→fact top-5 (%)"):
        assert name in heat and name in lines
    only = {**res, "metrics": {HEADLINE: res["metrics"][HEADLINE]}}       # headline only: one panel
    titles.clear(), ylabels.clear()
    report.write_plots(only, tmp_path)
    assert [t for t in titles[0] if t] == ["fact→image mAP (%)"]
    plt.close("all")


def test_recall_at_k_in_results_tables_and_plots(tmp_path):
    """Rows with Recall@K (the evaluator's rows) carry it into results.json, results.md and the
    plots; rows of older runs without it still give a report (without R@K)."""
    from factmas.evaluation.metrics import RECALL_METRICS
    from factmas.evaluation.report import LABELS, PLOT_METRICS
    rows = _rows()
    for key, row in rows.items():
        for i, m in enumerate(RECALL_METRICS):
            row[m] = {j: 0.1 * (i + 1) + 0.01 * j for j in range(T)} | {"all": 0.05 * (i + 1)}
    res = build_results(rows, T, run_name="r")
    for i, m in enumerate(RECALL_METRICS):
        assert res["metrics"][m]["final"] == pytest.approx([0.1 * (i + 1) + 0.01 * j for j in range(T)])
        assert res["metrics"][m]["final_all"] == pytest.approx(0.05 * (i + 1))
    write_report(tmp_path, res)
    md = (tmp_path / "results.md").read_text()
    for m in RECALL_METRICS:
        assert f"| {LABELS[m]} |" in md
    assert "| fact→image R@10 | 30.00 | 31.00 | 32.00 | 15.00 |" in md     # T1..T3, all
    assert {"fact_to_image_recall_at_1", "image_to_fact_recall_at_1"} <= set(PLOT_METRICS)
    assert normalize_metrics(json.loads(json.dumps(rows[0])))["fact_to_image_recall_at_5"][1] == \
        pytest.approx(0.21)
    old = build_results(_rows(), T)                                       # rows without R@K
    assert not set(RECALL_METRICS) & set(old["metrics"])
