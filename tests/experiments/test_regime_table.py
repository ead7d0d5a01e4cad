"""eval/regime_table.py on fake regime trees: the numbers against a hand computation (mean, sample
std, pooled std, the 2-pooled-std flag), missing regimes and seeds, unfinished runs, the pilot table,
and the failure paths (malformed results.json, a val run among the final runs, an existing output)."""
from __future__ import annotations

import copy
import csv
import io
import json
import math
import runpy
import statistics
from pathlib import Path

import numpy as np
import pytest

from factmas.experiments import regime_table as rt

ROOT = Path(__file__).resolve().parents[2]
# a committed run in the real results.json format: the fake runs are copies with new values
TEMPLATE = json.loads((ROOT / "docs/results/paper_table/runs/finetune/random4_seed0/results.json")
                      .read_text(encoding="utf-8"))
MAIN = runpy.run_path(str(ROOT / "eval" / "regime_table.py"))["main"]
COLS = [c for c, _ in rt.COLUMNS]


def fake_values(rng: np.random.Generator, shift: float = 0.0) -> dict[str, float]:
    """A value in (0, 1) per column of the table (fractions, as results.json holds them)."""
    return {c: float(rng.uniform(0.05, 0.6)) + shift for c in COLS}


def write_run(folder: Path, label: str, split: str, seed: int, values: dict[str, float], *,
              reg_lambda: float = 0.0, image_split: str = "test", complete: bool = True,
              method: str | None = None, commit: str = "abcdef1234") -> Path:
    """A run directory with a results.json in the real format whose table values are ``values``."""
    res = copy.deepcopy(TEMPLATE)
    res["run"].update({"method": method or label, "seed": seed, "split": split, "reg_lambda": reg_lambda})
    res["split"], res["image_split"], res["complete"] = split, image_split, complete
    for col, v in values.items():
        metric, field = col.split(".")
        res["metrics"][metric]["final_all" if field == "all" else
                               "average" if field == "mean" else field] = v
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(res), encoding="utf-8")
    if complete:
        (folder / "timing.json").write_text(json.dumps({"seconds": 1.0, "cpu_seconds": 360.0}))
    (folder / "config.json").write_text(json.dumps({"git_commit": commit, "config": {
        "model": {"freeze_stages": 4}, "loss": {}, "train": {"epochs": 3, "method": label}}}),
        encoding="utf-8")
    return folder


def write_regime(root: Path, name: str, runs: dict[str, dict[int, dict]], prefix: str = "random4",
                 lambdas: dict[str, float] | None = None) -> None:
    for label, seeds in runs.items():
        method = "mas" if label.startswith("mas") else label
        for seed, values in seeds.items():
            write_run(root / name / "runs" / label / f"{prefix}_seed{seed}_seed{seed}", label,
                      f"{prefix}_seed{seed}", seed, values, method=method,
                      reg_lambda=(lambdas or {}).get(label, 0.0))


def read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


@pytest.fixture()
def tree(tmp_path):
    """R0: finetune and MAS on 3 seeds (MAS's fact→image mAP far above), LwF on 2; R3: 8 tasks, one
    seed each, and an unfinished MAS run; R1 and R2 absent. Returns (root, the values written)."""
    rng = np.random.default_rng(27)
    root = tmp_path / "regimes"
    vals = {"R0": {"finetune": {s: fake_values(rng) for s in range(3)},
                   "mas": {s: fake_values(rng) for s in range(3)},
                   "lwf": {s: fake_values(rng) for s in range(2)}},
            "R3": {"finetune": {0: fake_values(rng)}, "mas": {0: fake_values(rng)}}}
    for s in range(3):
        # a clear effect: MAS 0.3 above, seeds within 0.01
        vals["R0"]["finetune"][s][f"{rt.F2I}.all"] = 0.10 + 0.005 * s
        vals["R0"]["mas"][s][f"{rt.F2I}.all"] = 0.40 + 0.004 * s
        # either side of the line (std 0.02 on both sides, so pooled std 0.02): 2.5 and 1.5 pooled std
        vals["R0"]["finetune"][s][f"{rt.LFL_STD}.mean"] = 0.50 + 0.02 * s
        vals["R0"]["mas"][s][f"{rt.LFL_STD}.mean"] = 0.55 + 0.02 * s
        vals["R0"]["finetune"][s][f"{rt.I2F}.all"] = 0.30 + 0.02 * s
        vals["R0"]["mas"][s][f"{rt.I2F}.all"] = 0.33 + 0.02 * s
    write_regime(root, "R0", vals["R0"], lambdas={"mas": 1.0, "lwf": 3.0})
    write_regime(root, "R3", vals["R3"], prefix="random8", lambdas={"mas": 10.0})
    write_run(root / "R3" / "runs" / "mas" / "random8_seed1_seed1", "mas", "random8_seed1", 1,
              fake_values(rng), complete=False, reg_lambda=10.0)
    for lam, crit in ((0.0, 0.2), (1.0, 0.3), (10.0, 0.25)):      # R0's λ search, on val
        v = fake_values(rng)
        v[f"{rt.F2I}.all"], v[f"{rt.I2F}.all"] = crit - 0.05, crit + 0.05    # criterion: their mean
        write_run(root / "R0" / "search" / f"mas_lambda{lam:g}", "mas", "random4_seed0", 0,
                  v, reg_lambda=lam, image_split="val")
    (root / "smoke" / "runs").mkdir(parents=True)     # not a regime
    return root, vals


