"""How well a run's answer probabilities hold, and how often it abstains, on test and foreign photos.

    python eval/calibration_report.py RUN_DIR [RUN_DIR ...] [--out docs/results/calibration]
                                      [--targets 0.3 0.4 0.5 0.6 0.7] [--device auto] [--no-ood]

For each run (its ``calibration.json``, or, when it has none for its weights, a calibrator fitted now
on the val images and not written into the run):

- **val-chosen thresholds**: for each target precision, p* chosen on the val images' top-k facts
  (``factmas.evaluation.calibration.choose_threshold``), and on the **test** images' top-k facts the
  precision of the answers shown (p ≥ p*), the coverage (test images with at least one answer shown)
  and the abstention rate (1 − coverage); the row "none" shows every top-k fact (p* = 0);
- **reliability on test**: the Brier score and the expected calibration error (10 bins) of p;
- **photos from outside Flickr8k**: the real photos bundled with scikit-image (``skimage.data``;
  ``pip install factmas[report]``), each answered as ``factmas query`` does with the run's own p*:
  whether it abstains, the best fact and its p.

Writes OUT.md and OUT.json (default docs/results/calibration.md/.json; atomically).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from factmas.io import cpu_model

# real photographs among scikit-image's bundled images (no download): name → function of skimage.data
SKIMAGE_PHOTOS = ("astronaut", "camera", "cat", "coffee", "coins", "hubble_deep_field",
                  "immunohistochemistry", "moon", "retina", "rocket", "page", "text", "grass",
                  "gravel", "brick", "cell", "clock", "stereo_motorcycle")
PEOPLE = ("astronaut", "camera")        # photos of a person, which Flickr8k's ⟨person⟩ facts fit


def skimage_photos(folder: Path) -> tuple[list[str], list[str]]:
    """Write scikit-image's bundled photos as PNG files into ``folder``; (paths, skipped notes)."""
    try:
        import skimage.data
        from PIL import Image
    except ImportError:
        return [], ["scikit-image is not installed (pip install factmas[report])"]
    paths, skipped = [], []
    for name in SKIMAGE_PHOTOS:
        try:
            x = getattr(skimage.data, name)()
        except Exception as e:                       # a version without it, or one that downloads
            skipped.append(f"{name}: {type(e).__name__}: {e}")
            continue
        x = x[0] if isinstance(x, tuple) else x
        path = folder / f"{name}.png"
        Image.fromarray(np.asarray(x, np.uint8)).save(path)
        paths.append(str(path))
    return paths, skipped


def measure_run(run_dir: str, targets: list[float], device: str, ood: list[str]) -> dict:
    """Every figure of one run (module docstring) as plain data."""
    from factmas.explore.calibrate import fit_run_calibration, run_calibrator, val_images
    from factmas.data.dataset import SPLIT_NAMES
    from factmas.evaluation.calibration import choose_threshold, reliability, shown_stats
    from factmas.evaluation.calibration_fit import embed_candidates
    from factmas.explore.query import answer
    from factmas.model.embedder import RunEmbedder
    from factmas.run.load import load_run
    from factmas.run.rundir import RunDir

    t0 = time.perf_counter()
    cfg, data, model, _ = load_run(run_dir, None, None, device, load_images=True)
    dev = next(model.parameters()).device
    embedder = RunEmbedder.for_run(model, cfg, data, device=dev)
    cal, why = run_calibrator(run_dir, model.state_dict())
    source = "calibration.json"
    if cal is None:
        cal = fit_run_calibration(model, data, embedder.inputs, dev, cfg)
        source = f"fitted now on val, not written ({why})"
    k = int(cal.meta.get("fitted_on", {}).get("k", cfg.eval.calibration_k))
    val = embed_candidates(embedder, data, val_images(data), k)
    test_ids = np.flatnonzero(data.image_split == SPLIT_NAMES.index("test"))
    test = embed_candidates(embedder, data, test_ids, k)
    pv, pt = cal.predict(val["distance"]), cal.predict(test["distance"])
    rows = [{"target": None, "threshold": 0.0, "reached": None,
             "val": shown_stats(pv, val["is_true"], val["image"], 0.0),
             "test": shown_stats(pt, test["is_true"], test["image"], 0.0)}]
    for target in sorted(set(targets) | {float(cal.meta.get("target_precision", 0.5))}):
        t, reached = choose_threshold(pv, val["is_true"], target)
        rows.append({"target": target, "threshold": t, "reached": reached,
                     "val": shown_stats(pv, val["is_true"], val["image"], t),
                     "test": shown_stats(pt, test["is_true"], test["image"], t)})
    top1 = test["rank"] == 1
    photos = []
    for r in answer(embedder, data, ood, k, calibrator=cal):
        if "facts" not in r:
            photos.append({"photo": Path(r["image"]).stem, "error": r.get("error")})
            continue
        best = r["facts"][0]
        photos.append({"photo": Path(r["image"]).stem, "abstain": r["abstain"],
                       "best": best["text"], "p": best["probability"], "distance": best["distance"],
                       "shown": [f["text"] for f in r["facts"] if f["probability"] >= r["threshold"]]})
    answered = [x for x in photos if "abstain" in x]
    no_people = [x for x in answered if x["photo"] not in PEOPLE]
    return {"run": str(run_dir), "meta": RunDir(run_dir).meta(), "calibrator": source,
            "k": k, "threshold": cal.threshold, "target_precision": cal.meta.get("target_precision"),
            "breakpoints": len(cal.distance), "fitted_on": cal.meta.get("fitted_on"),
            "rows": rows,
            "test_reliability": reliability(pt, test["is_true"]),
            "val_reliability": reliability(pv, val["is_true"]),
            "test_top1_precision": float(test["is_true"][top1].mean()) if top1.any() else None,
            "ood": {"photos": photos,
                    "abstention": (float(np.mean([x["abstain"] for x in answered]))
                                   if answered else None),
                    "abstention_without_people": (float(np.mean([x["abstain"] for x in no_people]))
                                                  if no_people else None)},
            "seconds": round(time.perf_counter() - t0, 1)}


