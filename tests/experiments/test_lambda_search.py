"""The bracketed λ search (``factmas.experiments.lambda_search``) on synthetic score functions:
brackets, grids with λ = 0, ties, undefined scores; the choice against a brute-force reference."""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from factmas.experiments.lambda_search import (MAX_EXTENSIONS, TIE, best_lambda, bracketed_search,
                                               extend_grids)


def log_peak(peaks: dict[str, float], calls: list | None = None):
    """A score function peaking at ``peaks[label]`` on a log scale (λ = 0 counts as 1e-3)."""
    def score(values):
        if calls is not None:
            calls.append({m: tuple(v) for m, v in values.items()})
        return {m: {lam: 0.5 - 0.01 * abs(math.log10(lam + 1e-3) - math.log10(peaks[m] + 1e-3))
                    for lam in v} for m, v in values.items()}
    return score


def reference_best(scores: dict, grid, tie: float) -> float:
    """Brute force: the smallest λ whose defined score is within ``tie`` of the best defined one."""
    ok = [(lam, s) for lam, s in scores.items() if s is not None and not math.isnan(s)]
    if not ok:
        return sorted(grid)[len(grid) // 2]
    best = max(s for _, s in ok)
    return sorted(lam for lam, s in ok if s >= best - tie)[0]


def test_a_best_lambda_at_the_top_is_extended_upwards_until_bracketed():
    calls = []
    out = bracketed_search({"mas": (0.0, 1.0, 10.0)}, log_peak({"mas": 100.0}, calls))
    assert out.chosen == {"mas": 100.0} and out.rounds == 2 and out.at_edge == {}
    assert calls == [{"mas": (0.0, 1.0, 10.0)}, {"mas": (100.0,)}, {"mas": (1000.0,)}]
    assert out.grids["mas"] == (0.0, 1.0, 10.0, 100.0, 1000.0)
    assert list(out.scores["mas"]) == list(out.grids["mas"])
    assert out.scores["mas"][100.0] > max(out.scores["mas"][1000.0], out.scores["mas"][10.0])


def test_a_best_lambda_of_zero_is_extended_downwards_and_reported_at_the_edge(caplog):
    calls = []
    with caplog.at_level(logging.INFO, logger="factmas.experiments.lambda_search"):
        out = bracketed_search({"ewc": (0.0, 1.0, 10.0)}, log_peak({"ewc": 0.0}, calls))
    assert calls[1:] == [{"ewc": (0.1,)}, {"ewc": (0.01,)}, {"ewc": (0.001,)}][:MAX_EXTENSIONS]
    assert out.chosen == {"ewc": 0.0} and out.rounds == MAX_EXTENSIONS == 3
    assert out.grids["ewc"] == (0.0, 0.001, 0.01, 0.1, 1.0, 10.0)
    assert out.at_edge == {"ewc": 0.0}
    assert "round 2: ewc (λ = 0) at the edge of the grid; adding ewc: 0.1" in caplog.text
    assert "still at the edge of the grid after 3 extensions: ewc λ = 0" in caplog.text


def test_an_interior_best_runs_the_grid_once():
    calls = []
    out = bracketed_search({"si": (0.0, 1.0, 10.0, 100.0)}, log_peak({"si": 10.0}, calls))
    assert out.chosen == {"si": 10.0} and out.rounds == 0 and len(calls) == 1 and out.at_edge == {}


def test_a_grid_without_zero_is_not_extended_below_its_smallest_value():
    """Only λ = 0 extends downwards (its smallest positive λ ÷ 10); the smallest positive λ of a
    grid without 0 is taken as it is (the published rule)."""
    out = bracketed_search({"lwf": (0.3, 3.0)}, log_peak({"lwf": 0.01}))
    assert out.chosen == {"lwf": 0.3} and out.rounds == 0 and out.at_edge == {}
    assert extend_grids({"lwf": (0.0,)}, {"lwf": 0.0}) == {}          # nothing positive to divide


def test_max_extensions_zero_runs_the_grid_only_and_names_the_edge():
    calls = []
    out = bracketed_search({"mas": (0.0, 1.0)}, log_peak({"mas": 50.0}, calls), max_extensions=0)
    assert len(calls) == 1 and out.chosen == {"mas": 1.0} and out.at_edge == {"mas": 1.0}


def test_ties_go_to_the_smaller_lambda_and_undefined_scores_never_win():
    table = {0.0: 0.5, 1.0: 0.5 + TIE / 2, 10.0: 0.5 + TIE / 2, 100.0: float("nan")}
    out = bracketed_search({"mas": tuple(table)}, lambda v: {m: {lam: table.get(lam, 0.0) for lam in vs}
                                                             for m, vs in v.items()},
                           max_extensions=1)
    # 0 ties with the best within TIE, so λ = 0 wins and the grid is extended below it
    assert out.chosen["mas"] == 0.0 and out.grids["mas"][:2] == (0.0, 0.1)
    assert best_lambda({1.0: 0.4, 3.0: 0.4 + 2 * TIE}, (1.0, 3.0)) == 3.0          # beyond TIE
    assert best_lambda({1.0: None, 3.0: float("nan"), 10.0: 0.1}, (1.0, 3.0, 10.0)) == 10.0
    assert best_lambda({1.0: 0.4, 3.0: 0.41}, (1.0, 3.0), tie=0.02) == 1.0          # a wider tie


def test_all_undefined_takes_the_middle_of_the_grid_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="factmas.experiments.lambda_search"):
        out = bracketed_search({"si": (0.0, 1.0, 10.0, 100.0)},
                               lambda v: {m: {lam: None for lam in vs} for m, vs in v.items()})
    assert out.chosen == {"si": 10.0} and out.rounds == 0
    assert "λ search of si: no finite score; λ = 10 (middle of the grid)" in caplog.text


