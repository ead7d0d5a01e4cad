"""The report of a run: results.json (every R, every metric), results.md and PNG plots.

results.json (``build_results``; format "factmas-results", version 1)::

    {"format": "factmas-results", "version": 1,
     "run_name": str, "run": {"method", "seed", "split", "reg_lambda"} (from config.json when present),
     "split": str, "num_tasks": T, "columns": ["T1", ..., "TT"],
     "image_split": "test", "image_pool": "all" | "task", "ap_k": 100, "headline": "fact_to_image_map",
     "stages": [0, 1, ...]            # rows of R that were recorded (stage index = trained task)
     "stage_tasks": [[0], [1], ...],  # the tasks each stage of the stream trains ([[0, 1, ...]]: joint)
     "complete": bool,                # every stage of the stream recorded
     "metrics": {<metric>: {
         "initial": [T] | null,       # the untrained model (b, the forward-transfer baseline)
         "initial_all": float | null,
         "R": [[T] per stage],        # R[i][j]: task j after training stages 0..i
         "all": [per stage],          # over all facts after each stage
         "final": [T], "final_all": float,    # the last stage (the end of the sequence)
         "average": ACC, "forgetting": F, "bwt": BWT, "fwt": FWT}},   # null where undefined
     # in the order of factmas.evaluation.metric_specs: its "core" metrics always, the others
     # (Recall@1/5/10, LFL's metric, the generalized mode) where every row has them
     "counts": {...}, "timing": {row label: {"embed_s", "search_s", "metrics_s"}}}

NaN (e.g. a task without test images) is written as null. Forgetting, BWT and FWT need a square R
(one stage per task, all done): a joint run (one stage) or an unfinished run has them null.
results.md gives the headline metric laid out like the MAS paper's facts table (rows = run, columns
T1..Tk and all, at the end of the sequence) with forgetting/BWT/FWT, the full R, and the other metrics.
Plots (matplotlib, Agg): ``r_heatmap.png`` (headline R with the initial row) and
``map_per_task.png`` (each task's headline metric after each training step).
"""
from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from factmas.evaluation import metrics as M
from factmas.evaluation.metric_specs import HEADLINE, METRIC_SPECS, METRICS, label, names
from factmas.io import atomic_path, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

FORMAT, VERSION = "factmas-results", 1
# metric name → label, a view of the records (factmas.evaluation.metric_specs; ``label`` also names
# a metric without a record)
LABELS = {name: spec.label for name, spec in METRIC_SPECS.items()}


def row_key(row: str | int) -> str | int:
    """"initial", or the stage index from t, "t" or "task{t}". Raises ValueError otherwise."""
    if isinstance(row, (int, np.integer)) and not isinstance(row, bool) and row >= 0:
        return int(row)
    if isinstance(row, str):
        if row == "initial":
            return row
        m = re.fullmatch(r"(?:task)?(\d+)", row)
        if m:
            return int(m.group(1))
    raise ValueError(f"evaluation row {row!r}: expected 'initial', a stage index t or 'task{{t}}'")


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def normalize_metrics(metrics: dict) -> dict:
    """Metrics back from JSON: task keys "0" → 0, None → NaN (metric and counts dicts)."""
    out: dict[str, Any] = {}
    for name, value in metrics.items():
        if name in METRIC_SPECS:
            out[name] = {("all" if k == "all" else int(k)): _num(v) for k, v in value.items()}
        elif name == "counts":
            out[name] = {c: {("all" if k == "all" else int(k)): v for k, v in d.items()}
                         for c, d in value.items()}
        else:
            out[name] = value
    return out


