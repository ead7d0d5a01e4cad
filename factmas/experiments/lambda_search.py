"""The bracketed λ search: choose each method's λ from a grid, extending a grid whose best λ sits at
its edge, so that the chosen λ is bracketed by values that scored worse.

Pure: what a λ costs to score (training runs) is the caller's function; ``bracketed_search`` only
decides which λ to score next and which one wins. ``factmas.experiments.paper_run.bracketed_search``
scores λ by training runs of the MAS paper's comparison (``factmas.experiments.paper_table``).

The rule (factmas's own; the experiment that uses it scores λ on held-out val images, never the
test set, ``factmas.experiments.paper_table``): the best score wins, scores within ``tie`` of the
best tie and the smaller λ wins (less regularization for the same score); undefined scores (None,
NaN) never win; a grid whose best λ is its largest positive value gets ×10, one whose best is
λ = 0 gets its smallest positive value ÷ 10, at most ``max_extensions`` rounds.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

log = logging.getLogger(__name__)

MAX_EXTENSIONS = 3          # grid extension rounds at most
TIE = 1e-4                  # scores closer than this to the best (a fraction) tie: the smaller λ wins

Grids = Mapping[str, Sequence[float]]
Scores = Mapping[str, Mapping[float, "float | None"]]


def _defined(score: float | None) -> bool:
    return score is not None and math.isfinite(score)


def best_lambda(scores: Mapping[float, float | None], grid: Sequence[float], tie: float = TIE) -> float:
    """The λ of ``scores`` ({λ: score, higher = better}) with the best defined score; λ whose score
    is within ``tie`` of the best tie and the smallest of them wins. When no score is defined: the
    middle of the sorted ``grid`` (its element ``len // 2``). Raises ValueError on an empty ``scores``."""
    if not scores:
        raise ValueError("best_lambda: no scores")
    finite = {lam: s for lam, s in scores.items() if _defined(s)}
    if not finite:
        return sorted(grid)[len(grid) // 2]
    best = max(finite.values())
    return min(lam for lam, s in finite.items() if s >= best - tie)


def choose_lambdas(results: list[dict], grids: Grids, tie: float = TIE) -> dict[str, float]:
    """Per label of ``grids``: ``best_lambda`` of the runs ``results`` ({"label", "reg_lambda",
    "criterion"}; a later run of the same label and λ replaces an earlier one). A label without a
    run is left out; one whose scores are all undefined gets the middle of its grid (a warning)."""
    chosen = {}
    for label, grid in grids.items():
        scores = {r["reg_lambda"]: r.get("criterion") for r in results if r["label"] == label}
        if not scores:
            continue
        chosen[label] = best_lambda(scores, grid, tie)
        if not any(_defined(s) for s in scores.values()):
            log.warning("λ search of %s: no finite score; λ = %g (middle of the grid)", label,
                        chosen[label])
    return chosen


def extend_grids(grids: Grids, chosen: Mapping[str, float]) -> dict[str, tuple[float, ...]]:
    """The values to add so that each chosen λ is interior: {label: (new λ,)} for a label whose λ is
    the grid's largest (×10) or is 0 (the smallest positive λ ÷ 10); labels already bracketed are
    left out. Pure; the caller bounds the rounds (``MAX_EXTENSIONS``)."""
    more = {}
    for label, lam in chosen.items():
        grid = sorted(grids[label])
        positive = [g for g in grid if g > 0]
        if lam == grid[-1] and lam > 0:
            more[label] = (lam * 10.0,)
        elif lam == 0 and positive:
            more[label] = (positive[0] / 10.0,)
    return more


@dataclass(frozen=True)
class SearchOutcome:
    """What ``bracketed_search`` found.

    Attributes:
        chosen: {label: λ}.  grids: {label: every λ scored, sorted} (the grids with their
        extensions).  scores: {label: {λ: score}}.  rounds: extension rounds run (0 to
        ``max_extensions``).  at_edge: {label: λ} of the labels still at an edge of their grid after
        the last round (empty when every λ is bracketed or cannot be extended).
    """
    chosen: dict
    grids: dict
    scores: dict
    rounds: int
    at_edge: dict


def bracketed_search(grids: Grids, score: Callable[[dict[str, tuple[float, ...]]], Scores], *,
                     max_extensions: int = MAX_EXTENSIONS, tie: float = TIE) -> SearchOutcome:
    """Score every λ of ``grids``, then extend each grid whose best λ is at an edge
    (``extend_grids``) and score the new values, until every chosen λ is interior or
    ``max_extensions`` rounds have run.

    Args:
        grids: {label: λ values ≥ 0}.  score: called with {label: λ values to score} (first the
            whole grids, then one new value per extended label); returns {label: {λ: score or None}}
            for (at least) those values, higher = better; it may return more (e.g. λ shared between
            labels), which is kept.  max_extensions: extension rounds at most.  tie: as in
            ``best_lambda``.
    Returns:
        ``SearchOutcome``. Which λ wins: ``best_lambda`` over each label's scores.
    Raises:
        ValueError: a negative λ or ``max_extensions`` < 0.  Whatever ``score`` raises.
    """
    if max_extensions < 0:
        raise ValueError(f"max_extensions must be >= 0, got {max_extensions}")
    bad = {m: g for m, g in grids.items() if any(v < 0 for v in g)}
    if bad:
        raise ValueError(f"λ grids must be >= 0, got {bad}")
    grid = {m: tuple(sorted(g)) for m, g in grids.items()}
    scores: dict[str, dict[float, float | None]] = {m: {} for m in grid}

    def run(values: dict[str, tuple[float, ...]]) -> dict[str, float]:
        for m, new in score(values).items():
            scores.setdefault(m, {}).update(new)
        runs = [{"label": m, "reg_lambda": lam, "criterion": s}
                for m, by in scores.items() if m in grid for lam, s in by.items()]
        return choose_lambdas(runs, grid, tie)

    chosen = run(dict(grid))
    rounds = 0
    while rounds < max_extensions:
        more = extend_grids({m: grid[m] for m in chosen}, chosen)
        if not more:
            break
        rounds += 1
        log.info("λ search round %d: %s at the edge of the grid; adding %s", rounds + 1,
                 ", ".join(f"{m} (λ = {chosen[m]:g})" for m in more),
                 ", ".join(f"{m}: {v[0]:g}" for m, v in more.items()))
        for m, values in more.items():
            grid[m] = tuple(sorted(grid[m] + values))
        chosen = run(more)
    edge = extend_grids({m: grid[m] for m in chosen}, chosen)
    at_edge = {m: chosen[m] for m in edge}
    if at_edge and rounds == max_extensions:
        log.warning("λ search: still at the edge of the grid after %d extensions: %s",
                    max_extensions, ", ".join(f"{m} λ = {lam:g}" for m, lam in at_edge.items()))
    return SearchOutcome(chosen, grid, {m: dict(sorted(s.items())) for m, s in scores.items()},
                         rounds, at_edge)