def _f(x, digits=3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def markdown(report: dict) -> str:
    """The report as Markdown tables."""
    out = ["# Calibrated confidence: precision, coverage and abstention", "",
           f"`python eval/calibration_report.py {' '.join(r['run'] for r in report['runs'])}` "
           f"on {report['machine']['cpu']}, {report['machine']['date_utc']}.", "",
           "p = P(fact true | wildcard distance D): isotonic regression on the top-k facts of each "
           "**val** image (`factmas calibrate`, `factmas/evaluation/calibration.py`). p* = the smallest "
           "p at which the val answers with p ≥ p* reach the target precision. An answer is shown "
           "when p ≥ p*; coverage = share of images with at least one answer shown; abstention = "
           "1 − coverage (\"no known fact fits this photo\"). Precision counts a fact as right when it "
           "is among the image's mined facts (incomplete: some wrong answers are plausible).", ""]
    for r in report["runs"]:
        m = r["meta"]
        out += [f"## {Path(r['run']).name} ({m.get('method')}, split {m.get('split')}, seed "
                f"{m.get('seed')})", "",
                f"Calibrator: {r['calibrator']}; k = {r['k']}; {r['breakpoints']} breakpoints; fitted on "
                f"{(r['fitted_on'] or {}).get('pairs')} pairs of {(r['fitted_on'] or {}).get('images')} "
                f"val images; the run's p* = {_f(r['threshold'])} (target "
                f"{r['target_precision']}).", "",
                "| target precision (val) | p* | reached on val | val precision | val coverage | "
                "test precision | test coverage | test abstention |",
                "|---|---|---|---|---|---|---|---|"]
        for row in r["rows"]:
            v, t = row["val"], row["test"]
            reached = {None: "—", True: "yes", False: "no (highest p)"}[row["reached"]]
            out.append(f"| {'none (all top-k)' if row['target'] is None else row['target']} | "
                       f"{_f(row['threshold'])} | {reached} | {_f(v['precision'])} | "
                       f"{_f(v['coverage'])} | {_f(t['precision'])} | {_f(t['coverage'])} | "
                       f"{_f(t['abstention'])} |")
        rel = r["test_reliability"]
        out += ["", f"Test reliability of p: Brier {_f(rel['brier'], 4)}, ECE (10 bins) "
                f"{_f(rel['ece'], 4)} (val, in-sample: ECE {_f(r['val_reliability']['ece'], 4)}). "
                f"Test top-1 precision without abstention: {_f(r['test_top1_precision'])}.", ""]
        ood = r["ood"]
        if ood["photos"]:
            out += [f"Photos from outside Flickr8k (scikit-image's `skimage.data`), with the run's "
                    f"p* = {_f(r['threshold'])}: abstains on {_f(ood['abstention'], 2)} of them "
                    f"({_f(ood['abstention_without_people'], 2)} without the two photos of a person, "
                    f"{', '.join(PEOPLE)}).", "",
                    "| photo | abstains | best fact | p | answers shown |", "|---|---|---|---|---|"]
            for x in ood["photos"]:
                if "error" in x:
                    out.append(f"| {x['photo']} | unreadable: {x['error']} | | | |")
                    continue
                out.append(f"| {x['photo']} | {'yes' if x['abstain'] else 'no'} | {x['best']} | "
                           f"{_f(x['p'], 2)} | {', '.join(x['shown']) or '—'} |")
            out.append("")
    if report["ood_skipped"]:
        out += ["Not used: " + "; ".join(report["ood_skipped"]), ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default="docs/results/calibration",
                   help="path prefix of the .md and .json written (default docs/results/calibration)")
    p.add_argument("--targets", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6, 0.7])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-ood", action="store_true", help="skip the scikit-image photos")
    args = p.parse_args(argv)
    if any(not 0 < t <= 1 for t in args.targets):
        print(f"calibration_report: error: --targets must be in (0, 1], got {args.targets}",
              file=sys.stderr)
        return 2
    from factmas.evaluation.calibration import CalibrationError
    from factmas.io import atomic_write_json, atomic_write_text
    from factmas.run.load import RunLoadError
    import datetime as dt

    with tempfile.TemporaryDirectory() as tmp:
        ood, skipped = ([], ["--no-ood"]) if args.no_ood else skimage_photos(Path(tmp))
        try:
            runs = [measure_run(r, args.targets, args.device, ood) for r in args.runs]
        except (RunLoadError, CalibrationError, ValueError) as e:
            print(f"calibration_report: error: {e}", file=sys.stderr)
            return 2
    report = {"machine": {"cpu": cpu_model(),
                          "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
              "runs": runs, "ood_skipped": skipped}
    atomic_write_json(args.out + ".json", report)
    atomic_write_text(args.out + ".md", markdown(report) + "\n")
    print(f"wrote {args.out}.md and {args.out}.json")
    for r in runs:
        row = next(x for x in r["rows"] if x["target"] == r["target_precision"])
        print(f"{r['run']}: p* = {r['threshold']:.3f}; test precision {_f(row['test']['precision'])}, "
              f"coverage {_f(row['test']['coverage'])}; skimage photos abstained "
              f"{_f(r['ood']['abstention'], 2)}")
    return 0


if __name__ == "__main__":
    from factmas.errors import guarded_main
    sys.exit(guarded_main("calibration_report", main))
