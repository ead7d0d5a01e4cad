"""``factmas gallery``: a static HTML page showing what trained runs retrieve, side by side.

Usage::

    factmas gallery RUN [RUN ...] --out DIR [--photos 8] [--facts-per-task 3] [--top-images 5]
                    [--seed 0] [--data FILE.h5] [--device auto]

Writes ``DIR/index.html`` (no server, no internet: plain HTML + CSS), ``DIR/img/*.jpg`` (the shown
dataset images as small JPEG files) and ``DIR/r_heatmaps.png`` / ``DIR/map_per_task.png``
(``factmas.gallery_plots``: every run on one colour scale / one axis). The page has

(a) ``--photos`` sample test photos (seeded), with each run's top-5 facts (image → fact, FAISS wildcard
    distance), each marked ✓ (a true fact of the photo in the dataset) or ✗;
(b) for every task of the runs' split, ``--facts-per-task`` sample facts with test images, each run's
    top ``--top-images`` test images (fact → image), marked ✓/✗ the same way;
(c) the two comparison plots.

All runs must be trained on the same dataset (vocabulary and facts). Every file is written
atomically; ``index.html`` last. Exit status: 0 written; 2 a run, the dataset or ``--out`` unusable.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class GalleryError(ValueError):
    """A run, dataset or setting the gallery cannot use; the message names it."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="factmas gallery",
                                description="A static HTML page comparing what runs retrieve.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories of factmas train")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (index.html, img/, PNGs)")
    p.add_argument("--photos", type=int, default=8, help="sample test photos, top-5 facts each (default 8)")
    p.add_argument("--facts-per-task", type=int, default=3, help="sample facts per task (default 3)")
    p.add_argument("--top-images", type=int, default=5, help="images shown per fact (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples (default 0)")
    p.add_argument("--data", metavar="FILE.h5", help="dataset (default: the first run's)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default auto")
    return p


def load_runs(run_dirs: list[str], data_path: str | None, device: str) -> tuple[Any, list[dict]]:
    """(dataset with images, [{"dir", "name", "cfg", "model", "results"}]) of the runs.

    Raises:
        GalleryError: a run cannot be loaded, runs of different datasets/splits, a missing results.json.
    """
    from factmas.query import QueryError, load_run
    from factmas.evaluation.report import read_results

    data, runs = None, []
    for i, d in enumerate(run_dirs):
        try:
            cfg, d_i, model, _ = load_run(d, data_path or (data.path if data else None), None, device,
                                          load_images=data is None)
        except QueryError as e:
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
        runs.append({"dir": d, "name": name, "cfg": cfg, "model": model, "results": res})
    return data, runs


def collect(data: Any, runs: list[dict], n_photos: int, facts_per_task: int, top_images: int,
            seed: int) -> dict:
    """What the page shows (samples, each run's retrievals with ✓/✗); plain lists and dicts.

    Returns: {"photos": [{"image": i, "truth": [fact texts], "runs": [[(text, D, right)] per run]}],
    "tasks": [{"task": t, "facts": [{"fact": f, "text", "runs": [[(image, D, right)] per run]}]}]}
    """
    import torch

    from factmas.evaluation.evaluator import embed_facts
    from factmas.evaluation.retrieval import FactIndex, ImageIndex
    from factmas.search import dataset_embeddings

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
        model = run["model"]
        device = next(model.parameters()).device
        ids, phi = dataset_embeddings(model, data, "test", device)
        with torch.no_grad():
            psi = embed_facts(model, data.tokens, order, 256, device)
        row = {int(i): r for r, i in enumerate(ids)}
        d, f = FactIndex(psi, order, gpu=False).search(phi[[row[i] for i in photos]], 5)
        for p, d_row, f_row in zip(out["photos"], d, f):
            p["runs"].append([(data.fact_text(int(x)), float(y), (p["image"], int(x)) in truth)
                              for y, x in zip(d_row, f_row)])
        index = ImageIndex(phi, gpu=False)
        for t in tasks:
            if not t["facts"]:
                continue
            fs = np.array([x["fact"] for x in t["facts"]])
            d, im = index.search(psi[fs], order[fs], top_images)
            for x, d_row, i_row in zip(t["facts"], d, im):
                x["runs"].append([(int(ids[i]), float(y), (int(ids[i]), x["fact"]) in truth)
                                  for y, i in zip(d_row, i_row)])
    return out


def main(argv: list[str] | None = None) -> int:
    """Run ``factmas gallery``; returns the exit status (module docstring)."""
    from factmas.gallery_html import write_gallery

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    for name in ("photos", "facts_per_task", "top_images"):
        if getattr(args, name) < 1:
            print(f"factmas gallery: error: --{name.replace('_', '-')} must be >= 1, got "
                  f"{getattr(args, name)}", file=sys.stderr)
            return 2
    logging.basicConfig(level=logging.WARNING)
    try:
        data, runs = load_runs(args.runs, args.data, args.device)
        page = collect(data, runs, args.photos, args.facts_per_task, args.top_images, args.seed)
        index = write_gallery(args.out, data, runs, page)
    except (GalleryError, ImportError) as e:
        print(f"factmas gallery: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"factmas gallery: error: --out {args.out}: {e}", file=sys.stderr)
        return 2
    print(f"factmas gallery: wrote {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
