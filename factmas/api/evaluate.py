"""Evaluating a finished run again (the work of ``Run.evaluate`` and ``factmas evaluate``).

``evaluate_run`` measures the initial model (rebuilt exactly as the trainer builds it:
``torch.manual_seed(train.seed)`` then ``build_model``) and every stage checkpoint ``task{s}.pt`` in
order, on the run's dataset or another one, on its test or val images, and returns the report as a
``Results``; it writes nothing. ``evaluation_dir`` and ``write_evaluation`` are how ``factmas
evaluate`` chooses and writes its output folder without replacing results unasked.
``evaluate_checkpoint`` measures one checkpoint.

Heavy imports (torch, the evaluator) happen inside the functions.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Sequence

from factmas.api.records import CheckpointMetrics, Results
from factmas.errors import FactmasError

log = logging.getLogger(__name__)


class EvaluateError(FactmasError, ValueError):
    """An option or the run cannot be used as asked; the message names which."""


def stage_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """[(stage, RUN_DIR/checkpoints/task{stage}.pt)] sorted by stage (``RunDir.stage_checkpoints``)."""
    from factmas.run.rundir import RunDir
    return RunDir(run_dir).stage_checkpoints()


def select_stages(run_dir: str | Path, planned: list[int],
                  wanted: str | Sequence[int] | None) -> list[tuple[int, Path]]:
    """The (stage, checkpoint) pairs to evaluate.

    Args:
        planned: the stages of the run's stream.  wanted: None (every planned stage, all of which
            must be present), stage numbers, or their text "0,1".
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
    if isinstance(wanted, str):
        try:
            stages = sorted({int(x) for x in wanted.split(",") if x.strip()})
        except ValueError:
            raise EvaluateError(f"--stages: expected stage numbers separated by commas, got {wanted!r}") \
                from None
    else:
        stages = sorted({int(x) for x in wanted})
    absent = [s for s in stages if s not in present]
    if not stages or absent:
        label = wanted if isinstance(wanted, str) else ",".join(map(str, stages))
        raise EvaluateError(f"--stages {label}: no checkpoint for stage(s) {absent or '(none given)'}; "
                            f"present: {sorted(present) or 'none'}")
    return [(s, present[s]) for s in stages]


def first_checkpoint(run_dir: str | Path) -> str:
    """A checkpoint to load the model shape from: the first stage's, else last.pt."""
    stages = stage_checkpoints(run_dir)
    return str(stages[0][1]) if stages else "last.pt"


def evaluation_dir(run_dir: str | Path, out: str | Path | None, image_split: str, image_pool: str,
                   overwrite: bool = False, replace_results: bool = False) -> Path:
    """Where ``factmas evaluate`` writes: ``out``, by default ``RUN_DIR/evaluations/<image split>``
    (``…/test``, ``…/val``, ``…/test-task-pool``).

    Raises:
        EvaluateError: ``out`` is a file; ``out`` is a run directory (the run's own results) without
            ``replace_results``; ``out`` already holds results.json without ``overwrite``; ``out``
            holds a symbolic link or files factmas did not write (``factmas.outdir``).
    """
    from factmas.run.rundir import RunDir
    run = RunDir(run_dir)
    default = run.evaluations / (image_split + ("-task-pool" if image_pool == "task" else ""))
    out = Path(out) if out else default
    if out.exists() and not out.is_dir():
        raise EvaluateError(f"--out {out}: is a file; expected a directory")
    is_run = out.resolve() == run.path.resolve() or RunDir(out).holds_run()
    if is_run and not replace_results:
        raise EvaluateError(f"--out {out}: is a run directory; its results.json, results.md and plots "
                            "are the training run's. Write elsewhere (the default is "
                            f"{default}) or pass --replace-results to replace them")
    if (out / "results.json").is_file() and not (overwrite or is_run):
        raise EvaluateError(f"--out {out}: already holds results.json; pass --overwrite to replace "
                            "it or choose another --out")
    if not is_run:                        # no link inside, not someone else's folder (issue 30)
        from factmas.evaluation.report import is_results_file
        from factmas.outdir import OutputError, check_output
        try:            # an evaluation folder written before manifests holds a factmas results.json
            check_output(out, "evaluation", legacy=is_results_file(out / "results.json"))
        except OutputError as e:
            raise EvaluateError(f"--out: {e}") from e
    return out


