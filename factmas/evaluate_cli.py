"""``factmas evaluate``: recompute the retrieval metrics of a run from its saved checkpoints.

Usage::

    factmas evaluate RUN_DIR [--checkpoint NAME] [--out DIR] [--json] [--data FILE.h5]
                     [--image-pool all|task] [--image-split test|val] [--device auto|cpu|cuda]

Without ``--checkpoint``: every stage checkpoint ``task{s}.pt`` is evaluated in order, plus the
initial model, rebuilt exactly as the trainer builds it (``torch.manual_seed(train.seed)`` then
``build_model``), and the report (results.json, results.md, plots) is written to ``--out``
(default RUN_DIR), then results.md is printed. With ``--checkpoint NAME`` (e.g. ``last.pt``,
``task2``): only that checkpoint, printed as a table (``--json``: the metrics dict). The evaluation
settings are the run's ``eval`` config unless overridden. Exit status 0, or 2 when the run, a
checkpoint or the dataset cannot be used.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

import torch

from .query import QueryError, checkpoint_file, load_run

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="factmas evaluate",
                                description="Recompute retrieval metrics from a run's checkpoints.")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--checkpoint", help="evaluate only this checkpoint (e.g. last.pt, task2)")
    p.add_argument("--out", help="where the report goes (default RUN_DIR)")
    p.add_argument("--json", action="store_true", help="with --checkpoint: print the metrics as JSON")
    p.add_argument("--data", help="dataset file (default: the one in RUN_DIR/config.json)")
    p.add_argument("--image-pool", choices=["all", "task"], help="override eval.image_pool")
    p.add_argument("--image-split", choices=["test", "val"], help="override eval.image_split")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    return p


def stage_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """[(stage, RUN_DIR/checkpoints/task{stage}.pt)] sorted by stage."""
    out = []
    for p in (Path(run_dir) / "checkpoints").glob("task*.pt"):
        suffix = p.stem[len("task"):]
        if suffix.isdigit():
            out.append((int(suffix), p))
    return sorted(out)


def metrics_table(metrics: dict, num_tasks: int) -> str:
    """Markdown table of one evaluation: rows = metrics, columns T1..Tk, all (values in %)."""
    from .evaluate import METRICS
    from .report import LABELS, fmt, markdown_table
    keys = list(range(num_tasks)) + ["all"]
    rows = [[LABELS[m]] + [fmt(metrics[m].get(k)) for k in keys] for m in METRICS]
    t = metrics.get("timing", {})
    table = markdown_table(["metric"] + [f"T{j + 1}" for j in range(num_tasks)] + ["all"], rows)
    return table + "\n\ntiming: " + ", ".join(f"{k} {v:.2f}" for k, v in t.items())


def main(argv: list[str] | None = None) -> int:
    """Run ``factmas evaluate``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from .evaluate import Evaluator
    from .model import build_model
    from .train.checkpoint import CheckpointError, load_checkpoint
    try:
        cfg, data, model, _ = load_run(args.run, args.data, args.checkpoint or _first(args.run),
                                       args.device, load_images=True)
        device = next(model.parameters()).device
        ecfg = dataclasses.replace(cfg.eval, **{k: v for k, v in (
            ("image_pool", args.image_pool), ("image_split", args.image_split)) if v})
        from .features import image_inputs
        inputs = image_inputs(model, data, device, cache=cfg.train.feature_cache,
                              progress=not args.quiet)
        evaluator = Evaluator(data, cfg.train.split, ecfg, device, inputs)
        if args.checkpoint:
            metrics = evaluator.evaluate(model)
            print(json.dumps(metrics, indent=2, default=str) if args.json
                  else f"{checkpoint_file(args.run, args.checkpoint)}\n\n"
                       + metrics_table(metrics, evaluator.num_tasks))
            return 0
        torch.manual_seed(cfg.train.seed)            # the initial model, as the trainer builds it
        initial = build_model(cfg.model, len(data.vocab)).to(device)
        evaluator.record("initial", evaluator.evaluate(initial))
        for stage, path in stage_checkpoints(args.run):
            model.load_state_dict(load_checkpoint(path, map_location=device)["model"])
            log.info("evaluating %s", path)
            evaluator.record(stage, evaluator.evaluate(model))
    except (QueryError, CheckpointError, ValueError) as e:
        print(f"factmas evaluate: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out or args.run)
    name = Path(args.run).resolve().name
    res = evaluator.results(name)
    if out.resolve() != Path(args.run).resolve():
        from .report import read_run_meta
        res["run"] = read_run_meta(args.run)
    from .report import write_report
    paths = write_report(out, res)
    print((out / "results.md").read_text(encoding="utf-8") if (out / "results.md").is_file() else "")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _first(run_dir: str) -> str:
    """A checkpoint to load the model shape from: the first stage's, else last.pt."""
    stages = stage_checkpoints(run_dir)
    return str(stages[0][1]) if stages else "last.pt"


if __name__ == "__main__":
    sys.exit(main())
