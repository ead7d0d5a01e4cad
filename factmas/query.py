"""``factmas query``: the top-k facts ⟨S,P,O⟩ of images, from a trained run.

Usage::

    factmas query --run RUN_DIR IMAGE [IMAGE ...] [--k 5] [--json] [--data FILE.h5]
                  [--checkpoint last.pt] [--device auto|cpu|cuda]

Reads RUN_DIR/config.json (the run configuration and the dataset path, which ``--data`` overrides:
the facts and their vocabulary come from the dataset), the checkpoint (``last.pt`` by default) with
``torch.load(..., weights_only=True)``, embeds every fact, and answers each image with an exact FAISS
search (``factmas.evaluation.retrieval.FactIndex``, wildcard distance D ∈ [0, 4], smaller = closer). Any image
file PIL reads (JPEG, PNG; grayscale, palette, alpha, CMYK, any size) is converted to RGB and resized
to the dataset's image size as in training (``factmas.model.load_image_file``, ``preprocess``).

Exit status: 0 every image answered; 1 some image could not be read (each such image is named on
stderr, and in ``--json`` output as {"image", "error"}; the others are still answered); 2 the run,
checkpoint or dataset could not be used.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:                     # torch loads only when a query runs (quick --help)
    import torch

log = logging.getLogger(__name__)


class QueryError(RuntimeError):
    """The run directory, its checkpoint or its dataset cannot be used; the message names which."""


def checkpoint_file(run_dir: str | Path, name: str | None) -> Path:
    """Path of checkpoint ``name`` of a run: "last.pt" (default), "task2.pt", "task2", "last", or a path."""
    if not name:
        name = "last.pt"
    p = Path(name)
    if p.is_file():
        return p
    if p.suffix != ".pt":
        p = p.with_name(p.name + ".pt")
    return Path(run_dir) / "checkpoints" / p.name


def load_run(run_dir: str | Path, data_path: str | None = None, checkpoint: str | None = None,
             device: str = "auto", load_images: bool = False) -> tuple[Any, Any, torch.nn.Module, dict]:
    """(RunConfig, FactData, model in eval mode on ``device``, checkpoint dict) of a trained run.

    Raises:
        QueryError: no config.json, an invalid config, a missing/unreadable dataset or checkpoint,
            or weights that do not fit the configured model (the message names the file).
    """
    from factmas.config import ConfigError
    from factmas.data.dataset import DatasetError, read_dataset
    from factmas.model import build_model
    from factmas.train import UsageError, resolve_device
    from factmas.run.checkpoint import CheckpointError, load_checkpoint
    from factmas.run.rundir import RunDirError, read_run_config

    try:
        cfg, record = read_run_config(run_dir)
        data = read_dataset(data_path or cfg.data, load_images=load_images)
        if _content(record.get("data_provenance")) != _content(data.provenance):
            log.warning("%s differs from the dataset run %s was trained on (build options or counts "
                        "in config.json's data_provenance): facts, vocabulary or images may not match",
                        data.path, run_dir)
        dev = resolve_device(device)
        ckpt = load_checkpoint(checkpoint_file(run_dir, checkpoint), map_location=dev)
    except (RunDirError, ConfigError, DatasetError, CheckpointError, UsageError) as e:
        raise QueryError(str(e)) from e
    model = build_model(cfg.model, len(data.vocab))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise QueryError(f"{checkpoint_file(run_dir, checkpoint)}: weights do not fit the model of "
                         f"config.json and dataset {data.path} ({len(data.vocab)} words): {e}") from e
    return cfg, data, model.to(dev).eval(), ckpt


def _content(provenance: Any) -> dict:
    """The parts of a dataset's provenance that fix its content (build options and counts)."""
    p = provenance if isinstance(provenance, dict) else {}
    return {k: p[k] for k in ("options", "counts") if k in p}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="factmas query",
                                description="Top-k facts <S,P,O> of images, from a trained run.")
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="a run directory of factmas train")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG or PNG files (any size or mode)")
    p.add_argument("--k", type=int, default=5, help="facts per image (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--data", help="dataset file (default: the one in RUN_DIR/config.json)")
    p.add_argument("--checkpoint", default="last.pt", help="checkpoint name in RUN_DIR/checkpoints")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return p


def answer(model: torch.nn.Module, data: Any, paths: list[str], k: int, device: torch.device,
           batch: int = 64) -> list[dict]:
    """Top-k facts of each image file: a list of {"image", "facts": [...]} or {"image", "error"}."""
    import torch
    from factmas.evaluation.evaluator import embed_facts
    from factmas.model import load_image_file, preprocess
    from factmas.evaluation.retrieval import FactIndex

    size = int(data.images.shape[1])
    order = data.order.astype(np.int64)
    index = FactIndex(embed_facts(model, data.tokens, order, 256, device), order)
    out: list[dict] = [{"image": p} for p in paths]
    good, pixels = [], []
    for i, p in enumerate(paths):
        try:
            pixels.append(load_image_file(p, size))
            good.append(i)
        except ValueError as e:
            out[i]["error"] = str(e)
    for lo in range(0, len(good), batch):
        with torch.no_grad():
            phi = model.embed_pixels(preprocess(np.stack(pixels[lo:lo + batch])).to(device)).cpu()
        dist, ids = index.search(phi, k)
        for i, d_row, f_row in zip(good[lo:lo + batch], dist, ids):
            out[i]["facts"] = [
                {"rank": r + 1, "fact_id": int(f), "text": data.fact_text(int(f)),
                 "subject": data.subject[int(f)], "predicate": data.predicate[int(f)],
                 "object": data.object[int(f)],
                 "order": int(data.order[f]), "distance": float(d)}
                for r, (d, f) in enumerate(zip(d_row, f_row))]
    return out


def main(argv: list[str] | None = None) -> int:
    """Run ``factmas query``; returns the exit status (module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if args.k < 1:
        print(f"factmas query: error: --k must be >= 1, got {args.k}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    try:
        _, data, model, _ = load_run(args.run, args.data, args.checkpoint, args.device)
    except (QueryError, ImportError) as e:
        print(f"factmas query: error: {e}", file=sys.stderr)
        return 2
    device = next(model.parameters()).device
    results = answer(model, data, args.images, args.k, device)
    failed = [r for r in results if "error" in r]
    for r in failed:
        print(f"factmas query: error: {r['error']}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        if any("facts" in r for r in results):
            print("(the number is the wildcard distance D in [0, 4]: smaller = closer)")
        for r in results:
            if "facts" not in r:
                continue
            print(r["image"])
            for f in r["facts"]:
                print(f"  {f['rank']:>3}. {f['text']:<40} {f['distance']:.4f}")
    if failed:
        print(f"factmas query: {len(failed)} of {len(results)} images could not be read",
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
