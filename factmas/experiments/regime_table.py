"""The regime table of issue 27: when does MAS beat finetune? Regime × method × metric, from the
output folders of ``eval/paper_table.py`` (one per regime, ``docs/regimes.md``).

Each regime folder (``R0``, ``R1``, ...) is a paper table's folder: ``runs/<label>/<split>_seed<s>/``
(final runs, **test** images, results.json + config.json) and ``search/<label>_lambda<λ>/`` (the λ
search, **val** images). Only the final runs enter the table; the λ search is shown as the λ chosen
on val and its grid. A run is read by ``factmas.evaluation.report.read_results`` and summarized by
``factmas.experiments.paper_table.run_summary`` (the paper table's own reader); its columns are the
paper report's (``paper_report.side_columns``) and the metric names come from
``factmas.evaluation.metric_specs`` (through ``paper_table.DIRECTIONS`` and ``LFL_KEYS``).

Per regime and method: mean ± sample std (ddof 1) over seeds of each column of ``COLUMNS``, with n
(a regime or method with fewer seeds is shown with its n; an unfinished run is left out and named).
Per regime and MAS variant: MAS − finetune, its pooled std s_p = sqrt((s_MAS² + s_finetune²) / 2)
(the two-sample pooled std for equal n, as issue 27 defines it), and a flag where
|MAS − finetune| > 2 s_p (needs n ≥ 2 on both sides).

The PNG: ``factmas.experiments.regime_plot``; the pilot table: ``factmas.experiments.regime_pilot``.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from factmas.evaluation.metric_specs import METRIC_SPECS
from factmas.evaluation.report import is_complete, markdown_table, read_results
from factmas.experiments.compare import cell, mean_std
from factmas.experiments.paper_report import side_columns
from factmas.experiments.paper_table import DIRECTIONS, LFL_KEYS, VARIANT, criterion, run_summary

F2I, I2F, TOP5 = DIRECTIONS          # fact→image mAP, image→fact mAP, image→fact top-5
LFL_STD, LFL_GEN = LFL_KEYS
# (column of paper_report.side_columns, its head here); lower is better for forgetting
COLUMNS = (
    (f"{F2I}.all", METRIC_SPECS[F2I].short),
    (f"{F2I}.forgetting", "f→i forgetting"),
    (f"{I2F}.all", METRIC_SPECS[I2F].short),
    (f"{TOP5}.all", METRIC_SPECS[TOP5].short),
    (f"{TOP5}.forgetting", "top-5 forgetting"),
    (f"{LFL_STD}.mean", "LFL std. mean"),
    (f"{LFL_GEN}.mean", "LFL gen. mean"),
)
BASE = "finetune"                     # the label every MAS variant is compared with
REGIMES = {                           # folder name → what the regime varies (docs/regimes.md)
    "R0": "the model before SWA (Lite0, SWA off) on the stable split",
    "R1": "Sherlock's fixed word2vec targets, L2 loss",
    "R2": "deeper training",
    "R3": "8 tasks",
    "R4": "nearest to LFL: Sherlock targets, stages 5-7 trained, image-disjoint, transductive MAS Ω",
    "R5": "today's default model: R0 with SWA over epochs 2-3 of each task",
}
SKIP = ("smoke", "table", "pilot")    # folders beside the regimes that are not regimes
_SEED = re.compile(r"_seed\d+$")


def _number(x: Any, where: str) -> float:
    """A metric value as a float (None → NaN). Raises ValueError naming ``where``."""
    if x is None:
        return float("nan")
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ValueError(f"{where}: expected a number or null, found {x!r}")
    return float(x)


def read_run(run: Path, image_split: str) -> dict | None:
    """One run directory's summary {label, split, seed, reg_lambda, num_tasks, values: {column: float}},
    or None when it is unfinished (not every stage in results.json).

    Raises:
        ValueError: results.json unreadable or malformed (no run record, a value that is not a
            number), or evaluated on other images than ``image_split``; the message names the file.
    """
    res = read_results(run)
    path = run / "results.json"
    got = res.get("image_split", "test")
    if got != image_split:
        raise ValueError(f"{path}: evaluated on the {got!r} images, expected {image_split!r} here")
    if not is_complete(res):
        return None
    meta = res.get("run") or {}
    for key in ("method", "seed", "split"):
        if meta.get(key) is None:
            raise ValueError(f"{path}: malformed results file: run record lacks {key!r}")
    summary = run_summary(res)
    for m, e in summary["metrics"].items():
        if not isinstance(e.get("final"), (list, type(None))):
            raise ValueError(f"{path}: metrics[{m!r}]['final'] is not a list")
    try:
        cols = side_columns(summary["metrics"])
    except (TypeError, AttributeError) as e:
        raise ValueError(f"{path}: malformed results file: {e}") from e
    values = {c: _number(cols.get(c), f"{path}: {c}") for c, _ in COLUMNS}
    return {"label": run.parent.name, "split": meta["split"], "seed": meta["seed"],
            "method": meta["method"], "reg_lambda": _number(meta.get("reg_lambda"), f"{path}: reg_lambda"),
            "num_tasks": res.get("num_tasks"), "values": values, "path": str(path)}


def label_order(labels: set[str]) -> list[str]:
    """``labels`` in the paper table's row order (``VARIANTS``), unknown labels last, sorted."""
    known = [v for v in VARIANT if v in labels]
    return known + sorted(labels - set(known))


