"""Running the MAS paper's facts comparison end to end (the work of ``python eval/paper_table.py``).

``bracketed_search`` scores the λ grids by training runs (the search itself, which λ next and which
wins, is ``factmas.experiments.lambda_search``); ``train_paper_runs`` trains the search and the final
runs, ``write_paper_table`` writes the report files. The plan, the criterion and the workers are
``factmas.experiments.paper_table``; the outputs ``factmas.experiments.paper_report``; the command
line ``factmas.cli.paper``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from factmas.experiments import lambda_search
from factmas.experiments.paper_table import (GRIDS, VARIANT, Settings, final_jobs, run_all, search_jobs,
                                            share_zero)

log = logging.getLogger("factmas.experiments.paper_table")

RunAll = Callable[[list, Settings], list]


def bracketed_search(settings: Settings, search: list[dict],
                     run: RunAll = run_all) -> tuple[list[dict], dict[str, float]]:
    """The λ search of the comparison: ``factmas.experiments.lambda_search.bracketed_search`` over the
    grids of the searched labels (``Settings.searches``), each λ scored by training ``run``'s jobs
    (``paper_table.run_all``; first the jobs ``search``, then ``search_jobs`` of each extension)
    by their ``criterion``, with λ = 0 shared between methods (``share_zero``). ``settings.grids``
    grows in place (the search table lists every value run). Returns (the search runs' summaries
    sorted by label and λ, the chosen λ)."""
    needed = settings.searches()
    searched: list[dict] = []
    rounds = 0

    def score(values: dict[str, tuple[float, ...]]) -> dict[str, dict[float, float | None]]:
        nonlocal searched, rounds
        jobs, rounds = search, rounds + 1
        if rounds > 1:                               # an extension round: one new λ per label
            for m, v in values.items():
                settings.grids[m] = tuple(sorted(settings.grids[m] + v))
            jobs = search_jobs(settings, values)
        searched = share_zero(searched + run(jobs, settings), {m: settings.grids[m] for m in needed})
        return {m: {r["reg_lambda"]: r.get("criterion") for r in searched if r["label"] == m}
                for m in needed}

    outcome = lambda_search.bracketed_search({m: settings.grids[m] for m in needed}, score)
    searched.sort(key=lambda r: (r["label"], r["reg_lambda"]))
    return searched, outcome.chosen


@dataclass(frozen=True)
class PaperRuns:
    """What the comparison trained: the λ-search runs' summaries, the chosen λ, the final runs."""
    searched: list
    chosen: dict
    finals: list


def train_paper_runs(settings: Settings, run: RunAll = run_all,
                     search: RunAll | None = None) -> PaperRuns:
    """The λ search (``bracketed_search``), then the final runs with the chosen λ. Without a separate
    ``search`` runner, the final runs that need no λ (finetune, joint: no ``lambda_from``) go with
    the search's first round, so that no worker waits idle while the last search runs finish; the
    others follow the search. The finals come back in ``final_jobs`` order. ``search``: the runner
    of the search (default ``run``). Raises whatever a run raises (the caller reports which)."""
    jobs = search_jobs(settings)
    plan = final_jobs(settings, {m: 0.0 for m in GRIDS})
    free = [] if search else [j for j in plan if VARIANT[j["label"]].lambda_from is None]
    log.info("paper table: %d λ-search runs, then %d final runs (%s; %d need no λ and run with the "
             "search), %d worker(s); output %s", len(jobs), len(plan), ", ".join(settings.variants),
             len(free), settings.jobs, settings.out)
    early: list[dict] = []

    def first_round_with_free(batch: list[dict], s: Settings) -> list[dict]:
        if free and not early:          # the search's first round (``bracketed_search`` always runs one)
            res = run(batch + free, s)
            early.extend(res[len(batch):])
            return res[:len(batch)]
        return (search or run)(batch, s)

    searched, chosen = bracketed_search(settings, jobs, first_round_with_free)
    log.info("λ chosen on val images: %s", chosen or "none needed")
    key = lambda r: (r["label"], r["split"], r["seed"])                      # noqa: E731
    plan = final_jobs(settings, chosen)
    done = {key(r): r for r in early}
    done.update({key(r): r for r in run([j for j in plan if key(j) not in done], settings)})
    return PaperRuns(searched, chosen, [done[key(j)] for j in plan])


def write_paper_table(settings: Settings, runs: PaperRuns, command: str, commit: str | None,
                      quick: bool, seconds: float) -> list[Path]:
    """Write the tables, CSV, plot and results.json of the comparison (``paper_report.write_outputs``);
    returns their paths."""
    from factmas.experiments.paper_report import write_outputs
    trained = [r for r in runs.searched if "shared_from" not in r] + runs.finals   # each run once
    meta = {"command": command, "commit": commit, "quick": quick, "seconds": seconds,
            "cpu_seconds": sum(r["cpu_seconds"] for r in trained),
            "run_seconds": sum(r["seconds"] for r in trained),
            # the table's runs (search and final, each once), how many were read back, their commits
            "table_runs": len(trained), "read_back": sum(not r.get("trained_now", True) for r in trained),
            "run_commits": sorted({r["commit"] for r in trained if r.get("commit")}),
            "data_note": (f" (a random {settings.image_fraction:.0%} of the images)"
                          if settings.image_fraction < 1 else "")}
    return write_outputs(settings, runs.searched, runs.chosen, runs.finals, meta)


__all__ = ["PaperRuns", "bracketed_search", "train_paper_runs", "write_paper_table"]
