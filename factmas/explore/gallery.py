"""What trained runs retrieve, side by side (the work of ``factmas gallery``).

``load_runs`` loads the runs (all of one dataset and split), ``collect`` draws the seeded sample photos
and facts and each run's top facts / top images with ✓/✗ marks, ``factmas.explore.gallery_html.write_gallery``
writes the page. The command line is ``factmas.cli.gallery``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from factmas.errors import FactmasError

log = logging.getLogger(__name__)


class GalleryError(FactmasError, ValueError):
    """A run, dataset or setting the gallery cannot use; the message names it."""


def load_runs(run_dirs: list[str], data_path: str | None, device: str) -> tuple[Any, list[dict]]:
    """(dataset with images, [{"dir", "name", "cfg", "model", "results", "calibrator"}]) of the runs
    ("calibrator": ``factmas.explore.calibrate.run_calibrator``'s, None with a logged warning when the run
    has no usable calibration.json).

    Raises:
        GalleryError: a run cannot be loaded, runs of different datasets/splits, a missing results.json.
    """
    from factmas.explore.calibrate import run_calibrator
    from factmas.run.load import RunLoadError, load_run
    from factmas.evaluation.report import read_results

    data, runs = None, []
    for i, d in enumerate(run_dirs):
        try:
            cfg, d_i, model, _ = load_run(d, data_path or (data.path if data else None), None, device,
                                          load_images=data is None)
        except RunLoadError as e:
            raise GalleryError(str(e)) from e
        if data is None:
            data = d_i
        elif cfg.train.split != runs[0]["cfg"].train.split:
            raise GalleryError(f"{d}: split {cfg.train.split!r} differs from {run_dirs[0]}'s "
                               f"{runs[0]['cfg'].train.split!r}; compare runs of one split")
        try:
            res = read_results(d)
        except ValueError as e:
            raise GalleryError(f"{d}: {e}") from e
        name = Path(d).resolve().name
        cal, why = run_calibrator(d, model.state_dict())
        if why:
            log.warning("%s: no probabilities: %s", name, why)
        runs.append({"dir": d, "name": name, "cfg": cfg, "model": model, "results": res,
                     "calibrator": cal})
    return data, runs


def collect(data: Any, runs: list[dict], n_photos: int, facts_per_task: int, top_images: int,
            seed: int) -> dict:
    """What the page shows (samples, each run's retrievals with ✓/✗); plain lists and dicts.

    Returns: {"photos": [{"image": i, "truth": [fact texts], "runs": [[(text, D, right, p)] per run]}],
    "tasks": [{"task": t, "facts": [{"fact": f, "text", "runs": [[(image, D, right, p)] per run]}]}]}
    with p = P(true | D) from the run's "calibrator" (None without one).
    """
    from factmas.evaluation.retrieval import FactIndex, ImageIndex
    from factmas.explore.search import dataset_embeddings
    from factmas.model.embedder import RunEmbedder

    rng = np.random.default_rng(seed)
    truth = set(map(tuple, data.pairs.tolist()))
    test = np.flatnonzero(data.image_split == 2)
    test_set = set(test.tolist())
    with_facts = np.unique([i for i, _ in truth if i in test_set])
    photos = np.sort(rng.choice(with_facts, min(n_photos, len(with_facts)), replace=False))
    task_of = data.task_of_facts(runs[0]["cfg"].train.split)
    facts_in_test = np.unique([f for i, f in truth if i in test_set])
    tasks = []
    for t in range(int(task_of.max()) + 1):
        cand = facts_in_test[task_of[facts_in_test] == t]
        tasks.append({"task": t, "facts": [{"fact": int(f), "text": data.fact_text(int(f)), "runs": []}
                                           for f in np.sort(rng.choice(cand, min(facts_per_task, len(cand)),
                                                                       replace=False))]})
    out = {"photos": [{"image": int(i), "truth": sorted(data.fact_text(f) for j, f in truth if j == i),
                       "runs": []} for i in photos], "tasks": tasks}
    order = data.order.astype(np.int64)
    for run in runs:
        cal = run.get("calibrator")
        prob = (lambda x: None) if cal is None else (lambda x: float(cal.predict(x)))
        embedder = RunEmbedder.for_run(run["model"], run["cfg"], data)
        ids, phi = dataset_embeddings(embedder, data, "test")
        psi = embedder.facts(data.tokens, order)
        row = {int(i): r for r, i in enumerate(ids)}
        d, f = FactIndex(psi, order, gpu=False).search(phi[[row[i] for i in photos]], 5)
        for p, d_row, f_row in zip(out["photos"], d, f):
            p["runs"].append([(data.fact_text(int(x)), float(y), (p["image"], int(x)) in truth,
                               prob(y)) for y, x in zip(d_row, f_row)])
        index = ImageIndex(phi, gpu=False)
        for t in tasks:
            if not t["facts"]:
                continue
            fs = np.array([x["fact"] for x in t["facts"]])
            d, im = index.search(psi[fs], order[fs], top_images)
            for x, d_row, i_row in zip(t["facts"], d, im):
                x["runs"].append([(int(ids[i]), float(y), (int(ids[i]), x["fact"]) in truth,
                                   prob(y)) for y, i in zip(d_row, i_row)])
    return out