def read_search(folder: Path) -> dict[str, list[dict]]:
    """The λ search of a regime: label → [{reg_lambda, criterion}] sorted by λ, from
    ``folder/search/<label>_lambda<λ>/results.json`` (val images; unfinished runs left out)."""
    out: dict[str, list[dict]] = {}
    for res_path in sorted((folder / "search").glob("*/results.json")):
        run = res_path.parent
        label, _, lam = run.name.rpartition("_lambda")
        res = read_results(run)
        if res.get("image_split", "test") != "val":
            raise ValueError(f"{res_path}: a λ-search run evaluated on {res.get('image_split')!r} "
                             "images, expected 'val'")
        if not label or not is_complete(res):
            continue
        try:
            value = float(lam)
        except ValueError as e:
            raise ValueError(f"{run}: a λ-search folder name must end in _lambda<number>") from e
        out.setdefault(label, []).append({"reg_lambda": value, "criterion": criterion(run_summary(res))})
    for rows in out.values():
        rows.sort(key=lambda r: r["reg_lambda"])
    return out


def read_regime(folder: Path) -> dict:
    """A regime folder's final runs grouped by method: {name, description, rows, unfinished,
    search}; rows [{label, title, split family, seeds, reg_lambdas, num_tasks, values: {column:
    [per seed]}}] in the paper table's method order. Raises ValueError as ``read_run``."""
    groups: dict[tuple[str, str], dict] = {}
    unfinished = []
    for res_path in sorted((folder / "runs").glob("*/*/results.json")):
        run = read_run(res_path.parent, "test")
        if run is None:
            unfinished.append(str(res_path.parent.relative_to(folder)))
            continue
        family = _SEED.sub("", run["split"])      # random4_seed0 → random4; semantic4 stays
        g = groups.setdefault((run["label"], family), {
            "label": run["label"], "title": VARIANT[run["label"]].title if run["label"] in VARIANT
            else run["label"], "family": family, "seeds": [], "reg_lambdas": set(),
            "num_tasks": run["num_tasks"], "values": {c: [] for c, _ in COLUMNS}})
        g["seeds"].append(run["seed"])
        g["reg_lambdas"].add(run["reg_lambda"])
        for c, _ in COLUMNS:
            g["values"][c].append(run["values"][c])
    order = label_order({k[0] for k in groups})
    rows = sorted(groups.values(), key=lambda g: (_family_rank(g["family"]), g["family"],
                                                  order.index(g["label"])))
    for g in rows:
        order_seeds = np.argsort(g["seeds"], kind="stable")
        g["seeds"] = [g["seeds"][i] for i in order_seeds]
        g["values"] = {c: [v[i] for i in order_seeds] for c, v in g["values"].items()}
        g["reg_lambdas"] = sorted(g["reg_lambdas"])
    return {"name": folder.name, "description": REGIMES.get(folder.name, ""), "rows": rows,
            "unfinished": unfinished, "search": read_search(folder), **provenance(folder)}