def _clean(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def summarize(R: np.ndarray, b: np.ndarray | None) -> dict:
    """ACC, forgetting, BWT, FWT of R [S, T] (None where undefined: S != T, or no b for FWT)."""
    square = R.shape[0] == R.shape[1] and R.shape[0] > 0
    out = {"average": _clean(float(R[-1].mean())) if len(R) else None,
           "forgetting": None, "bwt": None, "fwt": None}
    if square:
        out["forgetting"] = _clean(M.forgetting(R))
        out["bwt"] = _clean(M.backward_transfer(R))
        if b is not None:
            out["fwt"] = _clean(M.forward_transfer(R, b))
    return out


def build_results(rows: dict, num_tasks: int, run_name: str = "", split: str = "",
                  image_pool: str = "all", ap_k: int = 100, image_split: str = "test",
                  run: dict | None = None, baselines: dict | None = None,
                  stage_tasks: list[list[int]] | None = None) -> dict:
    """results.json content (module docstring) from rows {"initial" | stage: metrics dict};
    ``baselines`` {name: metrics dict} (``factmas.evaluation.baselines``) become ``res["baselines"][name][metric]
    = {"final": per-task values, "final_all": value}``; ``stage_tasks``: the tasks of each stage of
    the stream (None: one task per stage)."""
    stages = sorted(k for k in rows if k != "initial")
    if stage_tasks is None:
        stage_tasks = [[t] for t in range(num_tasks)]
    init = rows.get("initial")
    res: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "run_name": run_name, "run": run or {},
        "split": split, "num_tasks": num_tasks, "columns": [f"T{j + 1}" for j in range(num_tasks)],
        "image_split": image_split, "image_pool": image_pool, "ap_k": ap_k, "headline": HEADLINE,
        "stages": stages, "stage_tasks": [[int(t) for t in ts] for ts in stage_tasks],
        "complete": bool(stages) and stages == list(range(len(stage_tasks))), "metrics": {}, "counts": rows[stages[-1]].get("counts", {}) if stages else {},
        "timing": {("initial" if k == "initial" else f"task{k}"): rows[k].get("timing", {})
                   for k in (["initial"] if init else []) + stages},
        # mean pairwise cosine of the pool images' embeddings (1 = collapsed), per row
        "embedding_mean_cosine": {("initial" if k == "initial" else f"task{k}"):
                                  _clean(rows[k].get("embedding", {}).get("mean_cosine", np.nan))
                                  for k in (["initial"] if init else []) + stages},
    }
    # Recall@K, LFL's metric and the generalized mode where every row has them (rows of older runs
    # lack them)
    present = tuple(m for m, spec in METRIC_SPECS.items()
                    if spec.kind != "core" and all(m in r for r in rows.values()))
    for m in METRICS + present:
        R = np.array([[rows[s][m].get(j, np.nan) for j in range(num_tasks)] for s in stages],
                     dtype=np.float64).reshape(len(stages), num_tasks)
        b = np.array([init[m].get(j, np.nan) for j in range(num_tasks)]) if init else None
        entry = {"initial": None if b is None else [_clean(x) for x in b],
                 "initial_all": _clean(init[m].get("all", np.nan)) if init else None,
                 "R": [[_clean(x) for x in r] for r in R],
                 "all": [_clean(rows[s][m].get("all", np.nan)) for s in stages],
                 "final": [_clean(x) for x in R[-1]] if len(R) else None,
                 "final_all": _clean(rows[stages[-1]][m].get("all", np.nan)) if stages else None}
        entry.update(summarize(R, b))
        res["metrics"][m] = entry
    res["baselines"] = {
        name: {m: {"final": [_clean(_num(met[m].get(j))) for j in range(num_tasks)],
                   "final_all": _clean(_num(met[m].get("all")))}
               for m in METRICS + tuple(x for x in present if x in met)}
        for name, met in (baselines or {}).items()}
    return res


def stage_tasks(res: dict) -> list[list[int]]:
    """The tasks of each stage of a results.json's stream: its "stage_tasks"; for files written
    before it was recorded, from the run's method (joint: one stage of every task)."""
    if res.get("stage_tasks") is not None:
        return res["stage_tasks"]
    t = int(res.get("num_tasks", 0))
    legacy_joint = (res.get("run") or {}).get("method") == "joint"
    return [list(range(t))] if legacy_joint else [[j] for j in range(t)]


def is_complete(res: dict) -> bool:
    """Whether a results.json covers the whole stream: its "complete" field when present, else every
    stage of ``stage_tasks(res)`` recorded."""
    if "complete" in res:
        return bool(res["complete"])
    stages, planned = res.get("stages") or [], stage_tasks(res)
    return bool(planned) and stages == list(range(len(planned)))


