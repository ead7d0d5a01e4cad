"""The values the public API returns: frozen dataclasses of plain Python and numpy values.

- ``Answer``: one fact proposed for an image (image → fact, ``Run.query``).
- ``Hit``: one image found for a fact (fact → image, ``Run.search``).
- ``Embeddings``: image or fact embeddings as one float32 matrix [N, 3·d] with its slot layout.
- ``Results``: a run's report (results.json) with every accuracy matrix R as a numpy array.
- ``CheckpointMetrics``: the metrics of one checkpoint (``Run.evaluate_checkpoint``).
- ``Comparison``: runs side by side (``factmas.compare``).

Importing this module loads no numpy or torch (``import factmas`` stays quick); numpy loads when a
``Results`` is built.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

SLOTS = ("S", "P", "O")


@dataclass(frozen=True)
class Answer:
    """One fact proposed for an image, from ``Run.query``.

    Attributes:
        image: the image as given (a path).  rank: 1 = the closest fact.
        fact_id: the fact's index in the run's dataset.  fact: its text, e.g. "<dog, run through, grass>".
        subject, predicate, object: its slots ('' for an absent slot).  order: 1, 2 or 3 slots.
        distance: the wildcard distance D ∈ [0, 4] (``factmas.space``; smaller = closer), on the
            slots the fact has.
        probability: the calibrated probability that the fact is true of the image, where the
            library's query gives one; None otherwise.
    """
    image: str
    rank: int
    fact_id: int
    fact: str
    subject: str
    predicate: str
    object: str
    order: int
    distance: float
    probability: float | None = None

    @classmethod
    def from_record(cls, image: str, f: dict) -> "Answer":
        """From one fact record of ``factmas.explore.query.answer`` ({"rank", "fact_id", "text", ...})."""
        p = f.get("probability")
        return cls(image=str(image), rank=int(f["rank"]), fact_id=int(f["fact_id"]), fact=f["text"],
                   subject=f["subject"], predicate=f["predicate"], object=f["object"],
                   order=int(f["order"]), distance=float(f["distance"]),
                   probability=None if p is None else float(p))


@dataclass(frozen=True)
class Hit:
    """One image found for a fact, from ``Run.search``.

    Attributes:
        rank: 1 = the closest image.  image: the file's path (a folder search) or the dataset's
            image id (a dataset search).  distance: the wildcard distance D ∈ [0, 4], smaller = closer.
        image_index: the image's row in the dataset (dataset search), else None.
        true: whether the fact is one of the image's facts in the dataset (dataset search of a fact
            the dataset has), else None.
    """
    rank: int
    image: str
    distance: float
    image_index: int | None = None
    true: bool | None = None

    @classmethod
    def from_record(cls, r: dict) -> "Hit":
        """From one record of ``factmas.explore.search.search_run``'s "results"."""
        return cls(rank=int(r["rank"]), image=str(r["image"]), distance=float(r["distance"]),
                   image_index=r.get("image_index"), true=r.get("true"))


@dataclass(frozen=True)
class Embeddings:
    """Raw embeddings (not normalized) as one matrix, from ``Run.embed_images`` / ``Run.embed_facts``.

    Attributes:
        vectors: float32 [N, 3·d]: row i is [S | P | O] of item i, each slot d wide.
        slots: {"S": slice(0, d), "P": slice(d, 2d), "O": slice(2d, 3d)}: the columns of each slot.
        ids: what each row is: image paths or dataset image ids, or fact texts.
        order: int [N] slots each fact has (1, 2, 3; facts only, so that a caller compares a fact
            on its own slots as ``factmas.space.wildcard_distance`` does), None for images.
    """
    vectors: np.ndarray
    slots: dict
    ids: tuple
    order: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """``numpy.asarray(embeddings)`` is ``vectors`` [N, 3·d]."""
        return self.vectors if dtype is None else self.vectors.astype(dtype)

    @property
    def dim(self) -> int:
        """d, the width of one slot."""
        return int(self.vectors.shape[1]) // 3

    def slot(self, name: str) -> np.ndarray:
        """float32 [N, d]: the columns of slot "S", "P" or "O". Raises KeyError on another name."""
        return self.vectors[:, self.slots[name]]

    @classmethod
    def from_phi(cls, phi: Any, ids: list, order: Any = None) -> "Embeddings":
        """From raw φ or ψ float [N, 3, d] (torch or numpy)."""
        import numpy as np
        a = np.asarray(phi.numpy() if hasattr(phi, "numpy") else phi, dtype=np.float32)
        n, _, d = a.shape
        vec = np.ascontiguousarray(a.reshape(n, 3 * d))
        vec.flags.writeable = False
        return cls(vec, {s: slice(i * d, (i + 1) * d) for i, s in enumerate(SLOTS)}, tuple(ids),
                   None if order is None else np.asarray(order, np.int64))


def _array(rows: Any) -> np.ndarray:
    """float64 array of JSON numbers, None → NaN; read-only."""
    import numpy as np
    a = np.array([[np.nan if x is None else x for x in r] for r in rows] if rows and
                 isinstance(rows[0], list) else [np.nan if x is None else x for x in (rows or [])],
                 dtype=np.float64)
    a.flags.writeable = False
    return a


def _num(x: Any) -> float:
    return float("nan") if x is None else float(x)