def write_evaluation(results: Results, out: str | Path) -> list[Path]:
    """Write ``results`` into ``out`` (results.json, results.md, plots); a run directory's own
    results are replaced holding its lock (``RunLock``). Returns the paths written.
    Raises RunDirError when the run is in use by another process."""
    from factmas.run.lock import RunLock
    from factmas.run.rundir import RunDir
    out = Path(out)
    if RunDir(out).holds_run():
        with RunLock(out):
            return results.write(out)
    from factmas.evaluation.report import is_results_file
    from factmas.outdir import prepare_output
    prepare_output(out, "evaluation", legacy=is_results_file(out / "results.json"))
    return results.write(out)


def evaluate_into(run_dir: str | Path, out: str | Path | None = None, *, data: str | None = None,
                  image_split: str | None = None, image_pool: str | None = None,
                  stages: str | Sequence[int] | None = None, device: str = "auto",
                  progress: bool = False, other_data: bool = False, overwrite: bool = False,
                  replace_results: bool = False) -> tuple[Path, list[Path]]:
    """Evaluate a run again and write the report (the work of ``factmas evaluate RUN_DIR``):
    ``evaluation_dir`` (checked before any work), ``evaluate_run``, ``write_evaluation``.

    Args:
        out: the report's folder (default ``RUN_DIR/evaluations/<image split>``).  data, image_split,
            image_pool, stages, device, progress, other_data: as in ``evaluate_run`` (None: the
            run's ``eval`` settings).  overwrite, replace_results: as in ``evaluation_dir``.
    Returns:
        (the folder written, the paths written: results.json, results.md, plots).
    Raises:
        RunLoadError: not a run (no or an invalid config.json), or a checkpoint or the dataset
            cannot be used.  EvaluateError: ``out`` refused, missing stage checkpoints, bad
            ``stages``.  CheckpointError, ValueError, RunDirError: as in ``evaluate_run``;
            RunDirError also when the run is in use by another process.
    """
    from factmas.config import ConfigError
    from factmas.run.load import RunLoadError
    from factmas.run.rundir import RunDir, RunDirError
    try:                                          # config.json first: not a run → RunLoadError
        ecfg = RunDir(run_dir).read_config()[0].eval
    except (RunDirError, ConfigError) as e:
        raise RunLoadError(str(e)) from e
    folder = evaluation_dir(run_dir, out, image_split or ecfg.image_split, image_pool or ecfg.image_pool,
                            overwrite, replace_results)
    results = evaluate_run(run_dir, data, image_split, image_pool, stages, device, progress, other_data)
    return folder, write_evaluation(results, folder)


def _setup(run_dir: str | Path, data: str | None, checkpoint: str | None, device: str,
           image_split: str | None, image_pool: str | None, progress: bool,
           other_data: bool = False) -> tuple:
    """(cfg, dataset, model, device, EvalConfig, tasks, Evaluator, other data fingerprint or None)
    of a run; raises RunLoadError, RunDirError (a dataset other than the run's without
    ``other_data``), ValueError."""
    from factmas.data.experience import experiences
    from factmas.evaluation.evaluator import Evaluator
    from factmas.model.features import image_inputs
    from factmas.run.load import load_run

    from factmas.run.rundir import RunDir, check_eval_data
    cfg, fd, model, _ = load_run(run_dir, data, checkpoint or first_checkpoint(run_dir), device,
                                 load_images=True)
    other_fp = check_eval_data(RunDir(run_dir).record(), fd, cfg.train.split, run_dir,
                               other_data)       # the run's data, or named (issue 30)
    dev = next(model.parameters()).device
    ecfg = dataclasses.replace(cfg.eval, **{k: v for k, v in (
        ("image_pool", image_pool), ("image_split", image_split)) if v})
    inputs = image_inputs(model, fd, dev, cache=cfg.train.feature_cache, progress=progress,
                          num_workers=cfg.train.num_workers)
    tasks = experiences(fd, cfg.train.split)
    evaluator = Evaluator(fd, cfg.train.split, ecfg, dev, inputs, tasks=tasks, progress=progress)
    return cfg, fd, model, dev, ecfg, tasks, evaluator, other_fp