def _family_rank(family: str) -> int:
    """The paper report's family order: random splits, semantic, image-disjoint, others."""
    for i, prefix in enumerate(("random", "semantic", "disjoint")):
        if family.startswith(prefix):
            return i
    return 3


def provenance(folder: Path) -> dict:
    """{"commits": the distinct commits that made the regime's runs (final and λ search), from their
    config.json; "settings": what its final runs were trained with, from the first one's config.json
    (frozen stages, fact targets, loss, epochs per task; None: the trainer's default), and the
    images each MAS row's Ω was computed on ("MAS Ω data": "label data, ...")}."""
    from factmas.run.rundir import RunDir
    commits: list[str] = []
    settings: dict = {}
    omega: dict[str, str] = {}
    for cfg in sorted(folder.glob("runs/*/*/config.json")) + sorted(folder.glob("search/*/config.json")):
        rec = RunDir(cfg.parent).record()
        c = rec.get("git_commit")
        if isinstance(c, str) and c[:7] not in commits:
            commits.append(c[:7])
        conf = rec.get("config") if isinstance(rec.get("config"), dict) else {}
        if not conf or cfg.relative_to(folder).parts[0] != "runs":
            continue
        model, loss, train = (conf.get(k) if isinstance(conf.get(k), dict) else {}
                              for k in ("model", "loss", "train"))
        if not settings:
            settings = {"freeze_stages": model.get("freeze_stages"),
                        "fact_targets": model.get("fact_targets"), "loss": loss.get("kind"),
                        "epochs": train.get("epochs")}
        label = cfg.parent.parent.name
        if train.get("method") == "mas" and label not in omega:
            mas = (train.get("options") or {}).get("mas") or {}
            omega[label] = str(mas.get("data", train.get("omega_data", "train")))
    if omega:
        settings["MAS Ω data"] = ", ".join(f"{k} {v}" for k, v in omega.items())
    return {"commits": commits, "settings": settings, "cpu_hours": cpu_hours(folder)}


def cpu_hours(folder: Path) -> dict[str, float]:
    """{"runs": final runs, "search": λ search}: the CPU-hours in the regime's finished runs, the
    sum of ``cpu_seconds`` of their timing.json (written by ``eval/paper_table.py``; a run without
    one, or with an unreadable one, counts 0) / 3600."""
    out = {}
    for part, pattern in (("runs", "runs/*/*/timing.json"), ("search", "search/*/timing.json")):
        total = 0.0
        for t in folder.glob(pattern):
            try:
                sec = json.loads(t.read_text(encoding="utf-8")).get("cpu_seconds")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(sec, (int, float)) and not isinstance(sec, bool) and math.isfinite(sec):
                total += float(sec)
        out[part] = total / 3600.0
    return out


def find_regimes(root: Path) -> list[Path]:
    """The regime folders under ``root``: its subfolders holding ``runs/`` (not ``SKIP``), by name.

    Raises:
        ValueError: ``root`` is not a folder, or holds no regime folder.
    """
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder (expected the folder holding R0, R1, ...)")
    found = sorted(p for p in root.iterdir()
                   if p.is_dir() and p.name not in SKIP and (p / "runs").is_dir())
    if not found:
        raise ValueError(f"{root}: no regime folder (a subfolder with runs/, as eval/paper_table.py "
                         "writes)")
    return found


