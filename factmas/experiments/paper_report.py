"""The paper-style tables of ``eval/paper_table.py``: Markdown, CSV, a PNG bar plot and results.json.

Layout of the MAS paper's facts table (Aljundi et al., ECCV 2018, Table 2): one row per method, the
fact→image mAP (%) of each task T1..Tk and over all facts at the end of the sequence; here as mean ±
sample std (ddof 1) over seeds, plus forgetting (Chaudhry et al. 2018) and BWT (Lopez-Paz & Ranzato
2017) from R. One set of tables per split family (random, semantic, image-disjoint), over its seeds.
Joint has a single row of R: forgetting and BWT are undefined ("–").

Beside it, per family: both retrieval directions side by side (fact→image mAP, image→fact mAP and
top-5 over all facts, each with forgetting and BWT), and Lifelong Fact Learning's metric per task with
its mean (standard mode, as their README) and the generalized mean (``factmas.evaluation.lfl``). Every
table has two reference rows: the image-frequency ranking and the untrained model (from the runs of
the first method of the family, one per split and seed; forgetting and BWT undefined).
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from factmas.experiments.compare import cell, mean_std
from factmas.io import atomic_path, atomic_write_json, atomic_write_text
from factmas.experiments.paper_table import BASELINES, DIRECTIONS, LFL_KEYS, VARIANT, Settings
from factmas.evaluation.metric_specs import METRIC_SPECS
from factmas.evaluation.report import markdown_table

COLUMNS = ("all", "forgetting", "bwt")
FAMILIES = ("random", "semantic", "disjoint")


def family(split: str, settings: Settings) -> str:
    """"random", "semantic" or "disjoint" (the table a run belongs to)."""
    if split == settings.semantic_split:
        return "semantic"
    if split.startswith(f"{settings.disjoint_prefix}_seed"):
        return "disjoint"
    return "random"


def side_columns(metrics: dict, reference: bool = False) -> dict:
    """Columns "<metric>.all|forgetting|bwt" (DIRECTIONS) and "<lfl key>.T<j>|mean" (LFL_KEYS) of a
    run summary's "metrics" (or, ``reference``, of one of its "baselines": no forgetting/BWT)."""
    out: dict[str, Any] = {}
    for m in DIRECTIONS:
        e = metrics.get(m)
        if e:
            out[f"{m}.all"] = e["final_all"]
            out[f"{m}.forgetting"] = None if reference else e["forgetting"]
            out[f"{m}.bwt"] = None if reference else e["bwt"]
    for m in LFL_KEYS:
        e = metrics.get(m)
        if e:
            out.update({f"{m}.T{j + 1}": v for j, v in enumerate(e["final"] or [])})
            out[f"{m}.mean"] = e["average"]
    return out


def _add(row: dict, cols: dict) -> None:
    for c, v in cols.items():
        row["values"].setdefault(c, []).append(np.nan if v is None else float(v))


def aggregate(finals: list[dict], settings: Settings) -> list[dict]:
    """Rows {family, label, title, reg_lambda, seeds, values: {column: [per seed]}} in table order."""
    rows: dict[tuple[str, str], dict] = {}
    for fam in FAMILIES:
        for label in settings.variants:
            for r in finals:
                if r["label"] != label or family(r["split"], settings) != fam:
                    continue
                row = rows.setdefault((fam, label), {
                    "family": fam, "label": label, "title": VARIANT[label].title,
                    "reg_lambda": r["reg_lambda"] if VARIANT[label].lambda_from else None,
                    "splits": [], "seeds": [], "values": {}})
                row["splits"].append(r["split"])
                row["seeds"].append(r["seed"])
                cols = {f"T{j + 1}": v for j, v in enumerate(r["final"] or [])}
                cols.update({c: r[f"final_{c}" if c == "all" else c] for c in COLUMNS})
                cols.update(side_columns(r.get("metrics") or {}))
                _add(row, cols)
        # the reference rows, from the first method's runs of the family (one per split and seed;
        # a first-run-only row (ablation, --one-run) only when no other method ran there)
        order = sorted(settings.variants, key=settings.first_run_only)
        first = next((lab for lab in order if any(
            r["label"] == lab and family(r["split"], settings) == fam for r in finals)), None)
        for name, title in BASELINES:
            for r in finals:
                if r["label"] != first or family(r["split"], settings) != fam:
                    continue
                b = (r.get("baselines") or {}).get(name) or {}
                head = b.get("fact_to_image_map")
                if not head:
                    continue
                row = rows.setdefault((fam, name), {
                    "family": fam, "label": name, "title": title, "reg_lambda": None,
                    "reference": True, "splits": [], "seeds": [], "values": {}})
                row["splits"].append(r["split"])
                row["seeds"].append(r["seed"])
                cols = {f"T{j + 1}": v for j, v in enumerate(head["final"] or [])}
                cols.update({"all": head["final_all"], "forgetting": None, "bwt": None})
                cols.update(side_columns(b, reference=True))
                _add(row, cols)
    return list(rows.values())


