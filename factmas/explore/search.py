"""The photos that fit a fact best (fact → images), from a trained model (the work of ``factmas search``).

A typed fact "S", "S, P" or "S, P, O" is parsed into the run's vocabulary (``parse_fact``: lower-cased,
lemmas via lemminflect as the dataset's facts were mined, people words → person); the images of a
folder (``factmas.explore.search_index``) or of a dataset split (``dataset_embeddings``) are ranked by exact
FAISS search (``factmas.evaluation.retrieval.ImageIndex``) with the wildcard distance D ∈ [0, 4] of
``factmas.space``. ``search_run`` does a whole search of a loaded run (``factmas.Run.search`` calls it);
the command line is ``factmas.cli.search``. With the run's calibrator (``factmas.explore.calibrate.run_calibrator``)
each result also gets ``probability``, P(the fact is true of that image | D), fitted on the val images.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from factmas.errors import FactmasError

log = logging.getLogger(__name__)

DISTANCE_LABEL = "wildcard distance D in [0, 4], smaller = closer"
PROBABILITY_LABEL = "P(the fact is true of the image | D), fitted on the run's val images"
SPLITS = ("train", "val", "test", "all")


class SearchError(FactmasError, ValueError):
    """A fact or setting that cannot be searched; the message names it."""


def _lemmas(word: str) -> list[str]:
    try:
        from lemminflect import getAllLemmas
    except ImportError:
        return []
    return [lemma.lower() for lemmas in getAllLemmas(word).values() for lemma in lemmas]


def _people() -> frozenset:
    try:
        from data_prep.mining import PEOPLE
    except ImportError:
        return frozenset()
    return PEOPLE


def _resolve(word: str, index: dict) -> str | None:
    """The vocabulary word for a typed (lower-case) word, as the dataset's facts were mined: the word
    itself, "person" for people words (man, women, child, ...), else a lemma in the vocabulary."""
    if word in index:
        return word
    if word in _people() and "person" in index:
        return "person"
    return next((lem for lem in _lemmas(word) if lem in index), None)


def parse_fact(text: str, vocab: list[str], max_words: int) -> tuple[list[str], np.ndarray, int]:
    """A typed fact → (slot strings, tokens int64 [1, 3, L], order int).

    Args:
        text: "S", "S, P" or "S, P, O".  vocab: the dataset's words (id = position, 0 = pad).
        max_words: L, the most words a slot may have.
    Raises:
        SearchError: no slot, more than 3 slots, an empty slot, a slot of more than L words, or
            words outside the vocabulary (all of them named).
    """
    slots = [s.strip() for s in text.split(",")]
    if not text.strip() or len(slots) > 3 or any(not s for s in slots):
        raise SearchError(f"fact {text!r}: type 1 to 3 non-empty comma-separated slots, "
                          f"e.g. \"dog\", \"dog, run through\" or \"dog, run through, grass\"")
    index = {w: i for i, w in enumerate(vocab) if i > 0}
    tokens = np.zeros((1, 3, max_words), np.int64)
    unknown, words_out = [], []
    for s, slot in enumerate(slots):
        words = slot.lower().split()
        if len(words) > max_words:
            raise SearchError(f"fact {text!r}: slot {slot!r} has more than {max_words} words")
        found = []
        for w in words:
            cand = _resolve(w, index)
            if cand is None:
                unknown.append(w)
            found.append(cand)
        if not unknown:
            tokens[0, s, :len(found)] = [index[w] for w in found]
        words_out.append(" ".join(str(w) for w in found))
    if unknown:
        raise SearchError(f"fact {text!r}: not in the run's vocabulary ({len(vocab) - 1} words): "
                          + ", ".join(repr(w) for w in unknown))
    return words_out, tokens, len(slots)


def fact_id_of(data: Any, slots: list[str]) -> int | None:
    """Id of the dataset fact with exactly these slots (absent slots ''), or None."""
    s = (slots + ["", ""])[:3]
    for f in range(data.num_facts):
        if (data.subject[f], data.predicate[f], data.object[f]) == tuple(s):
            return f
    return None


def dataset_embeddings(embedder: Any, data: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(image ids int64 [N] of ``split``, raw φ float32 [N, 3, d]) of a dataset's images, embedded by
    ``embedder`` (``factmas.model.embedder.RunEmbedder`` of the run: its flip averaging, batch size
    and feature cache).

    Raises:
        SearchError: the split has no images.  ValueError: the feature cache cannot be used.
    """
    from factmas.data.dataset import SPLIT_NAMES

    ids = (np.arange(len(data.image_split)) if split == "all"
           else np.flatnonzero(data.image_split == SPLIT_NAMES.index(split)))
    if not len(ids):
        raise SearchError(f"--image-split {split}: the dataset {data.path} has no {split} images")
    return ids.astype(np.int64), embedder.images(ids).numpy()


