"""``factmas search``: the photos that fit a fact best (fact → images), from a trained run.

Usage::

    factmas search --run RUN_DIR "dog, run through, grass" [--images DIR | --data FILE.h5]
                   [--image-split test] [--k 10] [--json] [--checkpoint last.pt] [--device auto]

The fact is typed as "S", "S, P" or "S, P, O" (comma-separated slots). Words are lower-cased and, when
a word is not in the run's vocabulary, its lemmas (lemminflect, as the dataset's facts were mined:
"dogs" → dog, "running" → run; people words such as "children" → person) are tried; words still
unknown are named in the error (exit 2).

Searched images: ``--images DIR`` = the image files of a folder, embedded once with
``model.embed_pixels`` into ``DIR/.factmas-index/`` (``factmas.search_index``; reused while run and
files are unchanged); otherwise the images of ``--image-split`` (default test) of the dataset
(``--data``, default the run's), read through the feature cache (``factmas.features.image_inputs``).
Ranking: exact FAISS search (``factmas.evaluation.retrieval.ImageIndex``) by the wildcard distance
D ∈ [0, 4] of ``factmas.space`` (smaller = closer). When searching a dataset and the fact is one of
its facts, each result says whether the fact is true of that image (``true``; ✓ in text output).

Exit status: 0 answered; 2 bad fact, unknown words, or a run/dataset/folder that cannot be used.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DISTANCE_LABEL = "wildcard distance D in [0, 4], smaller = closer"
SPLITS = ("train", "val", "test", "all")


class SearchError(ValueError):
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


def dataset_embeddings(model: Any, data: Any, split: str, device: Any,
                       batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(image ids int64 [N] of ``split``, raw φ float32 [N, 3, d]) of a dataset's images.

    Raises:
        SearchError: the split has no images.  ValueError: the feature cache cannot be used.
    """
    import torch

    from factmas.data.dataset import SPLIT_NAMES
    from factmas.features import image_inputs

    ids = (np.arange(len(data.image_split)) if split == "all"
           else np.flatnonzero(data.image_split == SPLIT_NAMES.index(split)))
    if not len(ids):
        raise SearchError(f"--image-split {split}: the dataset {data.path} has no {split} images")
    inputs = image_inputs(model, data, device, progress=False)
    with torch.no_grad():
        phi = [model.image_branch(inputs.get(ids[lo:lo + batch])).float().cpu().numpy()
               for lo in range(0, len(ids), batch)]
    return ids.astype(np.int64), np.concatenate(phi)


def search(model: Any, tokens: np.ndarray, order: int, phi: np.ndarray,
           k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k images of one fact: (D float32 [k'], row indices int64 [k'] into ``phi``), ascending D.

    tokens int64 [1, 3, L]; phi float32 [N, 3, d] raw image embeddings; k' = min(k, N).
    """
    import torch

    from factmas.evaluation.retrieval import ImageIndex

    device = next(model.parameters()).device
    with torch.no_grad():
        psi = model.fact_branch(torch.as_tensor(tokens, device=device),
                                torch.tensor([order], device=device)).float().cpu()
    d, i = ImageIndex(phi, gpu=False).search(psi, np.array([order]), k)
    return d[0], i[0]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="factmas search",
                                description="The images that fit a fact best, from a trained run.")
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="a run directory of factmas train")
    p.add_argument("fact", help='the fact as "S", "S, P" or "S, P, O", e.g. "dog, run through, grass"')
    src = p.add_mutually_exclusive_group()
    src.add_argument("--images", metavar="DIR", help="search this folder of photos (indexed once)")
    src.add_argument("--data", metavar="FILE.h5", help="search this dataset's images "
                     "(default: the run's dataset, from RUN_DIR/config.json)")
    p.add_argument("--image-split", default="test", choices=SPLITS,
                   help="dataset images searched (default test)")
    p.add_argument("--k", type=int, default=10, help="images shown (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--checkpoint", default="last.pt", help="checkpoint in RUN_DIR/checkpoints (default last.pt)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default auto")
    return p


def run_search(args: argparse.Namespace) -> dict:
    """The search of parsed arguments → the JSON-able result. Raises SearchError, QueryError."""
    from factmas.query import checkpoint_file, load_run
    from factmas.search_index import folder_embeddings

    t0 = time.perf_counter()
    _, data, model, _ = load_run(args.run, args.data, args.checkpoint, args.device,
                                 load_images=args.images is None)
    device = next(model.parameters()).device
    slots, tokens, order = parse_fact(args.fact, data.vocab, data.tokens.shape[2])
    out: dict = {"fact": "<" + ", ".join(slots) + ">", "order": order, "distance": DISTANCE_LABEL}
    if args.images:
        try:
            paths, phi, failed, reused = folder_embeddings(
                model, checkpoint_file(args.run, args.checkpoint), args.images,
                int(data.images.shape[1]), device)
        except (ValueError, OSError) as e:
            raise SearchError(str(e)) from e
        out.update(source=str(args.images), index_reused=reused, unreadable=failed)
        d, rows = search(model, tokens, order, phi, args.k)
        out["results"] = [{"rank": r + 1, "image": str(paths[i]), "distance": float(x)}
                          for r, (x, i) in enumerate(zip(d, rows))]
    else:
        try:
            ids, phi = dataset_embeddings(model, data, args.image_split, device)
        except ValueError as e:
            raise SearchError(str(e)) from e
        f = fact_id_of(data, slots)
        true = set() if f is None else set(data.pairs[data.pairs[:, 1] == f, 0].tolist())
        out.update(source=f"{data.path} ({args.image_split} images)", fact_id=f)
        d, rows = search(model, tokens, order, phi, args.k)
        out["results"] = [{"rank": r + 1, "image": data.image_ids[int(ids[i])], "image_index":
                           int(ids[i]), "distance": float(x)}
                          | ({} if f is None else {"true": int(ids[i]) in true})
                          for r, (x, i) in enumerate(zip(d, rows))]
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run ``factmas search``; returns the exit status (module docstring)."""
    from factmas.query import QueryError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if args.k < 1:
        print(f"factmas search: error: --k must be >= 1, got {args.k}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    try:
        out = run_search(args)
    except (SearchError, QueryError, ImportError) as e:
        print(f"factmas search: error: {e}", file=sys.stderr)
        return 2
    for msg in out.get("unreadable", []):
        print(f"factmas search: skipped unreadable image {msg}", file=sys.stderr)
    if args.json:
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return 0
    print(f"{out['fact']} in {out['source']}"
          + (" (index reused)" if out.get("index_reused") else ""))
    print(f"  rank  distance  image    ({DISTANCE_LABEL})")
    for r in out["results"]:
        mark = {True: "  ✓", False: "  ✗"}.get(r.get("true"), "")
        print(f"  {r['rank']:>4}  {r['distance']:8.4f}  {r['image']}{mark}")
    if out.get("fact_id") is None and "fact_id" in out:
        print("  (not a fact of the dataset: no ✓/✗ marks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
