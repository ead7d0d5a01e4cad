"""Compare runs: one table of methods with mean ± std over seeds (``python eval/compare.py``).

Usage::

    python eval/compare.py RUN_DIR [RUN_DIR ...] [--metric fact_to_image_map] [--out PREFIX]
                           [--allow-mixed]

Each RUN_DIR holds a results.json (``factmas.evaluation.report``); a folder without one is searched one level
down for run directories. Runs are grouped by (method, λ, split) from results.json's "run" record
(λ shown for methods other than finetune and joint); within a group every run is one seed. For each
group: the final value of each task T1..Tk, over all facts, the average over tasks, forgetting, BWT
and FWT of the chosen metric, as mean ± sample standard deviation (ddof = 1; "–" for one seed), in %.
Markdown goes to stdout (and PREFIX.md); CSV (mean and std columns, unrounded fractions) to PREFIX.csv.

Only like is compared with like: runs that differ in dataset (the data fingerprint of their
config.json), task split or image split (test/val), or that did not finish every stage, are refused
with the reason and each run's value (``check_comparable``, exit 2). ``--allow-mixed`` compares them
on purpose; image splits are then still kept in separate rows, never averaged together.
"""
from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import numpy as np

from factmas.evaluation.metric_specs import names as metric_names
from factmas.evaluation.report import markdown_table, read_results

SUMMARY = ("all", "average", "forgetting", "bwt", "fwt")
METRIC_CHOICES = metric_names(view="compare")    # the metrics one compares (--metric's choices)
NO_LAMBDA = ("finetune", "joint")


def find_runs(paths: list[str]) -> list[Path]:
    """Run directories (holding results.json) among ``paths`` and their direct subfolders.

    Raises:
        ValueError: a path that is neither a run directory nor a folder of them.
    """
    runs: list[Path] = []
    for p in map(Path, paths):
        if (p / "results.json").is_file() or p.name == "results.json":
            runs.append(p if p.is_dir() else p.parent)
            continue
        subs = sorted(q for q in p.glob("*/results.json")) if p.is_dir() else []
        if not subs:
            raise ValueError(f"{p}: no results.json here or one level down")
        runs += [q.parent for q in subs]
    return runs


def identity(run: Path, res: dict) -> dict:
    """What must agree between compared runs: dataset fingerprint, split, image split, completion.

    The fingerprint comes from results.json's "run" record, else from RUN_DIR/config.json; None
    when neither has one (runs recorded before fingerprints).
    """
    from factmas.evaluation.report import is_complete
    from factmas.run.rundir import RunDir
    meta = res.get("run") or {}
    if not meta.get("data_sha256"):
        meta = {**RunDir(run).meta(), **{k: v for k, v in meta.items() if v is not None}}
    data = meta.get("data_sha256")
    if data and meta.get("pixels_sha256"):
        data = f"{data[:12]}/{meta['pixels_sha256'][:12]}"
    return {"dataset": data[:12] if data and "/" not in data else data,
            "split": meta.get("split") or res.get("split"),
            "image split": res.get("image_split", "test"), "complete": is_complete(res)}


def check_comparable(runs: list[Path], results: list[dict]) -> None:
    """Raise ValueError naming the first property the runs differ in (with each run's value), or an
    unfinished run."""
    ids = [identity(r, res) for r, res in zip(runs, results)]
    # split first: the dataset fingerprint covers the task split, so runs that differ only in split
    # also differ in it, and "split" is what the user needs to hear
    for key in ("split", "image split", "dataset"):
        values = {i[key] for i in ids}
        if len(values) > 1:
            each = "; ".join(f"{r}: {i[key]}" for r, i in zip(runs, ids))
            raise ValueError(f"the runs differ in {key} ({each}); compare like with like, or pass "
                             "--allow-mixed to compare them on purpose")
    unfinished = [str(r) for r, i in zip(runs, ids) if not i["complete"]]
    if unfinished:
        raise ValueError(f"unfinished run(s) {', '.join(unfinished)}: not every stage is in their "
                         "results.json (finish them with factmas train --resume), or pass "
                         "--allow-mixed to compare them on purpose")


def group_label(res: dict) -> tuple[str, str]:
    """(method label, split) of a results.json: "mas λ=1" or "finetune"; the run name without a method."""
    run = res.get("run") or {}
    method = run.get("method") or res.get("run_name") or "run"
    lam = run.get("reg_lambda")
    label = method if method in NO_LAMBDA or lam is None else f"{method} λ={lam:g}"
    return label, run.get("split") or res.get("split", "")


