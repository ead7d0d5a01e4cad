"""The top-k facts ⟨S,P,O⟩ of image files, from a trained model (the work of ``factmas query``).

Embeds every fact of the dataset and answers each image with an exact FAISS search
(``factmas.evaluation.retrieval.FactIndex``, wildcard distance D ∈ [0, 4], smaller = closer). Any image
file PIL reads (JPEG, PNG; grayscale, palette, alpha, CMYK, any size) is converted to RGB and resized
to the dataset's image size as in training (``factmas.model.load_image_file``, ``preprocess``).
The command line is ``factmas.cli.query``; a run is loaded by ``factmas.run.load.load_run``.

With a calibrator (``factmas.explore.calibrate.run_calibrator``: ``RUN_DIR/calibration.json``, fitted on the
val images), each fact also gets ``probability``: P(the fact is true of the image | its distance), and
each image the abstention threshold p* and ``abstain`` (True when no fact of its top-k reaches p*:
"no known fact fits this photo"). Without one these are None.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:                     # torch loads only when a query runs (quick --help)
    from factmas.model.embedder import RunEmbedder


def answer(embedder: RunEmbedder, data: Any, paths: list[str], k: int,
           calibrator: Any = None) -> list[dict]:
    """Top-k facts of each image file: a list of {"image", "facts": [...], "threshold", "abstain"}
    or {"image", "error"}.

    Each fact: {"rank", "fact_id", "text", "subject", "predicate", "object", "order", "distance" (D),
    "probability" (P(true | D) from ``calibrator``, None without one)}; "threshold": the
    calibrator's p* (None without one); "abstain": True when every fact's probability is below p*
    (None without a calibrator).

    ``embedder``: the run's ``factmas.model.embedder.RunEmbedder`` (``RunEmbedder.for_run``: flip
    averaging and batch size as in its evaluation). ``calibrator``: a
    ``factmas.evaluation.calibration.Calibrator`` or None."""
    from factmas.model import load_image_file
    from factmas.evaluation.retrieval import FactIndex

    size = int(data.images.shape[1])
    order = data.order.astype(np.int64)
    index = FactIndex(embedder.facts(data.tokens, order), order)
    out: list[dict] = [{"image": p} for p in paths]
    good, pixels = [], []
    for i, p in enumerate(paths):
        try:
            pixels.append(load_image_file(p, size))
            good.append(i)
        except ValueError as e:
            out[i]["error"] = str(e)
    batch = embedder.batch_size
    for lo in range(0, len(good), batch):
        dist, ids = index.search(embedder.pixels(np.stack(pixels[lo:lo + batch])), k)
        for i, d_row, f_row in zip(good[lo:lo + batch], dist, ids):
            out[i]["facts"] = [
                {"rank": r + 1, "fact_id": int(f), "text": data.fact_text(int(f)),
                 "subject": data.subject[int(f)], "predicate": data.predicate[int(f)],
                 "object": data.object[int(f)],
                 "order": int(data.order[f]), "distance": float(d),
                 "probability": None if calibrator is None else float(calibrator.predict(d))}
                for r, (d, f) in enumerate(zip(d_row, f_row))]
            out[i].update(abstention(out[i]["facts"], calibrator))
    return out


def abstention(facts: list[dict], calibrator: Any) -> dict:
    """{"threshold": p*, "abstain": no fact with probability ≥ p*} of one image's answered facts
    (both None without a calibrator)."""
    if calibrator is None:
        return {"threshold": None, "abstain": None}
    t = float(calibrator.threshold)
    return {"threshold": t, "abstain": not any(f["probability"] >= t for f in facts)}