def pooled_std(s1: float, s2: float) -> float:
    """s_p = sqrt((s1² + s2²) / 2): the pooled std of two groups of equal size (issue 27); NaN when
    either is NaN."""
    return math.sqrt((s1 * s1 + s2 * s2) / 2.0)


def differences(regime: dict) -> list[dict]:
    """For each MAS variant (a label whose trainer method is MAS) with a finetune row of the same
    split family: {label, title, family, n, n_base, columns: {column: (diff, pooled std, flag)}};
    flag: |diff| > 2 pooled std (False when either side has fewer than 2 seeds)."""
    out = []
    for r in regime["rows"]:
        v = VARIANT.get(r["label"])
        if v is None or v.method != "mas":
            continue
        base = next((b for b in regime["rows"] if b["label"] == BASE and b["family"] == r["family"]), None)
        if base is None:
            continue
        cols = {}
        for c, _ in COLUMNS:
            m1, s1 = mean_std(r["values"][c])
            m0, s0 = mean_std(base["values"][c])
            sp = pooled_std(s1, s0)
            d = m1 - m0
            cols[c] = (d, sp, bool(np.isfinite(d) and np.isfinite(sp) and abs(d) > 2 * sp))
        out.append({"label": r["label"], "title": r["title"], "family": r["family"],
                    "n": len(r["seeds"]), "n_base": len(base["seeds"]), "columns": cols})
    return out


def _lambda_text(regime: dict, row: dict) -> str:
    v = VARIANT.get(row["label"])
    if v is None or v.lambda_from is None:
        return "–"
    chosen = ", ".join(f"{x:g}" for x in row["reg_lambdas"])
    grid = regime["search"].get(v.lambda_from)
    if not grid:
        return chosen
    values = ", ".join(f"{g['reg_lambda']:g}" for g in grid)
    return f"{chosen} (val grid {values})"


def search_text(regime: dict, label: str) -> str:
    """"mas 0: 24.70, **1: 24.91**, 10: 23.96": a search label's λ and val criterion, the λ of its
    final runs in bold."""
    chosen = {lam for r in regime["rows"] if VARIANT.get(r["label"]) is not None
              and VARIANT[r["label"]].lambda_from == label for lam in r["reg_lambdas"]}
    parts = []
    for g in regime["search"][label]:
        c = g["criterion"]
        txt = f"{g['reg_lambda']:g}: {'–' if c is None else f'{100 * c:.2f}'}"
        parts.append(f"**{txt}**" if g["reg_lambda"] in chosen else txt)
    return f"{label} " + ", ".join(parts)


def _diff_cell(d: float, sp: float, flag: bool) -> str:
    if not np.isfinite(d):
        return "–"
    txt = f"{d * 100:+.2f}" + (f" ± {sp * 100:.2f}" if np.isfinite(sp) else "")
    return f"**{txt}** †" if flag else txt


def regime_markdown(regime: dict) -> str:
    """One regime's table: per split family a row per method (mean ± std over seeds, %, with λ and
    n), then a row per MAS variant's difference from finetune (± pooled std; † where it exceeds
    2 pooled std)."""
    head = ["method", "split", "λ (chosen on val)", "n"] + [h for _, h in COLUMNS]
    body = []
    diffs = differences(regime)
    for fam in dict.fromkeys(r["family"] for r in regime["rows"]):
        body += [[r["title"], r["family"], _lambda_text(regime, r), str(len(r["seeds"]))]
                 + [cell(r["values"][c]) for c, _ in COLUMNS]
                 for r in regime["rows"] if r["family"] == fam]
        body += [[f"{d['title']} − {VARIANT[BASE].title}", d["family"], "", f"{d['n']} / {d['n_base']}"]
                 + [_diff_cell(*d["columns"][c]) for c, _ in COLUMNS]
                 for d in diffs if d["family"] == fam]
    return markdown_table(head, body)