def test_table_numbers_match_a_hand_computation(tree, tmp_path):
    root, vals = tree
    out = tmp_path / "table"
    assert MAIN(["--regimes", str(root), "--out", str(out)]) == 0
    rows = read_csv(out.with_name("table.csv"))
    assert {r["regime"] for r in rows} == {"R0", "R3"}       # missing R1, R2 not invented; smoke skipped
    for regime, labels in vals.items():
        for label, seeds in labels.items():
            row = next(r for r in rows if r["regime"] == regime and r["kind"] == "method"
                       and r["label"] == label)
            assert int(row["n"]) == len(seeds)
            for c in COLS:
                xs = [seeds[s][c] for s in sorted(seeds)]
                assert float(row[f"{c}_mean"]) == pytest.approx(sum(xs) / len(xs), abs=1e-9)
                if len(xs) > 1:
                    assert float(row[f"{c}_std"]) == pytest.approx(statistics.stdev(xs), abs=1e-9)
                else:
                    assert row[f"{c}_std"] == ""
        ft, mas = labels["finetune"], labels["mas"]
        diff = next(r for r in rows if r["regime"] == regime and r["kind"] == "finetune difference")
        assert diff["label"] == "mas" and diff["n"] == f"{len(mas)}/{len(ft)}"
        for c in COLS:
            a, b = [mas[s][c] for s in sorted(mas)], [ft[s][c] for s in sorted(ft)]
            d = sum(a) / len(a) - sum(b) / len(b)
            assert float(diff[f"{c}_diff"]) == pytest.approx(d, abs=1e-9)
            if len(a) > 1 and len(b) > 1:
                sp = math.sqrt((statistics.stdev(a) ** 2 + statistics.stdev(b) ** 2) / 2)
                assert float(diff[f"{c}_pooled_std"]) == pytest.approx(sp, abs=1e-9)
                assert diff[f"{c}_flag"] == ("1" if abs(d) > 2 * sp else "0")
            else:                   # one seed: no std, never flagged
                assert diff[f"{c}_pooled_std"] == "" and diff[f"{c}_flag"] == "0"
    r0 = next(r for r in rows if r["regime"] == "R0" and r["kind"] == "finetune difference")
    assert r0[f"{rt.F2I}.all_flag"] == "1"                     # the planted effect is found
    assert r0[f"{rt.LFL_STD}.mean_flag"] == "1"                # 2.5 pooled std: flagged
    assert r0[f"{rt.I2F}.all_flag"] == "0"                     # 1.5 pooled std: not
    md = out.with_name("table.md").read_text(encoding="utf-8")
    assert "1 (val grid 0, 1, 10)" in md                       # λ chosen on val, with its grid
    assert "mas 0: 20.00, **1: 30.00**, 10: 25.00" in md       # the val criterion of each λ
    assert "**+" in md and "†" in md
    assert "Unfinished, left out: runs/mas/random8_seed1_seed1" in md
    # R0: 8 final runs and 3 search runs of 360 CPU-seconds each (0.1 h)
    assert "1.1 CPU-hours (0.8 final runs, 0.3 λ search)" in md
    assert "`abcdef1`" in md and "freeze_stages 4" in md and "MAS Ω data mas train." in md
    assert out.with_name("table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pooled_std_is_the_equal_n_formula():
    rng = np.random.default_rng(3)
    for _ in range(20):
        s1, s2 = rng.uniform(0, 1, 2)
        assert rt.pooled_std(s1, s2) == pytest.approx(math.sqrt((s1 ** 2 + s2 ** 2) / 2))
    assert math.isnan(rt.pooled_std(float("nan"), 0.1))


def test_pilot_table_against_todays_forgetting(tree, tmp_path):
    root, _ = tree
    rng = np.random.default_rng(5)
    today = tmp_path / "paper_table"
    f_ft = [fake_values(rng) for _ in range(3)]
    for s, v in enumerate(f_ft):
        write_run(today / "runs" / "finetune" / f"random4_seed{s}_seed{s}", "finetune",
                  f"random4_seed{s}", s, v)
    col = f"{rt.F2I}.forgetting"
    xs = [v[col] for v in f_ft]
    threshold = statistics.mean(xs) + 2 * statistics.stdev(xs)
    pilot = tmp_path / "pilot"
    low, high = fake_values(rng), fake_values(rng)
    low[col], high[col] = threshold - 0.01, threshold + 0.01
    low[f"{rt.TOP5}.forgetting"] = high[f"{rt.TOP5}.forgetting"] = 0.0
    write_run(pilot / "R0", "finetune", "random4_seed0", 0, low, image_split="val")
    write_run(pilot / "R2", "finetune", "random4_seed0", 0, high, image_split="val")
    out = tmp_path / "t"
    assert MAIN(["--regimes", str(root), "--out", str(out), "--pilot", str(pilot),
                 "--today", str(today)]) == 0
    md = out.with_name("t.md").read_text(encoding="utf-8")
    lines = {ln.split(" | ")[0].strip("| "): ln for ln in md.splitlines() if ln.startswith("| R")}
    assert lines["R0"].rstrip(" |").endswith("no") and lines["R2"].rstrip(" |").endswith("yes")
    assert f"threshold {100 * threshold:.2f}" in md


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_text("{not json", encoding="utf-8"), "cannot read results"),
    (lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "metrics": [1]}),
                            encoding="utf-8"), "malformed results file"),
    (lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "image_split": "val"}),
                            encoding="utf-8"), "expected 'test'"),
])
def test_a_bad_results_json_is_named_exit_2(tree, tmp_path, capsys, damage, message):
    root, _ = tree
    bad = root / "R0" / "runs" / "mas" / "random4_seed1_seed1" / "results.json"
    damage(bad)
    out = tmp_path / "table"
    assert MAIN(["--regimes", str(root), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and message in err
    assert not out.with_name("table.md").exists()            # nothing written


def test_a_value_that_is_not_a_number_is_named(tree, tmp_path, capsys):
    root, _ = tree
    bad = root / "R3" / "runs" / "finetune" / "random8_seed0_seed0" / "results.json"
    res = json.loads(bad.read_text())
    res["metrics"][rt.F2I]["final_all"] = "high"
    bad.write_text(json.dumps(res))
    assert MAIN(["--regimes", str(root), "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "'high'" in err


def test_usage_errors_exit_2_before_writing(tree, tmp_path, capsys):
    root, _ = tree
    assert MAIN(["--regimes", str(tmp_path / "nowhere"), "--out", str(tmp_path / "t")]) == 2
    assert "not a folder" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert MAIN(["--regimes", str(empty), "--out", str(tmp_path / "t")]) == 2
    assert "no regime folder" in capsys.readouterr().err
    out = tmp_path / "t"
    out.with_name("t.md").write_text("keep me")
    assert MAIN(["--regimes", str(root), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.with_name("t.md").read_text() == "keep me" and not out.with_name("t.csv").exists()
    assert MAIN(["--regimes", str(root), "--out", str(out), "--overwrite"]) == 0
    assert out.with_name("t.md").read_text() != "keep me"
    assert MAIN(["--regimes", str(root), "--out", str(tmp_path / "u"), "--pilot",
                 str(tmp_path / "nopilot")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_a_regime_without_finished_runs_is_shown_as_such(tmp_path):
    root = tmp_path / "regimes"
    (root / "R2" / "runs").mkdir(parents=True)          # started, nothing finished yet
    write_run(root / "R2" / "runs" / "finetune" / "random4_seed0_seed0", "finetune", "random4_seed0",
              0, fake_values(np.random.default_rng(1)), complete=False)
    out = tmp_path / "t"
    assert MAIN(["--regimes", str(root), "--out", str(out)]) == 0
    md = out.with_name("t.md").read_text(encoding="utf-8")
    assert "## R2" in md and "(no finished final run yet)" in md
    assert read_csv(out.with_name("t.csv")) == []
