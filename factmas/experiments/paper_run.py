"""Running the MAS paper's facts comparison end to end (the work of ``python eval/paper_table.py``).

``bracketed_search`` runs the λ grids and extends a grid whose best λ sits at an edge;
``run_paper_table`` does the whole comparison (search, final runs, report files). The plan, the
criterion and the workers are ``factmas.experiments.paper_table``; the outputs
``factmas.experiments.paper_report``; the command line ``factmas.cli.paper``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from factmas.experiments.paper_table import (GRIDS, MAX_EXTENSIONS, Settings, choose_lambdas,
                                             extend_grids, final_jobs, run_all, search_jobs, share_zero)

log = logging.getLogger("factmas.experiments.paper_table")

RunAll = Callable[[list, Settings], list]


def bracketed_search(settings: Settings, search: list[dict],
                     run: RunAll = run_all) -> tuple[list[dict], dict[str, float]]:
    """Run the λ grids, then extend each grid whose best λ sits at an edge (``extend_grids``) and
    run the new values, at most ``MAX_EXTENSIONS`` rounds; ``settings.grids`` grows in place (the
    search table lists every value run). ``run``: how jobs are trained (``paper_table.run_all``).
    Returns (the search runs' summaries, the chosen λ)."""
    needed = settings.searches()
    searched = share_zero(run(search, settings), {m: settings.grids[m] for m in needed})
    chosen = choose_lambdas(searched, {m: settings.grids[m] for m in needed})
    for round_ in range(MAX_EXTENSIONS):
        more = extend_grids({m: settings.grids[m] for m in chosen}, chosen)
        if not more:
            break
        log.info("λ search round %d: %s at the edge of the grid; adding %s", round_ + 2,
                 ", ".join(f"{m} (λ = {chosen[m]:g})" for m in more),
                 ", ".join(f"{m}: {v[0]:g}" for m, v in more.items()))
        for m, values in more.items():
            settings.grids[m] = tuple(sorted(settings.grids[m] + values))
        searched = share_zero(searched + run(search_jobs(settings, more), settings),
                              {m: settings.grids[m] for m in needed})
        chosen = choose_lambdas(searched, {m: settings.grids[m] for m in needed})
    else:
        edge = extend_grids({m: settings.grids[m] for m in chosen}, chosen)
        if edge:
            log.warning("λ search: still at the edge of the grid after %d extensions: %s",
                        MAX_EXTENSIONS, ", ".join(f"{m} λ = {chosen[m]:g}" for m in edge))
    searched.sort(key=lambda r: (r["label"], r["reg_lambda"]))
    return searched, chosen


@dataclass(frozen=True)
class PaperRuns:
    """What the comparison trained: the λ-search runs' summaries, the chosen λ, the final runs."""
    searched: list
    chosen: dict
    finals: list


def train_paper_runs(settings: Settings, run: RunAll = run_all,
                     search: RunAll | None = None) -> PaperRuns:
    """The λ search (``bracketed_search``), then the final runs with the chosen λ. ``search``: the
    runner of the search (default ``run``). Raises whatever a run raises (the caller reports which)."""
    jobs = search_jobs(settings)
    log.info("paper table: %d λ-search runs, then %d final runs (%s), %d worker(s); output %s",
             len(jobs), len(final_jobs(settings, {m: 0.0 for m in GRIDS})),
             ", ".join(settings.variants), settings.jobs, settings.out)
    searched, chosen = bracketed_search(settings, jobs, search or run)
    log.info("λ chosen on val images: %s", chosen or "none needed")
    return PaperRuns(searched, chosen, run(final_jobs(settings, chosen), settings))


def write_paper_table(settings: Settings, runs: PaperRuns, command: str, commit: str | None,
                      quick: bool, seconds: float) -> list[Path]:
    """Write the tables, CSV, plot and results.json of the comparison (``paper_report.write_outputs``);
    returns their paths."""
    from factmas.experiments.paper_report import write_outputs
    trained = [r for r in runs.searched if "shared_from" not in r] + runs.finals   # each run once
    meta = {"command": command, "commit": commit, "quick": quick, "seconds": seconds,
            "cpu_seconds": sum(r["cpu_seconds"] for r in trained),
            "run_seconds": sum(r["seconds"] for r in trained),
            "data_note": (f" (a random {settings.image_fraction:.0%} of the images)"
                          if settings.image_fraction < 1 else "")}
    return write_outputs(settings, runs.searched, runs.chosen, runs.finals, meta)


__all__ = ["PaperRuns", "bracketed_search", "train_paper_runs", "write_paper_table"]