def task_columns(rows: list[dict]) -> list[str]:
    n = max((sum(c.startswith("T") for c in r["values"]) for r in rows), default=0)
    return [f"T{j + 1}" for j in range(n)]


def table_markdown(rows: list[dict], fam: str) -> str:
    """The Markdown table of one split family."""
    rows = [r for r in rows if r["family"] == fam]
    tasks = task_columns(rows)
    head = ["method", "λ"] + tasks + ["all facts", "forgetting", "BWT", "seeds"]
    body = [[r["title"], "–" if r["reg_lambda"] is None else f"{r['reg_lambda']:g}"]
            + [cell(r["values"].get(c)) for c in tasks + ["all", "forgetting"]]
            + [cell(r["values"].get("bwt"), signed=True), ",".join(map(str, r["seeds"]))]
            for r in rows]
    return markdown_table(head, body)


def directions_markdown(rows: list[dict], fam: str) -> str:
    """Both retrieval directions side by side for one family: over all facts at the end of the
    sequence, each with forgetting and BWT."""
    rows = [r for r in rows if r["family"] == fam]
    head = ["method", "λ"]
    for m in DIRECTIONS:
        head += [METRIC_SPECS[m].short, "forgetting", "BWT"]
    body = []
    for r in rows:
        line = [r["title"], "–" if r["reg_lambda"] is None else f"{r['reg_lambda']:g}"]
        for m in DIRECTIONS:
            line += [cell(r["values"].get(f"{m}.all")), cell(r["values"].get(f"{m}.forgetting")),
                     cell(r["values"].get(f"{m}.bwt"), signed=True)]
        body.append(line + [",".join(map(str, r["seeds"]))])
    return markdown_table(head + ["seeds"], body)


def lfl_markdown(rows: list[dict], fam: str) -> str:
    """Lifelong Fact Learning's metric for one family: per task and mean (standard mode, the layout
    of their README), and the generalized mean."""
    rows = [r for r in rows if r["family"] == fam]
    tasks = task_columns(rows)
    std, gen = LFL_KEYS
    body = [[r["title"]] + [cell(r["values"].get(f"{std}.{t}")) for t in tasks]
            + [cell(r["values"].get(f"{std}.mean")), cell(r["values"].get(f"{gen}.mean"))]
            for r in rows]
    return markdown_table(["method"] + tasks + ["mean (standard)", "mean (generalized)"], body)


def search_markdown(search: list[dict], chosen: dict[str, float]) -> str:
    """The λ search: for each (method, λ), the val fact→image and image→fact mAP over all facts and
    the criterion (``factmas.experiments.paper_table.criterion``) the chosen λ (marked) maximizes."""
    def pct(v):
        return "–" if v is None else f"{v * 100:.2f}"
    body = []
    for r in search:
        mark = " ◀" if chosen.get(r["label"]) == r["reg_lambda"] else ""
        shared = f" ({r['shared_from']}'s run)" if r.get("shared_from") else ""
        m = r.get("metrics") or {}
        f2i = (m.get("fact_to_image_map") or {}).get("final_all")
        i2f = (m.get("image_to_fact_map") or {}).get("final_all")
        top5 = (m.get("image_to_fact_top5") or {}).get("final_all")
        body.append([r["label"], f"{r['reg_lambda']:g}{shared}", pct(f2i), pct(i2f), pct(top5),
                     pct(r.get("criterion")) + mark, f"{r['seconds']:.0f}"])
    return markdown_table(["method", "λ", "val fact→image mAP", "val image→fact mAP",
                           "val image→fact top-5", "criterion ½(f→i + i→f mAP)", "seconds"], body)