def fmt(x: float | None, scale: float = 100.0, signed: bool = False) -> str:
    """A value in percent with 2 decimals ('–' for None/NaN)."""
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x * scale:+.2f}" if signed else f"{x * scale:.2f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def final_row(entry: dict) -> list[str]:
    """T1..Tk, all, average, forgetting, BWT, FWT of one metric entry, formatted."""
    final = entry["final"] or []
    return ([fmt(x) for x in final] + [fmt(entry["final_all"]), fmt(entry["average"]),
            fmt(entry["forgetting"]), fmt(entry["bwt"], signed=True), fmt(entry["fwt"], signed=True)])


def stage_label(res: dict, stage: int) -> str:
    """Row label of a stage: "after T{t+1}" (a stage of one task t), "after joint training" (the
    only stage, holding several tasks), else "after stage {s+1}"."""
    planned = stage_tasks(res)
    tasks = planned[stage] if stage < len(planned) else [stage]
    if len(tasks) == 1:
        return f"after T{tasks[0] + 1}"
    return "after joint training" if len(planned) == 1 else f"after stage {stage + 1}"


def _row_name(res: dict, key: str) -> str:
    """A results.json row key ("initial", "task{s}" with s the 0-based stage) as results.md names the
    rows of R ("initial", "after T1", ...)."""
    return key if key == "initial" else stage_label(res, row_key(key))


def results_markdown(res: dict) -> str:
    """results.md text (module docstring)."""
    cols, head = res["columns"], res["headline"]
    summary_cols = cols + ["all", "avg", "forgetting", "BWT", "FWT"]
    pool = "all test images" if res["image_pool"] == "all" else "each task's own test images"
    out = [f"# Results: {res['run_name']}", "",
           f"Split `{res['split']}`, {res['num_tasks']} tasks; images: `{res['image_split']}` split, "
           f"fact→image pool: {pool}. Values in %, at the end of the sequence (after stage "
           f"{res['stages'][-1] + 1 if res['stages'] else '–'}). avg = mean over tasks; forgetting "
           "(Chaudhry et al. 2018), BWT and FWT (Lopez-Paz & Ranzato 2017) from R.", "",
           f"## {label(head)}", "",
           markdown_table(["run"] + summary_cols, [[res["run_name"]] + final_row(res["metrics"][head])]),
           "", f"## {label(head)}: R (row: after training stage; column: evaluated task)", ""]
    e = res["metrics"][head]
    rows = []
    if e["initial"] is not None:
        rows.append(["initial"] + [fmt(x) for x in e["initial"]] + [fmt(e["initial_all"])])
    rows += [[stage_label(res, s)] + [fmt(x) for x in r] + [fmt(a)]
             for s, r, a in zip(res["stages"], e["R"], e["all"])]
    out += [markdown_table(["after"] + cols + ["all"], rows), "", "## All metrics", ""]
    out.append(markdown_table(["metric"] + summary_cols,
                              [[label(m).replace("@k", f"@{res['ap_k']}")] + final_row(e2)
                               for m, e2 in res["metrics"].items()]))
    out += ["", I2F_ALL_NOTE]
    cos = {k: v for k, v in res.get("embedding_mean_cosine", {}).items() if v is not None}
    if cos:
        out += ["", "Mean pairwise cosine of the evaluated images' embeddings (each slot L2-normalized; "
                "1 = collapsed): " + ", ".join(f"{_row_name(res, k)} {v:.3f}" for k, v in cos.items()) + "."]
    t = res["timing"]
    if t:
        last = t[list(t)[-1]]
        out += ["", "Evaluation time of the last row: " + ", ".join(
            f"{k[:-2]} {v:.2f} s" for k, v in last.items()) + "."]
    return "\n".join(out) + "\n"


def draw_r(ax, A: np.ndarray, labels: list[str], cols: list[str], vmin: float | None = None,
           vmax: float | None = None):
    """Draw R (float [rows, tasks], %, NaN for none) as a heat map on ``ax``, each cell labelled, on
    the colour scale [vmin, vmax] (None: R's own range); returns the image for a colour bar."""
    im = ax.imshow(A, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(labels)), labels)
    lo = np.nanmin(A) if vmin is None and np.isfinite(A).any() else (vmin or 0.0)
    hi = np.nanmax(A) if vmax is None and np.isfinite(A).any() else (vmax or 0.0)
    mid = (lo + hi) / 2
    for i in range(A.shape[0]):
        for j in range(A.shape[1]):
            if np.isfinite(A[i, j]):
                ax.text(j, i, f"{A[i, j]:.1f}", ha="center", va="center", fontsize=8,
                        color="k" if A[i, j] > mid else "w")
    ax.set_xlabel("evaluated task")
    return im


PLOT_METRICS = names(view="plot")       # the panels: both directions side by side
# what "all" means for image→fact (factmas.evaluation.evaluator): a harder ranking than a task's
I2F_ALL_NOTE = ("image→fact: in T1…Tk a task's test images rank only that task's facts (Lifelong Fact "
                "Learning's standard mode); in \"all\" every test image ranks all facts of every task, a "
                "harder ranking, so \"all\" sits below the tasks (the generalized rows: a task's images "
                "ranking all facts).")


def _matrix(e: dict) -> tuple[np.ndarray, list[float]]:
    """(R with the initial row first, float [rows, tasks] in %, NaN for none; the all-facts column)."""
    rows = ([e["initial"]] if e["initial"] is not None else []) + e["R"]
    alls = ([e["initial_all"]] if e["initial"] is not None else []) + e["all"]
    A = np.array([[np.nan if x is None else x for x in r] for r in rows], dtype=float) * 100
    return A, [np.nan if v is None else v * 100 for v in alls]


