"""The public API (``factmas.api``): its names, a light import, and each function against the
command line's output or a naive reference."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import factmas

# The promised names: removing or renaming one is a breaking change (docs/api.md lists them).
PUBLIC = {"Answer", "CheckpointMetrics", "Comparison", "Embeddings", "EvaluateError", "Hit", "Results",
          "Run", "build_feature_cache", "compare", "load_run", "make_config", "make_gallery",
          "read_dataset", "resume", "train"}
RUN_METHODS = {"config", "results", "evaluate", "evaluate_checkpoint", "query", "search",
               "embed_images", "embed_facts", "completed_tasks"}


def test_public_names_are_all_there():
    missing = PUBLIC - set(factmas.__all__)
    assert not missing, f"public names removed from factmas.__all__: {sorted(missing)}"
    for name in PUBLIC:
        assert getattr(factmas, name) is not None, name
    assert RUN_METHODS <= set(dir(factmas.Run)), sorted(RUN_METHODS - set(dir(factmas.Run)))
    assert "train" in dir(factmas)


def test_import_loads_no_torch_or_numpy():
    code = "import sys, factmas\nprint('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "False"]


def test_train_is_the_api_function_after_the_trainer_is_imported():
    import factmas.trainer.loop as loop               # the trainer's package has its own name
    from factmas.api.training import train as api_train
    assert factmas.train is api_train and loop.ContinualTrainer
    from factmas.trainer import train as low_level     # the trainer's own function
    assert low_level is not factmas.train


def test_make_config_overrides():
    cfg = factmas.make_config(method="ewc", reg_lambda=3, train={"epochs": 2}, data="x.h5",
                              backbone="small_cnn")
    assert (cfg.train.method, cfg.train.reg_lambda, cfg.train.epochs, cfg.model.backbone, cfg.data) == \
        ("ewc", 3.0, 2, "small_cnn", "x.h5")
    base = factmas.make_config()
    assert factmas.make_config(base, epochs=7).train.epochs == 7 and base.train.epochs != 7
    from factmas.config import ConfigError
    with pytest.raises(ConfigError, match="learning_rate"):
        factmas.make_config(learning_rate=0.1)
    with pytest.raises(ConfigError, match="train.epochs"):
        factmas.make_config(epochs="two")
    with pytest.raises(ConfigError, match="train"):
        factmas.make_config(train=3)


def test_train_returns_the_run_and_results_are_results_json(api_runs):
    run = api_runs["runs"]["mas"]
    assert isinstance(run, factmas.Run) and run.completed_tasks == [0, 1]
    assert run.config.train.method == "mas"
    res = run.results
    raw = json.loads((run.path / "results.json").read_text())
    assert res.columns == ("T1", "T2") and res.stages == (0, 1) and res.stage_tasks == ((0,), (1,))
    for m, e in raw["metrics"].items():
        ref = np.array([[np.nan if x is None else x for x in r] for r in e["R"]])
        np.testing.assert_array_equal(res.R[m], ref)
        assert res.R[m].shape == (2, 2) and not res.R[m].flags.writeable
        assert res.summary[m]["average"] == pytest.approx(np.nanmean(ref[-1]) if e["average"] is not None
                                                          else np.nan, nan_ok=True)
    assert res.complete and res.headline == "fact_to_image_map"


def test_load_run_refuses_a_folder_that_is_not_a_run_as_the_cli_does(api_runs, capsys):
    from factmas.cli import query
    from factmas.run.load import RunLoadError
    folder = api_runs["photos"]
    with pytest.raises(RunLoadError) as e:
        factmas.load_run(folder)
    assert "config.json" in str(e.value)
    assert query.main(["--run", str(folder), str(folder / "photo0.jpg")]) == 2
    assert f"factmas query: error: {e.value}" in capsys.readouterr().err


def _naive_wildcard(phi: factmas.Embeddings, psi: factmas.Embeddings) -> np.ndarray:
    """D[n, m]: mean over fact m's slots s < order of ‖φ̂_ns − ψ̂_ms‖² (unit vectors per slot),
    one pair at a time (factmas.space's definition)."""
    D = np.zeros((len(phi.ids), len(psi.ids)))
    for n in range(len(phi.ids)):
        for m in range(len(psi.ids)):
            terms = []
            for s in ("S", "P", "O")[: int(psi.order[m])]:
                a = phi.slot(s)[n].astype(np.float64)
                b = psi.slot(s)[m].astype(np.float64)
                terms.append(np.sum((a / np.linalg.norm(a) - b / np.linalg.norm(b)) ** 2))
            D[n, m] = np.mean(terms)
    return D


def test_query_equals_the_naive_ranking_of_its_embeddings_and_the_cli(api_runs, capsys):
    run = factmas.load_run(api_runs["main"] / "mas")
    photos = sorted(api_runs["photos"].glob("*.jpg"))
    answers = run.query(photos, k=4)
    assert len(answers) == 12 and all(isinstance(a, factmas.Answer) for a in answers)
    phi, psi = run.embed_images(photos), run.embed_facts()
    d = phi.dim
    assert phi.vectors.shape == (3, 3 * d) and psi.vectors.shape == (api_runs["dataset"].num_facts, 3 * d)
    assert np.asarray(phi) is phi.vectors and len(psi) == api_runs["dataset"].num_facts
    assert phi.slots == {"S": slice(0, d), "P": slice(d, 2 * d), "O": slice(2 * d, 3 * d)}
    D = _naive_wildcard(phi, psi)
    for n, p in enumerate(photos):
        got = [a for a in answers if a.image == str(p)]
        assert [a.rank for a in got] == [1, 2, 3, 4]
        np.testing.assert_allclose([a.distance for a in got], np.sort(D[n])[:4], atol=1e-5)
        for a in got:
            assert a.distance == pytest.approx(D[n, a.fact_id], abs=1e-5)
            assert a.fact == psi.ids[a.fact_id]
            assert a.probability is None or 0 <= a.probability <= 1
    from factmas.cli import query
    assert query.main(["--run", str(run.path), *map(str, photos), "--k", "4", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert [(f["fact_id"], f["distance"]) for r in cli for f in r["facts"]] == \
        [(a.fact_id, a.distance) for a in answers]
    with pytest.raises(ValueError, match="nope.jpg"):
        run.query([api_runs["root"] / "nope.jpg"])


def test_search_equals_the_cli_and_marks_true_images(api_runs, capsys):
    run = factmas.load_run(api_runs["main"] / "mas")
    hits = run.search("dogs, running through, grass", k=5)
    from factmas.cli import search
    assert search.main(["--run", str(run.path), "dogs, running through, grass", "--k", "5", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)["results"]
    assert [(h.rank, h.image, h.distance, h.image_index, h.true) for h in hits] == \
        [(r["rank"], r["image"], r["distance"], r["image_index"], r["true"]) for r in cli]
    fd = api_runs["dataset"]
    f = next(i for i in range(fd.num_facts) if fd.fact_text(i) == "<dog, run through, grass>")
    carriers = set(fd.pairs[fd.pairs[:, 1] == f, 0].tolist())
    assert all(h.true == (h.image_index in carriers) for h in hits)
    folder = run.search("dog", images=api_runs["photos"], k=2)
    assert len(folder) == 2 and all(Path(h.image).parent == api_runs["photos"] for h in folder)
    from factmas.explore.search import SearchError
    with pytest.raises(SearchError, match="zebra"):
        run.search("zebra")


def test_embeddings_of_dataset_images_equal_those_of_their_pixels(api_runs):
    run = factmas.load_run(api_runs["main"] / "finetune")
    fd = api_runs["dataset"]
    test = np.flatnonzero(fd.image_split == 2)
    a = run.embed_images(image_split="test")
    b = run.embed_images(fd.images[test])
    assert a.ids == tuple(fd.image_ids[i] for i in test)
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-5)
    typed = run.embed_facts(["dog", "dog, run through, grass"])
    whole = run.embed_facts()
    i = whole.ids.index("<dog, run through, grass>")
    np.testing.assert_allclose(typed.vectors[1], whole.vectors[i], atol=1e-6)
    assert list(typed.order) == [1, 3]
    with pytest.raises(ValueError, match="uint8"):
        run.embed_images(fd.images[test].astype(np.float32))


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_evaluate_reproduces_the_run_and_writes_nothing(api_runs, tmp_path):
    run = factmas.load_run(api_runs["main"] / "mas")
    before = _snapshot(run.path)
    again = run.evaluate()
    val = run.evaluate(image_split="val")
    assert _snapshot(run.path) == before
    for m in again.metrics:
        np.testing.assert_allclose(again.R[m], run.results.R[m], atol=1e-6, equal_nan=True)
    assert val.image_split == "val" and val.R[val.headline].shape == (2, 2)
    assert val.data["evaluated"]["image_split"] == "val" and again.complete
    written = val.write(tmp_path / "val")
    assert json.loads((tmp_path / "val" / "results.json").read_text())["image_split"] == "val"
    assert tmp_path / "val" / "results.md" in written
    one = run.evaluate_checkpoint("task0")
    assert one.num_tasks == 2 and one.checkpoint.name == "task0.pt"
    np.testing.assert_allclose([one.metrics[again.headline][j] for j in range(2)], again.R[again.headline][0],
                               atol=1e-6)


def test_resume_and_compare(api_runs, tmp_path):
    from factmas.cli import compare as compare_cli
    cut = factmas.train(data=api_runs["data"], out=tmp_path / "cut", model=api_runs["runs"]["mas"].config.model.__dict__,
                        split="random2_seed0", method="finetune", epochs=1, batch_size=32,
                        limit_tasks=1, progress=False)
    assert cut.completed_tasks == [0]
    done = factmas.resume(tmp_path / "cut", progress=False)
    assert done.completed_tasks == [0, 1] and done.results.complete
    table = factmas.compare([api_runs["main"] / "finetune", api_runs["main"] / "mas"])
    assert compare_cli.main([str(api_runs["main"] / "finetune"), str(api_runs["main"] / "mas")]) == 0
    assert "finetune" in table.markdown() and "mas" in table.markdown()
    assert len(table.csv().splitlines()) == 1 + len(table.groups)        # a header, one row per group
    with pytest.raises(ValueError, match="metric"):
        factmas.compare([api_runs["main"] / "mas"], metric="accuracy")
