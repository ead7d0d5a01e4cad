"""Recording what the evaluator measured: the rows of every accuracy matrix R and the report files.

The ``Evaluator`` (``factmas.evaluation.evaluator``) measures a model; a ``Recorder`` keeps each
measurement as a row of R and writes results.json, results.md and the PNG plots
(``factmas.evaluation.report``)::

    rec = Recorder.for_evaluator(ev, stage_tasks=[[0], [1], [2]])
    rec.record("initial" | "task{t}" | t, metrics)   # row "initial" or row t of every R
    rec.write(run_dir, run={...})                      # results.json, results.md, PNG plots

``record`` accepts metrics that went through JSON (task keys as strings, NaN as None), so a resumed
run can replay the rows it saved.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from factmas.config import EvalConfig
from factmas.evaluation.report import build_results, normalize_metrics, row_key, write_report


class Recorder:
    """The rows of R of one run (or one ``factmas evaluate``) and the report written from them.

    Args:
        num_tasks: T, the columns of R.  split: the task split's name.  cfg: the ``EvalConfig`` the
        rows were measured with (image pool, k of AP@k, image split).
        baselines: callable() → {name: metrics} (``factmas.evaluation.baselines``), called once, when
            the results are first built; None: no baseline rows.
        stage_tasks: the tasks each stage of the stream trains ([[0], [1], ...] sequentially,
            [[0, 1, ...]] jointly); written to results.json (row labels, completeness).
    """

    def __init__(self, num_tasks: int, split: str, cfg: EvalConfig | None = None,
                 baselines: Callable[[], dict] | None = None,
                 stage_tasks: list[list[int]] | None = None) -> None:
        self.num_tasks, self.split, self.cfg = num_tasks, split, cfg or EvalConfig()
        self.stage_tasks = stage_tasks
        self.rows: dict[Any, dict] = {}
        self._baselines_fn = baselines
        self._baselines: dict | None = None

    @classmethod
    def for_evaluator(cls, evaluator: Any, stage_tasks: list[list[int]] | None = None) -> "Recorder":
        """A recorder of ``evaluator``'s measurements, its image-frequency baseline included."""
        from factmas.evaluation.baselines import frequency_baseline
        return cls(evaluator.num_tasks, evaluator.split, evaluator.cfg,
                   lambda: {"frequency": frequency_baseline(evaluator)}, stage_tasks)

    def record(self, row: str | int, metrics: dict) -> None:
        """Keep ``metrics`` as row ``row``: "initial", or the stage index t (int, "t" or "task{t}").

        Raises:
            ValueError: an unknown row label.
        """
        self.rows[row_key(row)] = normalize_metrics(metrics)

    def results(self, run_name: str = "", run: dict | None = None) -> dict:
        """The results.json content of the rows recorded so far (``report.build_results``); ``run``:
        the run's method, seed, split, λ (``factmas.run.rundir.RunDir.meta``)."""
        if self._baselines is None and self._baselines_fn is not None:
            self._baselines = self._baselines_fn()
        return build_results(self.rows, self.num_tasks, run_name=run_name, split=self.split,
                             image_pool=self.cfg.image_pool, ap_k=self.cfg.ap_k,
                             image_split=self.cfg.image_split, run=run, baselines=self._baselines,
                             stage_tasks=self.stage_tasks)

    def write(self, out_dir: str | Path, run_name: str | None = None, run: dict | None = None,
              **fields: Any) -> list[Path]:
        """Write results.json (with ``fields`` added), results.md and the PNG plots into ``out_dir``;
        returns their paths. ``run_name``: default the folder's name."""
        name = run_name or Path(out_dir).resolve().name
        return write_report(out_dir, {**self.results(name, run), **fields})