def write_plots(res: dict, run_dir: str | Path) -> list[Path]:
    """r_heatmap.png and map_per_task.png, one panel per retrieval direction (``PLOT_METRICS``
    present in ``res``: fact→image mAP, image→fact mAP, image→fact top-5, R@1 of both directions;
    the headline alone when the others are missing); returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = res["columns"]
    metrics = [m for m in PLOT_METRICS if m in res["metrics"]] or [res["headline"]]
    e0 = res["metrics"][metrics[0]]
    labels = ((["initial"] if e0["initial"] is not None else [])
              + [stage_label(res, s) for s in res["stages"]])
    k = len(metrics)
    paths = []
    fig, axes = plt.subplots(1, k, figsize=(k * (1.2 * len(cols) + 2.5), 0.6 * len(labels) + 1.8),
                             squeeze=False)
    for ax, m in zip(axes[0], metrics):
        A, _ = _matrix(res["metrics"][m])
        im = draw_r(ax, A, labels if ax is axes[0][0] else [""] * len(labels), cols)
        ax.set_title(f"{label(m)} (%)")
        fig.colorbar(im, ax=ax)
    fig.suptitle(f"{res['run_name']}: R, row = after training, column = evaluated task")
    fig.tight_layout()
    paths.append(_save(fig, Path(run_dir) / "r_heatmap.png"))
    fig, axes = plt.subplots(1, k, figsize=(5.2 * k, 4), squeeze=False)
    x = np.arange(len(labels))
    for ax, m in zip(axes[0], metrics):
        A, alls = _matrix(res["metrics"][m])
        i2f = m.startswith("image_to_fact")
        for j, c in enumerate(cols):
            ax.plot(x, A[:, j], marker="o", label=f"{c}: among its own facts" if i2f and j == 0 else c)
        ax.plot(x, alls, "k--", marker="s", label="all: among all facts" if i2f else "all")
        ax.set_xticks(x, labels, rotation=20)
        ax.set_ylabel(f"{label(m)} (%)")
        ax.grid(alpha=0.3)
        if i2f or ax is axes[0][0]:
            ax.legend(fontsize=7)
        if i2f:
            ax.set_title("a task's images rank its own facts; all: every image ranks all facts",
                         fontsize=8)
    fig.suptitle(f"{res['run_name']}: each task after each training step")
    fig.tight_layout()
    paths.append(_save(fig, Path(run_dir) / "map_per_task.png"))
    plt.close("all")
    return paths


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return path


def write_report(run_dir: str | Path, res: dict) -> list[Path]:
    """Write results.json, results.md and the plots into ``run_dir``; returns the paths written.

    Nothing but results.json is written when no stage has been recorded.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "results.json", res)
    paths = [run_dir / "results.json"]
    if res["stages"]:
        atomic_write_text(run_dir / "results.md", results_markdown(res))
        paths.append(run_dir / "results.md")
        paths += write_plots(res, run_dir)
    return paths


def is_results_file(path: str | Path) -> bool:
    """True when ``path`` is a readable results.json that factmas wrote (its "format" field)."""
    try:
        res = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(res, dict) and res.get("format") == FORMAT


def read_results(path: str | Path) -> dict:
    """Read a results.json (a run directory or the file). Raises ValueError naming the file."""
    p = Path(path)
    p = p / "results.json" if p.is_dir() else p
    try:
        res = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{p}: cannot read results: {e}") from e
    if not isinstance(res, dict) or res.get("format") != FORMAT:
        raise ValueError(f"{p}: not a factmas results file (format {FORMAT!r})")
    for key, kind in RESULT_KEYS.items():   # a malformed file is said to be one, not "unfinished"
        if key in res and not isinstance(res[key], kind):
            raise ValueError(f"{p}: malformed results file: key {key!r} is a {type(res[key]).__name__}, "
                             f"expected {'an object' if kind is dict else 'a ' + kind.__name__}")
    if not isinstance(res.get("metrics"), dict):
        raise ValueError(f"{p}: malformed results file: key 'metrics' is missing")
    bad = [m for m, e in res["metrics"].items() if not isinstance(e, dict)]
    if bad:
        raise ValueError(f"{p}: malformed results file: metrics[{bad[0]!r}] is not an object")
    return res


# top-level keys of results.json and their JSON types (checked when present)
RESULT_KEYS = {"metrics": dict, "stages": list, "stage_tasks": list, "complete": bool, "run": dict,
               "baselines": dict, "num_tasks": int, "split": str, "headline": str}
