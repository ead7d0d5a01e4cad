"""The metrics factmas reports, as records: one ``Metric`` per key of the evaluator's rows and of
results.json, saying how tables, plots and commands show it (issue 29: one record per metric instead
of parallel lists of names, labels and directions).

``METRIC_SPECS`` (name → ``Metric``) is in the order of results.json's "metrics" and of results.md's
"All metrics" table: the core metrics (always computed), Recall@K, Lifelong Fact Learning's metric,
the generalized image→fact metrics. A metric costs its computation (``factmas.evaluation.evaluator``
or ``factmas.evaluation.lfl``) and one record here; tests/evaluation/test_metric_specs.py checks that
the evaluator emits exactly the recorded names. Every consumer reads the records:

* ``factmas.evaluation.report``: labels (``label``), the plotted panels (view "plot"), which metrics
  old rows may lack (every kind but "core");
* ``factmas.experiments.paper_table`` / ``paper_report``: the directions side by side (view "paper",
  short labels) and LFL's table (view "paper_lfl");
* ``factmas compare --metric`` and ``factmas.api.compare``: the metrics one may compare (view "compare");
* ``factmas.explore.gallery_plots``: the headline's label.

Plain data; imports nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

FACT_TO_IMAGE, IMAGE_TO_FACT = "fact_to_image", "image_to_fact"
# kinds: "core" in every row; the others are missing from rows recorded before they existed
KINDS = ("core", "recall", "lfl", "generalized")
# where a metric is shown besides results.json and results.md (which show every metric):
# "compare": a choice of ``factmas compare --metric``; "plot": a panel of r_heatmap.png and
# map_per_task.png; "paper": a column group of the paper table's directions table; "paper_lfl": a
# column group of the paper table's LFL table
VIEWS = ("compare", "plot", "paper", "paper_lfl")
RANKED_VIEWS = ("plot", "paper")        # side by side in ``Metric.rank`` order, not the registry's


@dataclass(frozen=True)
class Metric:
    """One reported metric.

    Fields:
        name: the key in the evaluator's rows and in results.json's "metrics".
        label: its name in results.md, plots and ``factmas evaluate`` ("@k" is replaced by the run's
            AP@k depth in results.md).
        direction: ``FACT_TO_IMAGE`` (a fact ranks images) or ``IMAGE_TO_FACT`` (an image ranks facts).
        kind: one of ``KINDS``.
        short: the paper table's column head (None: no short form).
        higher_is_better: whether a larger value is better (every metric today: a fraction of
            queries, a precision or an AP, in [0, 1], shown in % with 2 decimals).
        views: where it is shown (``VIEWS``).
        rank: its place among the metrics of a ranked view (``RANKED_VIEWS``): both directions side
            by side, fact→image mAP first.
    Raises (on construction): ValueError for an unknown direction, kind or view.
    """
    name: str
    label: str
    direction: str
    kind: str = "core"
    short: Optional[str] = None
    higher_is_better: bool = True
    views: tuple[str, ...] = ()
    rank: int = 0

    def __post_init__(self) -> None:
        if self.direction not in (FACT_TO_IMAGE, IMAGE_TO_FACT):
            raise ValueError(f"metric {self.name}: direction {self.direction!r}; valid: "
                             f"{[FACT_TO_IMAGE, IMAGE_TO_FACT]}")
        if self.kind not in KINDS:
            raise ValueError(f"metric {self.name}: kind {self.kind!r}; valid: {list(KINDS)}")
        bad = [v for v in self.views if v not in VIEWS]
        if bad:
            raise ValueError(f"metric {self.name}: view {bad[0]!r}; valid: {list(VIEWS)}")


HEADLINE = "fact_to_image_map"          # the metric tables lead with (the accuracy matrix R)
RECALL_KS = (1, 5, 10)                  # Recall@K (``metrics.recall_at_k``) in both directions
_ARROW = {FACT_TO_IMAGE: ("fact→image", "f→i"), IMAGE_TO_FACT: ("image→fact", "i→f")}
_C = ("compare",)

METRIC_SPECS: dict[str, Metric] = {m.name: m for m in (
    Metric("fact_to_image_map", "fact→image mAP", FACT_TO_IMAGE, short="f→i mAP",
           views=("compare", "plot", "paper"), rank=0),
    Metric("fact_to_image_map_at_k", "fact→image mAP@k", FACT_TO_IMAGE, views=_C),
    Metric("image_to_fact_top1", "image→fact top-1", IMAGE_TO_FACT, views=_C),
    Metric("image_to_fact_top5", "image→fact top-5", IMAGE_TO_FACT, short="i→f top-5",
           views=("compare", "plot", "paper"), rank=2),
    Metric("image_to_fact_map", "image→fact mAP", IMAGE_TO_FACT, short="i→f mAP",
           views=("compare", "plot", "paper"), rank=1),
    # Recall@K: the queries whose first true item is in the top K
    *(Metric(f"{d}_recall_at_{k}", f"{_ARROW[d][0]} R@{k}", d, "recall", short=f"{_ARROW[d][1]} R@{k}",
             views=_C + (("plot",) if k == 1 else ()), rank=3 + (d == IMAGE_TO_FACT))
      for d in (FACT_TO_IMAGE, IMAGE_TO_FACT) for k in RECALL_KS),
    # factmas.evaluation.lfl: Lifelong Fact Learning's metric, standard and generalized modes
    Metric("lfl_top5_standard", "LFL top-5 (standard)", IMAGE_TO_FACT, "lfl", views=("paper_lfl",)),
    Metric("lfl_top5_generalized", "LFL top-5 (generalized)", IMAGE_TO_FACT, "lfl",
           views=("paper_lfl",)),
    # a task's images ranking every fact (the evaluator, from the same ranks)
    Metric("image_to_fact_top1_generalized", "image→fact top-1 (generalized)", IMAGE_TO_FACT,
           "generalized"),
    Metric("image_to_fact_top5_generalized", "image→fact top-5 (generalized)", IMAGE_TO_FACT,
           "generalized"),
    Metric("image_to_fact_map_generalized", "image→fact mAP (generalized)", IMAGE_TO_FACT,
           "generalized"),
)}


def names(kind: str | None = None, view: str | None = None) -> tuple[str, ...]:
    """The names of the metrics of ``kind`` and shown in ``view`` (None: any), in registry order, or
    in ``rank`` order for a ranked view.

    Raises:
        ValueError: an unknown kind or view.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"metric kind {kind!r}; valid: {list(KINDS)}")
    if view is not None and view not in VIEWS:
        raise ValueError(f"metric view {view!r}; valid: {list(VIEWS)}")
    out = [m for m in METRIC_SPECS.values()
           if (kind is None or m.kind == kind) and (view is None or view in m.views)]
    if view in RANKED_VIEWS:
        out.sort(key=lambda m: m.rank)
    return tuple(m.name for m in out)


def label(name: str) -> str:
    """The label of metric ``name``; the name itself for a metric without a record (a results.json
    written by another version), so that a report never fails on a missing label."""
    spec = METRIC_SPECS.get(name)
    return spec.label if spec is not None else name


# the names by kind, for the modules that list them
METRICS = names("core")
RECALL_METRICS = names("recall")
GENERALIZED_I2F = names("generalized")
LFL_METRICS = names("lfl") + GENERALIZED_I2F
