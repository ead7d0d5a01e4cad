"""``factmas evaluate``: recompute the retrieval metrics of a run from its saved checkpoints.

Usage::

    factmas evaluate RUN_DIR [--checkpoint NAME] [--out DIR] [--stages 0,1,...] [--json]
                     [--data FILE.h5] [--image-pool all|task] [--image-split test|val]
                     [--device auto|cpu|cuda] [--overwrite] [--replace-results]

Without ``--checkpoint``: the initial model, rebuilt exactly as the trainer builds it
(``torch.manual_seed(train.seed)`` then ``build_model``), and every stage checkpoint ``task{s}.pt``
in order are evaluated, and the report (results.json, results.md, plots) is written to ``--out``,
by default ``RUN_DIR/evaluations/<image split>`` (``…/test``, ``…/val``, ``…/test-task-pool``), never
over the run's own results: ``--out RUN_DIR`` needs ``--replace-results`` (and the run's lock), an
``--out`` that already holds results needs ``--overwrite``. A run whose stage checkpoints are not
all there (a gap, or an unfinished run) is refused unless ``--stages`` names the stages to evaluate,
so that "final" is never silently an earlier stage. results.json records the image split and pool,
the stages and checkpoints evaluated, whether they cover the whole sequence (``complete``) and the
run's data fingerprint. With ``--checkpoint NAME`` (e.g. ``last.pt``, ``task2``): only that
checkpoint, printed as a table (``--json``: the metrics dict); nothing is written.
The evaluation settings are the run's ``eval`` config unless overridden. Exit status 0, or 2 when
the run, a checkpoint, the dataset or an option cannot be used (nothing is written then).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

from factmas.cli.common import parse
from pathlib import Path

from factmas.run.load import RunLoadError, checkpoint_file, load_run

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="factmas evaluate",
                                description="Recompute retrieval metrics from a run's checkpoints.")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--checkpoint", help="evaluate only this checkpoint (e.g. last.pt, task2)")
    p.add_argument("--out", help="where the report goes (default RUN_DIR/evaluations/<image split>)")
    p.add_argument("--stages", help="evaluate only these stages, e.g. 0,1 (needed when the run lacks "
                                    "some stage checkpoints)")
    p.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    p.add_argument("--replace-results", action="store_true",
                   help="allow --out RUN_DIR: replace the run's own results.json/results.md/plots")
    p.add_argument("--json", action="store_true", help="with --checkpoint: print the metrics as JSON")
    p.add_argument("--data", help="dataset file (default: the one in RUN_DIR/config.json)")
    p.add_argument("--image-pool", choices=["all", "task"], help="override eval.image_pool")
    p.add_argument("--image-split", choices=["test", "val"], help="override eval.image_split")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    return p


class EvaluateError(ValueError):
    """An option or the run cannot be used as asked; the message names which."""


def output_dir(args: argparse.Namespace, image_split: str, image_pool: str) -> Path:
    """Where the report goes; refuses (EvaluateError) what would replace results unasked."""
    from factmas.run.rundir import RunDir
    run = RunDir(args.run)
    default = run.evaluations / (image_split + ("-task-pool" if image_pool == "task" else ""))
    out = Path(args.out) if args.out else default
    if out.exists() and not out.is_dir():
        raise EvaluateError(f"--out {out}: is a file; expected a directory")
    is_run = out.resolve() == run.path.resolve() or RunDir(out).holds_run()
    if is_run and not args.replace_results:
        raise EvaluateError(f"--out {out}: is a run directory; its results.json, results.md and plots "
                            "are the training run's. Write elsewhere (the default is "
                            f"{default}) or pass --replace-results to replace them")
    if (out / "results.json").is_file() and not (args.overwrite or is_run):
        raise EvaluateError(f"--out {out}: already holds results.json; pass --overwrite to replace "
                            "it or choose another --out")
    return out


def select_stages(run_dir: str | Path, planned: list[int], wanted: str | None) -> list[tuple[int, Path]]:
    """The (stage, checkpoint) pairs to evaluate.

    Raises:
        EvaluateError: without ``wanted``, when the present checkpoints are not exactly the planned
            stages (names the missing ones); with ``wanted``, a malformed list or a stage whose
            checkpoint is missing.
    """
    present = dict(stage_checkpoints(run_dir))
    if wanted is None:
        missing = [s for s in planned if s not in present]
        extra = [s for s in present if s not in planned]
        if missing or extra:
            what = (f"lacks {', '.join(f'task{s}.pt' for s in missing)}" if missing
                    else f"has checkpoints of stages {extra} beyond the planned {planned}")
            raise EvaluateError(f"{Path(run_dir) / 'checkpoints'} {what} (the run has "
                                f"{len(planned)} stages; present: {sorted(present) or 'none'}); "
                                "finish it with factmas train --resume, or evaluate the present "
                                f"stages on purpose with --stages {','.join(map(str, sorted(present))) or 'N'}")
        return sorted(present.items())
    try:
        stages = sorted({int(x) for x in wanted.split(",") if x.strip()})
    except ValueError:
        raise EvaluateError(f"--stages: expected stage numbers separated by commas, got {wanted!r}") \
            from None
    absent = [s for s in stages if s not in present]
    if not stages or absent:
        raise EvaluateError(f"--stages {wanted}: no checkpoint for stage(s) {absent or '(none given)'}; "
                            f"present: {sorted(present) or 'none'}")
    return [(s, present[s]) for s in stages]


def stage_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """[(stage, RUN_DIR/checkpoints/task{stage}.pt)] sorted by stage (``RunDir.stage_checkpoints``)."""
    from factmas.run.rundir import RunDir
    return RunDir(run_dir).stage_checkpoints()


def metrics_table(metrics: dict, num_tasks: int) -> str:
    """Markdown table of one evaluation: rows = metrics, columns T1..Tk, all (values in %)."""
    from factmas.evaluation.evaluator import METRICS, RECALL_METRICS
    from factmas.evaluation.report import LABELS, fmt, markdown_table
    keys = list(range(num_tasks)) + ["all"]
    rows = [[LABELS[m]] + [fmt(metrics[m].get(k)) for k in keys]
            for m in METRICS + tuple(r for r in RECALL_METRICS if r in metrics)]
    t = metrics.get("timing", {})
    table = markdown_table(["metric"] + [f"T{j + 1}" for j in range(num_tasks)] + ["all"], rows)
    cos = metrics.get("embedding", {}).get("mean_cosine")
    cos_line = "" if cos is None else (f"\n\nmean pairwise cosine of the images' embeddings (each slot "
                                       f"L2-normalized; 1 = collapsed): {cos:.3f}")
    return table + cos_line + "\n\ntiming: " + ", ".join(f"{k} {v:.2f}" for k, v in t.items())


def main(argv: list[str] | None = None) -> int:
    """Run ``factmas evaluate``; returns the exit status."""
    args = parse(build_parser(), argv)
    if isinstance(args, int):
        return args
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from factmas.data.experience import experiences
    from factmas.evaluation.evaluator import Evaluator
    from factmas.evaluation.recorder import Recorder
    from factmas.methods import method_class
    from factmas.model import build_model
    from factmas.run.checkpoint import CheckpointError, load_checkpoint
    from factmas.run.lock import RunLock
    from factmas.run.rundir import RunDir, RunDirError
    try:
        cfg, data, model, _ = load_run(args.run, args.data, args.checkpoint or _first(args.run),
                                       args.device, load_images=True)
        device = next(model.parameters()).device
        ecfg = dataclasses.replace(cfg.eval, **{k: v for k, v in (
            ("image_pool", args.image_pool), ("image_split", args.image_split)) if v})
        from factmas.features import image_inputs
        inputs = image_inputs(model, data, device, cache=cfg.train.feature_cache,
                              progress=not args.quiet)
        tasks = experiences(data, cfg.train.split)
        evaluator = Evaluator(data, cfg.train.split, ecfg, device, inputs, tasks=tasks)
        if args.checkpoint:
            metrics = evaluator.evaluate(model)
            print(json.dumps(metrics, indent=2, default=str) if args.json
                  else f"{checkpoint_file(args.run, args.checkpoint)}\n\n"
                       + metrics_table(metrics, evaluator.num_tasks))
            return 0
        out = output_dir(args, ecfg.image_split, ecfg.image_pool)
        stream = method_class(cfg.train.method)().stream(tasks)     # the run's training stages
        planned = [st.index for st in stream]
        chosen = select_stages(args.run, planned, args.stages)
        recorder = Recorder.for_evaluator(evaluator, [st.tasks for st in stream])
        import torch
        torch.manual_seed(cfg.train.seed)            # the initial model, as the trainer builds it
        initial = build_model(cfg.model, len(data.vocab)).to(device)
        recorder.record("initial", evaluator.evaluate(initial))
        for stage, path in chosen:
            model.load_state_dict(load_checkpoint(path, map_location=device)["model"])
            log.info("evaluating %s", path)
            recorder.record(stage, evaluator.evaluate(model))
        run = RunDir(args.run)
        fields = {"complete": [s for s, _ in chosen] == planned,
                  "evaluated": {"by": "factmas evaluate", "run_dir": str(run.path.resolve()),
                                "checkpoints": [str(p) for _, p in chosen], "data": data.path,
                                "image_split": ecfg.image_split, "image_pool": ecfg.image_pool}}
        write = lambda: recorder.write(out, run.path.resolve().name, run=run.meta(), **fields)  # noqa: E731
        if out.resolve() == run.path.resolve() or RunDir(out).holds_run():
            with RunLock(out):
                paths = write()
        else:
            paths = write()
    except (RunLoadError, CheckpointError, RunDirError, ValueError) as e:
        print(f"factmas evaluate: error: {e}", file=sys.stderr)
        return 2
    print((out / "results.md").read_text(encoding="utf-8") if (out / "results.md").is_file() else "")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _first(run_dir: str) -> str:
    """A checkpoint to load the model shape from: the first stage's, else last.pt."""
    stages = stage_checkpoints(run_dir)
    return str(stages[0][1]) if stages else "last.pt"


if __name__ == "__main__":
    sys.exit(main())