def search(embedder: Any, tokens: np.ndarray, order: int, phi: np.ndarray,
           k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k images of one fact: (D float32 [k'], row indices int64 [k'] into ``phi``), ascending D.

    embedder: the run's ``RunEmbedder`` (the fact's ψ); tokens int64 [1, 3, L]; phi float32
    [N, 3, d] raw image embeddings; k' = min(k, N).
    """
    from factmas.evaluation.retrieval import ImageIndex

    psi = embedder.facts(tokens, np.array([order], np.int64))
    d, i = ImageIndex(phi, gpu=False).search(psi, np.array([order]), k)
    return d[0], i[0]


def search_run(cfg: Any, data: Any, model: Any, checkpoint: str | Path, fact: str,
               images: str | Path | None = None, image_split: str = "test", k: int = 10,
               calibrator: Any = None, calibration_note: str | None = None) -> dict:
    """One search of a loaded run (``factmas.run.load.load_run``) → the JSON-able result of
    ``factmas search --json``: {"fact", "order", "distance", "probability", "threshold", "source",
    "results": [{"rank", "image", "distance", "probability", ...}], "seconds", ...}.

    Args:
        cfg, data, model: the run's RunConfig, dataset (with its images unless ``images`` is given)
            and model.  checkpoint: the checkpoint file the model's weights came from (the folder
            index's key).  fact: "S", "S, P" or "S, P, O".  images: a folder of photos to search
            (indexed once, ``factmas.explore.search_index``); None: the dataset's ``image_split`` images
            ("train", "val", "test" or "all").  k: images returned.  calibrator: the run's
            ``Calibrator`` (``factmas.explore.calibrate.run_calibrator``) or None (then every probability is
            None); calibration_note: why there is none, recorded as "calibration_note".
    Raises:
        SearchError: a fact outside the vocabulary, an unusable folder or an empty image split.
    """
    from factmas.explore.search_index import folder_embeddings
    from factmas.model.embedder import RunEmbedder

    t0 = time.perf_counter()
    embedder = RunEmbedder.for_run(model, cfg, data)
    slots, tokens, order = parse_fact(fact, data.vocab, data.tokens.shape[2])
    cal = calibrator
    out: dict = {"fact": "<" + ", ".join(slots) + ">", "order": order, "distance": DISTANCE_LABEL,
                 "probability": PROBABILITY_LABEL if cal is not None else None,
                 "threshold": None if cal is None else cal.threshold}
    if calibration_note:
        out["calibration_note"] = calibration_note
    if images:
        try:
            paths, phi, failed, reused = folder_embeddings(
                embedder, checkpoint, images, int(data.images.shape[1]))
        except (ValueError, OSError) as e:
            raise SearchError(str(e)) from e
        out.update(source=str(images), index_reused=reused, unreadable=failed)
        d, rows = search(embedder, tokens, order, phi, k)
        out["results"] = [{"rank": r + 1, "image": str(paths[i]), "distance": float(x)}
                          for r, (x, i) in enumerate(zip(d, rows))]
    else:
        try:
            ids, phi = dataset_embeddings(embedder, data, image_split)
        except ValueError as e:
            raise SearchError(str(e)) from e
        f = fact_id_of(data, slots)
        true = set() if f is None else set(data.pairs[data.pairs[:, 1] == f, 0].tolist())
        out.update(source=f"{data.path} ({image_split} images)", fact_id=f)
        d, rows = search(embedder, tokens, order, phi, k)
        out["results"] = [{"rank": r + 1, "image": data.image_ids[int(ids[i])], "image_index":
                           int(ids[i]), "distance": float(x)}
                          | ({} if f is None else {"true": int(ids[i]) in true})
                          for r, (x, i) in enumerate(zip(d, rows))]
    for r in out["results"]:
        r["probability"] = None if cal is None else float(cal.predict(r["distance"]))
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out