def to_csv(rows: list[dict]) -> str:
    """family, method, label, λ, n_seeds, seeds, then <column>_mean, <column>_std (fractions)."""
    cols = task_columns(rows) + list(COLUMNS)
    cols += list(dict.fromkeys(c for r in rows for c in r["values"] if c not in cols))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["split", "method", "label", "reg_lambda", "n_seeds", "seeds"]
               + [f"{c}_{s}" for c in cols for s in ("mean", "std")])
    for r in rows:
        cells = []
        for c in cols:
            m, s = mean_std(r["values"].get(c, []))
            cells += ["" if not np.isfinite(x) else f"{x:.10g}" for x in (m, s)]
        w.writerow([r["family"], r["title"], r["label"],
                    "" if r["reg_lambda"] is None else f"{r['reg_lambda']:g}", len(r["seeds"]),
                    " ".join(map(str, r["seeds"]))] + cells)
    return buf.getvalue()


def bar_plot(rows: list[dict], path: Path) -> Path:
    """Grouped bars, one panel per retrieval direction (fact→image mAP, image→fact mAP, image→fact
    top-5; all facts, test images): per method, one bar per split family, sample std over seeds as
    error bars (none for a single seed); the legend gives the number of seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(r["label"] for r in rows))
    titles = {r["label"]: r["title"] for r in rows}
    fams = [f for f in FAMILIES if any(r["family"] == f for r in rows)]
    panels = (("all", "fact→image mAP"), ("image_to_fact_map.all", "image→fact mAP"),
              ("image_to_fact_top5.all", "image→fact top-5"))
    fig, axes = plt.subplots(1, len(panels), figsize=(len(panels) * (0.8 * len(labels) + 2.0), 4.4))
    width = 0.8 / max(len(fams), 1)
    x = np.arange(len(labels))
    for ax, (key, name) in zip(axes, panels):
        for i, fam in enumerate(fams):
            ms = []
            for lab in labels:
                r = next((r for r in rows if r["label"] == lab and r["family"] == fam), None)
                ms.append(mean_std(r["values"].get(key, [])) if r else (np.nan, np.nan))
            m = np.array([a for a, _ in ms]) * 100
            s = np.array([b for _, b in ms]) * 100
            ns = [len(r["seeds"]) for r in rows if r["family"] == fam]
            lo, hi = min(ns), max(ns)
            seeds = f"{lo}–{hi} seeds" if lo != hi else f"{hi} seed{'s' if hi != 1 else ''}"
            ax.bar(x + (i - (len(fams) - 1) / 2) * width, m, width,
                   yerr=s if np.isfinite(s).any() else None, capsize=3, label=f"{fam} ({seeds})")
        ax.set_xticks(x, [titles[lab] for lab in labels], rotation=25, ha="right")
        ax.set_ylabel(f"{name}, all facts (%)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("End of the sequence, test images (mean ± std over seeds)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


def shown_path(path: str) -> str:
    """``path`` as the report shows it: relative to the working directory when it lies under it (a
    report committed to the repository names no path of one machine), else unchanged."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def read_back_note(meta: dict[str, Any]) -> str:
    """What the wall time covers when some runs were read back from an earlier invocation (a
    resumed table): "" when every run was trained by this one."""
    n, total = meta.get("read_back", 0), meta.get("table_runs", 0)
    if not n:
        return ""
    return (f" in this invocation, which read {n} of the {total} runs back from earlier ones (the "
            f"{total} runs' own wall times add up to {meta['run_seconds'] / 60:.1f} min)")