def collect(runs: list[Path], metric: str, allow_mixed: bool = False) -> tuple[list[dict], int]:
    """Groups [{"method", "split", "seeds", "values": {column: [per-seed floats]}}] and max T.

    Raises:
        ValueError: an unreadable results.json, an unknown metric, or (without ``allow_mixed``) runs
            that are not comparable (``check_comparable``).
    """
    groups: dict[tuple[str, str], dict] = {}
    num_tasks = 0
    results = [read_results(run) for run in runs]
    if not allow_mixed:
        check_comparable(runs, results)
    for run, res in zip(runs, results):
        if metric not in res["metrics"]:
            raise ValueError(f"{run}/results.json: no metric {metric!r}; has {sorted(res['metrics'])}")
        e = res["metrics"][metric]
        num_tasks = max(num_tasks, res["num_tasks"])
        key = group_label(res)
        if res.get("image_split", "test") != "test":        # never averaged with test results
            key = (key[0], f"{key[1]} [{res['image_split']} images]")
        g = groups.setdefault(key, {"method": key[0], "split": key[1], "seeds": [], "values": {}})
        seed = (res.get("run") or {}).get("seed")
        if seed is not None and seed in g["seeds"]:
            print(f"compare: warning: seed {seed} of {key[0]} ({key[1]}) appears twice "
                  f"(again in {run}); both runs are counted", file=sys.stderr)
        g["seeds"].append(seed)
        cols = {f"T{j + 1}": v for j, v in enumerate(e["final"] or [])}
        cols.update({"all": e["final_all"], **{k: e[k] for k in SUMMARY if k != "all"}})
        for c, v in cols.items():
            g["values"].setdefault(c, []).append(np.nan if v is None else float(v))
    return list(groups.values()), num_tasks


def reference_groups(runs: list[Path], metric: str) -> list[dict]:
    """Rows for the references of the first run that has them (``factmas.evaluation.baselines``): the untrained
    model (the run's "initial" row) and the image-frequency ranking; T1..Tk and "all" only."""
    for run in runs:
        res = read_results(run)
        e, freq = res["metrics"].get(metric, {}), (res.get("baselines") or {}).get("frequency")
        if e.get("initial") is None and freq is None:
            continue
        split = (res.get("run") or {}).get("split") or res.get("split", "")
        out = []
        for label, final, final_all in (
                ("untrained model", e.get("initial"), e.get("initial_all")),
                ("image-frequency ranking", (freq or {}).get(metric, {}).get("final"),
                 (freq or {}).get(metric, {}).get("final_all"))):
            if final is None:
                continue
            values = {f"T{j + 1}": [np.nan if v is None else float(v)] for j, v in enumerate(final)}
            values["all"] = [np.nan if final_all is None else float(final_all)]
            out.append({"method": label, "split": split, "seeds": ["–"], "values": values})
        return out
    return []


def mean_std(values: list[float]) -> tuple[float, float]:
    """(mean, sample std with ddof=1) over the finite values; NaN where undefined."""
    v = np.array([x for x in values if np.isfinite(x)], dtype=float)
    if not len(v):
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")


def cell(values: list[float] | None, signed: bool = False, empty: str = "–") -> str:
    """'m ± s' in % (2 decimals, signed for BWT/FWT); '–' when undefined; no '± s' for one seed;
    ``empty`` when there are no values at all."""
    if not values:
        return empty
    m, s = mean_std(values)
    if not np.isfinite(m):
        return "–"
    txt = f"{m * 100:+.2f}" if signed else f"{m * 100:.2f}"
    return txt + (f" ± {s * 100:.2f}" if np.isfinite(s) else "")


def columns(num_tasks: int) -> list[str]:
    return [f"T{j + 1}" for j in range(num_tasks)] + list(SUMMARY)


def seeds_note(groups: list[dict]) -> str:
    """What the cells are over: "mean ± std over seeds" when every row has several seeds, "one seed
    per row (no std)" when none has, and both said when the rows differ."""
    n = [len(g["seeds"]) for g in groups] or [1]
    if max(n) <= 1:
        return "one seed per row (no std)"
    if min(n) > 1:
        return "mean ± std over seeds"
    return "mean ± std over seeds (a row of one seed has no ± std)"


def to_markdown(groups: list[dict], num_tasks: int, metric: str) -> str:
    """The Markdown table (values in %; mean ± std over seeds, said as ``seeds_note``)."""
    cols = columns(num_tasks)
    head = ["method", "split", "seeds"] + [c if c != "average" else "avg" for c in cols]
    rows = [[g["method"], g["split"], str(len(g["seeds"]))] +
            [cell(g["values"].get(c), c in ("bwt", "fwt"), empty="") for c in cols] for g in groups]
    return (f"{metric} in %, at the end of the sequence; {seeds_note(groups)}\n\n"
            + markdown_table([h.upper() if h in ("bwt", "fwt") else h for h in head], rows) + "\n")


def to_csv(groups: list[dict], num_tasks: int) -> str:
    """CSV: method, split, n_seeds, seeds, then <column>_mean and <column>_std (fractions)."""
    cols = columns(num_tasks)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "split", "n_seeds", "seeds"] + [f"{c}_{s}" for c in cols for s in ("mean", "std")])
    for g in groups:
        cells = []
        for c in cols:
            m, s = mean_std(g["values"].get(c, []))
            cells += ["" if not np.isfinite(x) else f"{x:.10g}" for x in (m, s)]
        w.writerow([g["method"], g["split"], len(g["seeds"]), " ".join(str(s) for s in g["seeds"])] + cells)
    return buf.getvalue()