def evaluate_checkpoint(run_dir: str | Path, checkpoint: str, data: str | None = None,
                        image_split: str | None = None, image_pool: str | None = None,
                        device: str = "auto", progress: bool = False,
                        other_data: bool = False) -> CheckpointMetrics:
    """Every metric of one checkpoint of a run (``checkpoint``: "last.pt", "task2", a path) on its
    dataset (or ``data``), its ``eval`` settings unless ``image_split`` / ``image_pool`` are given.

    Raises:
        RunLoadError: the run, the checkpoint or the dataset cannot be used.  ValueError: bad
            evaluation settings (e.g. no images in the image split).  RunDirError: ``data`` is not
            the run's dataset and ``other_data`` is False.
    """
    from factmas.run.load import checkpoint_file
    parts = _setup(run_dir, data, checkpoint, device, image_split, image_pool, progress, other_data)
    model, evaluator = parts[2], parts[-2]
    return CheckpointMetrics(checkpoint_file(run_dir, checkpoint), evaluator.num_tasks,
                             evaluator.evaluate(model))


def evaluate_run(run_dir: str | Path, data: str | None = None, image_split: str | None = None,
                 image_pool: str | None = None, stages: str | Sequence[int] | None = None,
                 device: str = "auto", progress: bool = False, other_data: bool = False) -> Results:
    """The report of a run's initial model and stage checkpoints, measured again; writes nothing.

    Args:
        data: a dataset file (default: the run's, from config.json).  image_split: "test" or "val"
            (None: the run's ``eval.image_split``).  image_pool: "all" or "task" (None: the run's).
        stages: the stages to evaluate (None: every stage of the run's stream, all of which must
            have a checkpoint).  device: "auto", "cpu" or "cuda".  other_data: ``data`` is not the
            run's dataset on purpose (refused otherwise); its fingerprint is recorded in
            "evaluated" as "other_data_fingerprint".
    Returns:
        ``Results``; its ``data`` is results.json's content with "complete" (the whole stream) and
        "evaluated" ({"by", "run_dir", "checkpoints", "data", "image_split", "image_pool"}).
    Raises:
        RunLoadError, CheckpointError: the run, a checkpoint or the dataset cannot be used.
        EvaluateError: missing stage checkpoints, or bad ``stages``.  ValueError: bad settings.
        RunDirError: ``data`` is not the run's dataset and ``other_data`` is False.
    """
    import torch

    from factmas.evaluation.recorder import Recorder
    from factmas.methods import method_class
    from factmas.model import build_model
    from factmas.run.checkpoint import load_checkpoint
    from factmas.run.rundir import RunDir

    cfg, fd, model, dev, ecfg, tasks, evaluator, other_fp = _setup(
        run_dir, data, None, device, image_split, image_pool, progress, other_data)
    stream = method_class(cfg.train.method)().stream(tasks)     # the run's training stages
    planned = [st.index for st in stream]
    chosen = select_stages(run_dir, planned, stages)
    recorder = Recorder.for_evaluator(evaluator, [st.tasks for st in stream])
    torch.manual_seed(cfg.train.seed)            # the initial model, as the trainer builds it
    initial = build_model(cfg.model, len(fd.vocab)).to(dev)
    recorder.record("initial", evaluator.evaluate(initial))
    for stage, path in chosen:
        model.load_state_dict(load_checkpoint(path, map_location=dev)["model"])
        log.info("evaluating %s", path)
        recorder.record(stage, evaluator.evaluate(model))
    run = RunDir(run_dir)
    fields = {"complete": [s for s, _ in chosen] == planned,
              "evaluated": {"by": "factmas evaluate", "run_dir": str(run.path.resolve()),
                            "checkpoints": [str(p) for _, p in chosen], "data": fd.path,
                            "image_split": ecfg.image_split, "image_pool": ecfg.image_pool,
                            **({"other_data_fingerprint": other_fp} if other_fp else {})}}
    return Results.from_dict({**recorder.results(run.path.resolve().name, run.meta()), **fields})