def run_commits_line(meta: dict[str, Any]) -> list[str]:
    """The line naming the commits the runs were trained at (their config.json), when they are not
    all at ``meta['commit']``; [] otherwise."""
    commits = [c for c in meta.get("run_commits") or [] if c]
    if not commits or commits == [meta.get("commit")]:
        return []
    short = [c[:7] + ("-dirty" if c.endswith("-dirty") else "") for c in commits]
    return [f"Runs trained at: {', '.join(f'`{c}`' for c in short)}  "]


def write_outputs(settings: Settings, search: list[dict], chosen: dict[str, float],
                  finals: list[dict], meta: dict[str, Any]) -> list[Path]:
    """paper_table.md / .csv / .png and results.json in ``settings.out``; returns the paths."""
    out = Path(settings.out)
    rows = aggregate(finals, settings)
    seeds = ", ".join(map(str, settings.seeds))
    md = [f"# factmas: the MAS paper's facts comparison{' (QUICK smoke check)' if meta['quick'] else ''}",
          "", f"Command: `{meta['command']}`  ", f"Commit: `{meta['commit']}`  ",
          *run_commits_line(meta),
          f"Data: `{shown_path(settings.data)}`{meta['data_note']}  ",
          f"Epochs per task: {settings.epochs} (λ search: {settings.search_epochs}); "
          f"wall time {meta['seconds'] / 60:.1f} min with {settings.jobs} worker(s)"
          f"{read_back_note(meta)}, {meta['cpu_seconds'] / 60:.1f} CPU min in the runs.", "",
          "fact→image mAP (%) on the test images after the last task: per task T1..Tk and over all "
          "facts, mean ± std over seeds; forgetting and BWT from the accuracy matrix R.", ""]
    single = [VARIANT[v].title for v in settings.variants if settings.first_run_only(v)]
    if single:
        md += [f"Run on the first random split and seed only ({settings.random_prefix}_seed"
               f"{settings.seeds[0]}, seed {settings.seeds[0]}; no std): {'; '.join(single)}.", ""]
    dseeds = ", ".join(map(str, settings.disjoint_seeds))
    for fam, name in (("random", f"Random split ({settings.random_prefix}_seed{{{seeds}}})"),
                      ("semantic", f"Semantic split ({settings.semantic_split})"),
                      ("disjoint", f"Image-disjoint split ({settings.disjoint_prefix}_seed{{{dseeds}}}: "
                                   "every training image in one task only)")):
        if any(r["family"] == fam for r in rows):
            md += [f"## {name}", "", table_markdown(rows, fam), "",
                   "Both directions (%, over all facts after the last task; forgetting and BWT from "
                   "each metric's R):", "", directions_markdown(rows, fam), "",
                   "Lifelong Fact Learning's metric (%, `factmas/evaluation/lfl.py`; their published "
                   "numbers on 6DS: `docs/results/lfl_reference/`):", "", lfl_markdown(rows, fam), ""]
    md += ["## How λ was chosen", "",
           "Held-out training images only, never the test set: for each regularized method, each λ "
           f"of its grid trained {settings.random_prefix}_seed{settings.seeds[0]} (seed "
           f"{settings.seeds[0]}, {settings.search_epochs} epoch(s) per task) and was scored by one "
           "criterion that weighs both directions, ½ (fact→image mAP + image→fact mAP) over all "
           "facts after the last task, on the *val* image split (images of the training part held "
           "out from training). Every grid includes λ = 0; a grid whose best λ was at its edge was "
           "extended (×10 above, ÷10 below the smallest positive λ when λ = 0 won) until the best "
           "was interior. The best λ (◀; ties within 0.01 points: the smaller) is used in every "
           "final run; MAS with Ω from test or train+test images uses MAS's λ.", ""]
    md += [search_markdown(search, chosen) if search else "(no regularized method)", ""]
    paths = [out / "paper_table.md", out / "paper_table.csv", out / "paper_table.png",
             out / "results.json"]
    atomic_write_text(paths[0], "\n".join(md))
    atomic_write_text(paths[1], to_csv(rows))
    bar_plot(rows, paths[2])
    atomic_write_json(paths[3], {"format": "factmas-paper-table", "version": 1, **meta,
                                 "settings": {k: v for k, v in vars(settings).items()},
                                 "lambda_search": search, "chosen_lambda": chosen,
                                 "runs": finals, "table": rows})
    return paths