@dataclass(frozen=True)
class Results:
    """A run's report (the content of results.json, ``factmas.evaluation.report``) as arrays.

    Attributes:
        run_name: the run's folder name.  split: the task split.  image_split: "test" or "val", the
            images evaluated.  image_pool: "all" or "task".
        columns: ("T1", ..., "TT"): the tasks in the split's order; column j of every R is task j.
        stages: the stages evaluated (row i of R is after stage ``stages[i]``).
        stage_tasks: the tasks each stage trained ((0,), (1,), ... sequentially; one stage of every
            task for joint).
        complete: every stage of the run's stream evaluated.
        R: {metric: float64 [S, T]}: R[i, j] = metric of task j after stage i (fractions in [0, 1];
            NaN where undefined), for every metric of ``factmas.evaluation.metrics.METRICS``.
        initial: {metric: float64 [T]}: the untrained model (FWT's baseline b; NaN if not recorded).
        all: {metric: float64 [S]}: the metric over all facts after each stage.
        summary: {metric: {"average", "forgetting", "bwt", "fwt", "final_all"}}: floats, NaN where
            undefined (ACC, forgetting and BWT of Chaudhry et al. 2018 / Lopez-Paz & Ranzato 2017,
            ``factmas.evaluation.metrics``).
        baselines: {name: {metric: float64 [T]}}: reference rows (e.g. "frequency").
        data: the whole results.json content (JSON-able; write it with ``write``).
    """
    run_name: str
    split: str
    image_split: str
    image_pool: str
    columns: tuple
    stages: tuple
    stage_tasks: tuple
    complete: bool
    R: dict
    initial: dict
    all: dict
    summary: dict
    baselines: dict
    data: dict = field(repr=False)

    @property
    def headline(self) -> str:
        """The metric of the tables ("fact_to_image_map")."""
        return self.data.get("headline", "fact_to_image_map")

    @property
    def metrics(self) -> tuple:
        """The metric names, in results.json's order."""
        return tuple(self.R)

    @classmethod
    def from_dict(cls, res: dict) -> "Results":
        """From results.json's content (``factmas.evaluation.report.build_results``)."""
        from factmas.evaluation.report import is_complete, stage_tasks
        T = int(res.get("num_tasks", 0))
        metrics = res.get("metrics", {})
        R = {m: _array(e.get("R") or []).reshape(-1, T) for m, e in metrics.items()}
        init = {m: (_array(e["initial"]) if e.get("initial") is not None else _array([None] * T))
                for m, e in metrics.items()}
        every = {m: _array(e.get("all") or []) for m, e in metrics.items()}
        summary = {m: {k: _num(e.get(k)) for k in ("average", "forgetting", "bwt", "fwt", "final_all")}
                   for m, e in metrics.items()}
        base = {name: {m: _array(v.get("final") or []) for m, v in b.items()}
                for name, b in (res.get("baselines") or {}).items()}
        return cls(run_name=res.get("run_name", ""), split=res.get("split", ""),
                   image_split=res.get("image_split", "test"), image_pool=res.get("image_pool", "all"),
                   columns=tuple(res.get("columns", [])), stages=tuple(res.get("stages", [])),
                   stage_tasks=tuple(tuple(t) for t in stage_tasks(res)), complete=is_complete(res),
                   R=R, initial=init, all=every, summary=summary, baselines=base, data=res)

    def markdown(self) -> str:
        """results.md's text: the headline table, the full R and the other metrics."""
        from factmas.evaluation.report import results_markdown
        return results_markdown(self.data)

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write results.json, results.md and the PNG plots into ``out_dir`` (created; each file
        atomically); returns their paths. Writing into a run's own folder is the caller's choice
        (``factmas evaluate --out RUN --replace-results``)."""
        from factmas.evaluation.report import write_report
        return write_report(out_dir, self.data)


@dataclass(frozen=True)
class CheckpointMetrics:
    """Every metric of one checkpoint (``Run.evaluate_checkpoint``).

    Attributes:
        checkpoint: the file.  num_tasks: T.  metrics: {metric: {task index or "all": value}} plus
            "counts" and "timing" (``factmas.evaluation.evaluator.Evaluator.evaluate``).
    """
    checkpoint: Path
    num_tasks: int
    metrics: dict

    def markdown(self) -> str:
        """The metrics as a Markdown table (rows: metrics; columns T1..Tk, all; values in %), the
        images' mean pairwise cosine and the timing (``factmas evaluate --checkpoint``'s output)."""
        from factmas.evaluation.evaluator import METRICS, RECALL_METRICS
        from factmas.evaluation.report import LABELS, fmt, markdown_table
        metrics, num_tasks = self.metrics, self.num_tasks
        keys = list(range(num_tasks)) + ["all"]
        rows = [[LABELS[m]] + [fmt(metrics[m].get(k)) for k in keys]
                for m in METRICS + tuple(r for r in RECALL_METRICS if r in metrics)]
        t = metrics.get("timing", {})
        table = markdown_table(["metric"] + [f"T{j + 1}" for j in range(num_tasks)] + ["all"], rows)
        cos = metrics.get("embedding", {}).get("mean_cosine")
        cos_line = "" if cos is None else (f"\n\nmean pairwise cosine of the images' embeddings (each slot "
                                           f"L2-normalized; 1 = collapsed): {cos:.3f}")
        return table + cos_line + "\n\ntiming: " + ", ".join(f"{k} {v:.2f}" for k, v in t.items())


@dataclass(frozen=True)
class Comparison:
    """Runs (methods × seeds) in one table, mean ± std over seeds (``factmas.compare``).

    Attributes:
        metric: the metric compared.  num_tasks: T.  groups: one dict per method (and the reference
            rows): label, runs, per-task finals, forgetting, BWT (``factmas.experiments.compare``).
    """
    metric: str
    num_tasks: int
    groups: tuple

    def markdown(self) -> str:
        """The table as Markdown (``factmas compare``'s output)."""
        from factmas.experiments.compare import to_markdown
        return to_markdown(list(self.groups), self.num_tasks, self.metric)

    def csv(self) -> str:
        """The table as CSV."""
        from factmas.experiments.compare import to_csv
        return to_csv(list(self.groups), self.num_tasks)