def test_best_lambda_matches_a_brute_force_reference_on_random_scores():
    rng = np.random.default_rng(29)
    for _ in range(300):
        n = int(rng.integers(1, 7))
        grid = tuple(sorted(set(np.round(rng.choice([0.0, 0.01, 0.1, 1.0, 3.0, 10.0, 100.0], n), 3))))
        coarse = rng.integers(0, 4, len(grid)) / 1000         # many exact and near ties
        scores = {}
        for lam, c in zip(grid, coarse):
            u = rng.random()
            scores[lam] = None if u < 0.1 else float("nan") if u < 0.2 else float(c + rng.random() * TIE)
        tie = float(rng.choice([0.0, TIE, 1e-3]))
        assert best_lambda(scores, grid, tie) == reference_best(scores, grid, tie)


def test_every_search_ends_bracketed_and_on_the_grid_argmax():
    """On random unimodal scores (peak log-uniform in [1e-3, 1e4]) with enough rounds the chosen λ
    is interior (scored lower on both sides), or 0 with λ > 0 scored lower, and is the brute-force
    argmax of every λ scored."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        peak = float(10 ** rng.uniform(-3, 4))
        out = bracketed_search({"m": (0.0, 1.0, 10.0, 100.0)}, log_peak({"m": peak}),
                               max_extensions=20, tie=0.0)
        grid, s, lam = out.grids["m"], out.scores["m"], out.chosen["m"]
        assert out.at_edge == {} and lam == reference_best(s, grid, 0.0)
        i = grid.index(lam)
        assert i < len(grid) - 1 and s[grid[i + 1]] < s[lam]
        assert i == 0 and lam == 0.0 or s[grid[i - 1]] < s[lam]


def test_extra_scores_from_the_score_function_are_kept():
    """A score function may return λ it was not asked for (e.g. λ = 0 shared with another method)."""
    def score(values):
        out = {m: {lam: 0.1 * lam for lam in v} for m, v in values.items()}
        out.setdefault("ewc", {})[0.0] = 0.9                # λ = 0 shared from another run
        return out
    out = bracketed_search({"ewc": (1.0, 2.0)}, score, max_extensions=0)
    assert out.scores["ewc"] == {0.0: 0.9, 1.0: 0.1, 2.0: 0.2} and out.chosen == {"ewc": 0.0}


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="λ grids must be >= 0"):
        bracketed_search({"mas": (-1.0, 1.0)}, log_peak({"mas": 1.0}))
    with pytest.raises(ValueError, match="max_extensions"):
        bracketed_search({"mas": (1.0,)}, log_peak({"mas": 1.0}), max_extensions=-1)
    with pytest.raises(ValueError, match="no scores"):
        best_lambda({}, (1.0,))
