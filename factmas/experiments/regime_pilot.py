"""The pilots of issue 27: does finetune forget in a regime? One finetune run per regime on the val
images (``runs/pilot/<regime>/results.json``, docs/regimes.md), its forgetting against today's finetune
forgetting (the committed paper table's finetune runs on the random split, mean ± sample std over
seeds, test images). "Clearly above": above today's mean + 2 std, on fact→image or top-5 forgetting.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from factmas.evaluation.metric_specs import METRIC_SPECS
from factmas.evaluation.report import markdown_table
from factmas.experiments.compare import cell, mean_std
from factmas.experiments.regime_table import BASE, F2I, TOP5, read_run

PILOT_COLUMNS = ((f"{F2I}.forgetting", "f→i forgetting"), (f"{TOP5}.forgetting", "top-5 forgetting"))


def today_forgetting(paper_table: Path) -> dict:
    """Today's finetune forgetting: {column: (mean, std, n)} over the finished
    ``runs/finetune/<random split>_seed<s>`` runs of a committed paper table (test images).

    Raises:
        ValueError: no finished finetune run on a random split there, or a malformed results.json.
    """
    runs = [p.parent for p in sorted((paper_table / "runs" / BASE).glob("random*_seed*/results.json"))]
    rows = [r for r in (read_run(p, "test") for p in runs) if r is not None]
    if not rows:
        raise ValueError(f"{paper_table}/runs/{BASE}: no finished finetune run on a random split "
                         "(today's reference for the pilots)")
    out = {}
    for c, _ in PILOT_COLUMNS:
        m, s = mean_std([r["values"][c] for r in rows])
        out[c] = (m, s, len(rows))
    # the λ = 0 run of MAS's search: finetune on val, first random split and seed (the pilots' setting)
    val = None
    zero = paper_table / "search" / "mas_lambda0"
    if (zero / "results.json").is_file():
        r = read_run(zero, "val")
        val = None if r is None else {c: r["values"][c] for c, _ in PILOT_COLUMNS} | {"split": r["split"]}
    return {"folder": str(paper_table), "columns": out, "val": val}


def pilot_rows(folder: Path, today: dict | None) -> list[dict]:
    """One row per pilot run (``folder/<regime>/results.json``, val images): regime, split, method,
    tasks, the forgetting columns, and whether it is clearly above today's (mean + 2 std on either
    column; None without ``today``). An unfinished run is listed with ``complete`` False.

    Raises:
        ValueError: ``folder`` is not a folder or holds no run; a malformed results.json (named).
    """
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder (expected one run folder per regime)")
    runs = sorted(p.parent for p in folder.glob("*/results.json"))
    if not runs:
        raise ValueError(f"{folder}: no <regime>/results.json")
    out = []
    for run in runs:
        r = read_run(run, "val")
        if r is None:
            out.append({"regime": run.name, "complete": False})
            continue
        above = None
        if today is not None:
            above = any(np.isfinite(r["values"][c])
                        and r["values"][c] > today["columns"][c][0] + 2 * today["columns"][c][1]
                        for c, _ in PILOT_COLUMNS)
        out.append({"regime": run.name, "complete": True, "split": r["split"], "method": r["method"],
                    "num_tasks": r["num_tasks"], "values": r["values"], "clearly_above": above})
    return out


def pilot_markdown(rows: list[dict], today: dict | None) -> str:
    """The pilot table: per regime its finetune run's forgetting (val images), and today's."""
    head = ["pilot", "split", "method", "tasks"] + [h for _, h in PILOT_COLUMNS] \
        + [f"{METRIC_SPECS[F2I].short}", "clearly above today's"]
    body = []
    for r in rows:
        if not r["complete"]:
            body.append([r["regime"], "(unfinished)"] + [""] * (len(head) - 2))
            continue
        body.append([r["regime"], r["split"], r["method"], str(r["num_tasks"])]
                    + [cell([r["values"][c]]) for c, _ in PILOT_COLUMNS]
                    + [cell([r["values"][f"{F2I}.all"]]),
                       "–" if r["clearly_above"] is None else ("yes" if r["clearly_above"] else "no")])
    text = markdown_table(head, body)
    if today is not None:
        ref = "; ".join(f"{h} {cell([m])} ± {s * 100:.2f} (threshold {100 * (m + 2 * s):.2f})"
                        for (c, h) in PILOT_COLUMNS for m, s, _ in [today["columns"][c]])
        n = next(iter(today["columns"].values()))[2]
        text += (f"\n\nToday's finetune (`{today['folder']}`, random split, {n} seeds, test "
                 f"images): {ref}. \"Clearly above\": above today's mean + 2 std on either "
                 "column. The pilots are scored on val images, today's runs on test.")
        if today.get("val"):
            v = today["val"]
            text += (f" Today on val (MAS's λ = 0 search run, i.e. finetune, {v['split']}, one seed): "
                     + "; ".join(f"{h} {cell([v[c]])}" for c, h in PILOT_COLUMNS) + ".")
    return text
