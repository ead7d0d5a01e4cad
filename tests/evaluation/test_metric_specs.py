"""The Metric records (``factmas.evaluation.metric_specs``): the evaluator emits exactly the recorded
metrics, every view derived from them is today's list, a new record reaches the report without
another edit, and a metric without a record no longer breaks a report (issue 29)."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from factmas.config import EvalConfig
from factmas.data.dataset import read_dataset
from factmas.data.synthetic import make_synthetic_dataset
from factmas.evaluation import metric_specs as S
from factmas.evaluation.evaluator import Evaluator, ImageToFact
from factmas.evaluation.report import build_results, results_markdown

NOT_METRICS = {"counts", "timing", "embedding", "lfl_counts"}     # the rows' other keys


@pytest.fixture(scope="module")
def row(tmp_path_factory):
    """One evaluator row of random embeddings on a small synthetic dataset (3 tasks)."""
    path = make_synthetic_dataset(tmp_path_factory.mktemp("d") / "s.h5", n_images=120, image_size=16,
                                  num_tasks=3, seed=3)
    data = read_dataset(path)
    ev = Evaluator(data, "random3_seed0", EvalConfig(), "cpu")
    g = torch.Generator().manual_seed(1)
    phi = torch.randn(len(ev.image_ids), 3, 6, generator=g)
    psi = torch.randn(data.num_facts, 3, 6, generator=g)
    return ev.evaluate_embeddings(phi, psi)


def test_the_evaluator_emits_exactly_the_recorded_metrics(row):
    emitted = [k for k in row if k not in NOT_METRICS]
    assert set(emitted) == set(S.METRIC_SPECS)
    for name in emitted:                                     # every task and "all", each a float
        assert set(row[name]) == {0, 1, 2, "all"}
        assert all(isinstance(v, float) for v in row[name].values())


def test_results_json_lists_the_metrics_in_registry_order(row):
    rows = {"initial": row, 0: row, 1: row, 2: row}
    res = build_results(rows, 3)
    assert list(res["metrics"]) == list(S.METRIC_SPECS)


def test_views_are_todays_lists():
    """The names each consumer read from its own hand list before the records (issue 29)."""
    assert S.METRICS == ("fact_to_image_map", "fact_to_image_map_at_k", "image_to_fact_top1",
                         "image_to_fact_top5", "image_to_fact_map")
    assert S.RECALL_METRICS == tuple(f"{d}_recall_at_{k}" for d in ("fact_to_image", "image_to_fact")
                                     for k in (1, 5, 10))
    assert S.LFL_METRICS == ("lfl_top5_standard", "lfl_top5_generalized", "image_to_fact_top1_generalized",
                             "image_to_fact_top5_generalized", "image_to_fact_map_generalized")
    assert S.names(view="paper") == ("fact_to_image_map", "image_to_fact_map", "image_to_fact_top5")
    assert S.names(view="paper_lfl") == ("lfl_top5_standard", "lfl_top5_generalized")
    assert S.names(view="plot") == ("fact_to_image_map", "image_to_fact_map", "image_to_fact_top5",
                                    "fact_to_image_recall_at_1", "image_to_fact_recall_at_1")
    assert S.names(view="compare") == S.METRICS + S.RECALL_METRICS
    from factmas.experiments.compare import METRIC_CHOICES
    assert METRIC_CHOICES == S.names(view="compare")
    assert [S.METRIC_SPECS[m].short for m in S.names(view="paper")] == ["f→i mAP", "i→f mAP", "i→f top-5"]
    assert S.METRIC_SPECS["image_to_fact_recall_at_5"].label == "image→fact R@5"
    assert S.HEADLINE in S.METRIC_SPECS and S.METRIC_SPECS[S.HEADLINE].kind == "core"


def test_every_record_is_well_formed():
    for name, m in S.METRIC_SPECS.items():
        assert m.name == name and m.label
        assert m.kind == "lfl" or m.name.startswith(m.direction)
        assert m.direction in (S.FACT_TO_IMAGE, S.IMAGE_TO_FACT)
        assert all(v in S.VIEWS for v in m.views)
        assert m.short or "paper" not in m.views


@pytest.mark.parametrize("field, value, message", [("direction", "both", "direction 'both'"),
                                                    ("kind", "extra", "kind 'extra'"),
                                                    ("views", ("table",), "view 'table'")])
def test_a_bad_record_is_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        replace(S.METRIC_SPECS[S.HEADLINE], **{field: value})
    with pytest.raises(ValueError, match="valid"):
        S.names(**({"kind": "extra"} if field == "kind" else {"view": "table"}))


def test_a_new_record_reaches_results_and_the_report(monkeypatch):
    """Adding a metric costs its computation and one record: nothing else names it."""
    new = S.Metric("fact_to_image_ndcg", "fact→image nDCG", S.FACT_TO_IMAGE, "recall")
    monkeypatch.setitem(S.METRIC_SPECS, new.name, new)
    base = {m: {0: 0.5, "all": 0.5} for m in S.METRICS}
    rows = {"initial": base, 0: {**base, new.name: {0: 0.25, "all": 0.25}}}
    res = build_results({0: rows[0]}, 1)
    assert res["metrics"][new.name]["final"] == [0.25]
    assert "| fact→image nDCG | 25.00 | 25.00 |" in results_markdown({**res, "run_name": "r"})


def test_a_metric_without_a_record_renders_under_its_name():
    """Before the records, results.md raised KeyError on a metric the label table lacked."""
    base = {m: {0: 0.5, "all": 0.5} for m in S.METRICS}
    res = build_results({0: base}, 1, run_name="r")
    res["metrics"]["some_future_metric"] = res["metrics"][S.HEADLINE]
    assert "| some_future_metric | 50.00 |" in results_markdown(res)
    assert S.label("some_future_metric") == "some_future_metric"


def test_image_to_fact_record_names_recorded_metrics():
    empty = ImageToFact.empty()
    assert empty.n_images == 0 and all(math.isnan(v) for v in empty.metrics().values())
    r = ImageToFact(0.1, 0.2, 0.3, 7, 0.4, 0.5, 0.6, (0.7, 0.8, 0.9))
    m = r.metrics()
    assert set(m) <= set(S.METRIC_SPECS)
    assert m["image_to_fact_map"] == 0.3 and m["image_to_fact_map_generalized"] == 0.6
    assert m["image_to_fact_recall_at_10"] == 0.9
    assert set(m) == {n for n, s in S.METRIC_SPECS.items()
                      if s.direction == S.IMAGE_TO_FACT and s.kind != "lfl"}
    assert np.isfinite(list(m.values())).all()