def table_markdown(regimes: list[dict], pilot: str | None, command: str) -> str:
    """The whole report: per regime its table, then ``pilot`` (the pilot table's Markdown,
    ``factmas.experiments.regime_pilot.pilot_markdown``) when given."""
    md = ["# When does MAS beat finetune? The regime table (issue 27)", "",
          f"Command: `{command}`", "",
          "Final runs only (test images, after the last task), % over all facts; mean ± sample std "
          "(ddof 1) over the seeds (n). λ is chosen on the val images by `eval/paper_table.py` "
          "(its grid in brackets). A difference row is MAS − finetune ± the pooled std "
          "sqrt((s_MAS² + s_finetune²) / 2); **bold †**: |difference| > 2 pooled std. On the "
          "forgetting columns a negative difference means MAS forgets less. Columns: "
          "`docs/regimes.md`, \"Reading the table\".", ""]
    for r in regimes:
        md += [f"## {r['name']}" + (f": {r['description']}" if r["description"] else ""), ""]
        if r["settings"]:
            md += ["Trained with (the final runs' config.json): " + ", ".join(
                f"{k} {'default' if v is None else v}" for k, v in r["settings"].items()) + ".  "]
        if r["commits"]:
            md += [f"Runs made at commit(s): {', '.join(f'`{c}`' for c in r['commits'])}.  "]
        h = r["cpu_hours"]
        md += [f"CPU time in the finished runs (their timing.json): {h['runs'] + h['search']:.1f} "
               f"CPU-hours ({h['runs']:.1f} final runs, {h['search']:.1f} λ search).", ""]
        if r["search"]:
            md += ["λ search on val (criterion ½ (f→i + i→f mAP) over all facts, %; **chosen**): "
                   + "; ".join(search_text(r, label) for label in r["search"]) + ".", ""]
        md += [regime_markdown(r) if r["rows"] else "(no finished final run yet)", ""]
        if r["unfinished"]:
            md += [f"Unfinished, left out: {', '.join(r['unfinished'])}.", ""]
    if pilot is not None:
        md += ["## Pilots: does finetune forget in this regime?", "", pilot, ""]
    return "\n".join(md)


def to_csv(regimes: list[dict]) -> str:
    """regime, kind ("method", or "finetune difference": the label's row minus finetune's), label,
    split, reg_lambda, n (for a difference "n/n_finetune"), seeds, then per
    column <column>_mean, <column>_std for a method row or <column>_diff, <column>_pooled_std,
    <column>_flag for a difference row (fractions, unrounded)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = [c for c, _ in COLUMNS]
    w.writerow(["regime", "kind", "label", "split", "reg_lambda", "n", "seeds"]
               + [f"{c}_{s}" for c in cols for s in ("mean", "std")]
               + [f"{c}_{s}" for c in cols for s in ("diff", "pooled_std", "flag")])

    def num(x):
        return "" if not np.isfinite(x) else f"{x:.10g}"
    for r in regimes:
        for row in r["rows"]:
            stats = [num(x) for c in cols for x in mean_std(row["values"][c])]
            v = VARIANT.get(row["label"])
            lam = "" if v is not None and v.lambda_from is None else " ".join(
                f"{x:g}" for x in row["reg_lambdas"])
            w.writerow([r["name"], "method", row["label"], row["family"], lam, len(row["seeds"]),
                        " ".join(map(str, row["seeds"]))] + stats + [""] * (3 * len(cols)))
        for d in differences(r):
            diffs = []
            for c in cols:
                dv, sp, flag = d["columns"][c]
                diffs += [num(dv), num(sp), "1" if flag else "0"]
            w.writerow([r["name"], f"{BASE} difference", d["label"], d["family"], "",
                        f"{d['n']}/{d['n_base']}", ""] + [""] * (2 * len(cols)) + diffs)
    return buf.getvalue()
