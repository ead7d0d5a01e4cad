"""The continual trainer: ``train(cfg)`` starts a run, ``resume(run_dir)`` continues a killed one.

Public API::

    train(cfg: RunConfig, *, command="", overwrite=False, limit_tasks=None, progress=True) -> RunState
    resume(run_dir, *, limit_tasks=None, device=None, threads=None, progress=True) -> RunState
    resolve_device("auto" | "cpu" | "cuda") -> torch.device
    plan_stages(method, tasks) -> list[Experience]

Both write into ``cfg.out`` (the run directory; see ``factmas.run.rundir``): ``config.json``,
``metrics.jsonl``, ``checkpoints/task{s}.pt`` + ``last.pt`` and, at the end, the evaluator's report.
Errors: ``UsageError`` (unknown split, method or device), ``RunDirError`` (a run is already there),
``DatasetError`` (bad data file), ``ConfigError``; ``TrainingError`` (non-finite loss) and
``CheckpointError`` while training.

May import: ``factmas.model``, ``factmas.methods``, ``factmas.evaluation``, ``factmas.run``,
``factmas.data``, ``factmas.model.features``, ``factmas.distributed``, ``factmas.explore.calibrate``, ``factmas.config``,
``factmas.config_check``, ``factmas.machine.device``, ``factmas.errors``, ``factmas.space.loss``, ``factmas.outdir``,
``factmas.progress``. Never ``factmas.cli``, ``factmas.api`` or ``factmas.experiments``.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

from factmas.config import ConfigError, RunConfig, TrainConfig
from factmas.config_check import check_limit_tasks, validate_config
from factmas.data.dataset import FactData, read_dataset
from factmas.data.experience import Experience, experiences
from factmas.evaluation.evaluator import Evaluator
from factmas.evaluation.recorder import Recorder
from factmas.machine.device import DEVICES, UsageError, resolve_device  # noqa: F401 (part of the API)
from factmas.distributed import agree, is_main, main_first, size
from factmas.distributed.world import local_device
from factmas.methods import METHODS, Method, make_method, options_for, resolve_options
from factmas.run.checkpoint import CheckpointError
from factmas.run.lock import RunLock
from factmas.run.rundir import RunDir, RunDirError, check_config_matches, data_fingerprint
from factmas.trainer.loop import ContinualTrainer, RunState, TrainingError

log = logging.getLogger(__name__)


def plan_stages(method: Method, tasks: list[Experience]) -> list[Experience]:
    """The training stages (the stream) of ``method`` over the tasks' experiences: ``method.stream``
    (the tasks in order; one merged experience for ``joint``)."""
    return method.stream(tasks)


def build_method(tc: TrainConfig) -> Method:
    """The method of ``tc`` with λ and its options (``train.options.<method>``,
    ``factmas.methods.options_for``); ``tc.options`` is set to the method's complete options (what
    config.json records; ``factmas.methods.resolve_options``).

    Raises:
        ValueError: an unknown method or an option out of range (ConfigError, named).
    """
    resolve_options(tc)
    return make_method(tc.method, tc.reg_lambda, options_for(tc))


def check_settings(cfg: RunConfig, data: FactData) -> int:
    """Validate split and method against the data and the registry; returns the number of tasks.

    Raises:
        UsageError: unknown split or method (the message lists the valid ones), or a bad batch size,
            epoch count or learning rate.
    """
    tc = cfg.train
    if tc.split not in data.splits:
        raise UsageError(f"{data.path}: unknown split {tc.split!r}; valid: {sorted(data.splits)}")
    if tc.method not in METHODS:
        raise UsageError(f"unknown method {tc.method!r}; valid: {sorted(METHODS)}")
    if tc.threads is not None and tc.threads < 1:
        raise UsageError(f"train.threads must be >= 1 or null, got {tc.threads}")
    from factmas.config import BACKBONES
    spec = BACKBONES.get(cfg.model.backbone)
    if tc.augment_shift and not (spec is not None and spec.pixel_input):
        pixel = ", ".join(b.name for b in BACKBONES.values() if b.pixel_input)
        raise UsageError(f"train.augment_shift = {tc.augment_shift}: pixel shifts apply to pixel-input "
                         f"backbones ({pixel}) only; {cfg.model.backbone} reads a "
                         "cached feature map (use 0; flips still apply)")
    for key in ("epochs", "batch_size", "aux_batch_size"):
        if getattr(tc, key) < 1:
            raise UsageError(f"train.{key} must be >= 1, got {getattr(tc, key)}")
    if not tc.lr > 0:
        raise UsageError(f"train.lr must be > 0, got {tc.lr}")
    opts = vars(options_for(tc))
    if size() > 1 and opts.get("max_samples") is not None and "+" in opts.get("data", ""):
        raise UsageError(f"train.options.{tc.method}.max_samples = {opts['max_samples']} with data "
                         f"{opts['data']!r} on {size()} processes: the cap over several image splits "
                         "is not sharded; use one image split, no cap, or one process")
    return int(data.task_of_facts(tc.split).max()) + 1


def check_run_args(cfg: RunConfig, limit_tasks: int | None) -> None:
    """Every value of ``cfg`` in range (``factmas.config_check``), ``limit_tasks`` >= 1, and ``out`` not
    a file. Raises ConfigError or UsageError naming the setting, before anything is read or written."""
    validate_config(cfg)
    check_limit_tasks(limit_tasks)
    if limit_tasks is not None and cfg.train.method == "joint":
        raise UsageError(f"--limit-tasks {limit_tasks}: joint trains all tasks at once, in one stage, "
                         "so there are no tasks to stop after; leave --limit-tasks out (or train the "
                         "first tasks' facts with another split)")
    if cfg.out and Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise UsageError(f"--out {cfg.out}: is a file; expected a run directory (new or existing)")


def build_parts(cfg: RunConfig, data: FactData) -> tuple[torch.nn.Module, Method, list[Experience]]:
    """Validate the settings, seed, and build (model, method, the tasks' experiences): cheap,
    writes nothing.

    Raises:
        UsageError, ConfigError: a bad setting (named).
    """
    from factmas.model import build_model
    check_settings(cfg, data)
    if cfg.train.threads is not None:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    try:
        model = build_model(cfg.model, len(data.vocab), data.vocab)
        method = build_method(cfg.train)
    except ValueError as e:          # e.g. model.norm_groups not dividing the channels
        raise ConfigError(f"{e}") from e
    return model, method, experiences(data, cfg.train.split)


def build_trainer(cfg: RunConfig, data: FactData, device: torch.device, progress: bool = True,
                  parts: tuple | None = None, inputs=None) -> tuple[ContinualTrainer, list[Experience]]:
    """The trainer and its stream: ``parts`` from ``build_parts`` (built here when None), the image
    ``inputs`` (None: a pretrained backbone's feature cache is read, or computed and written, here;
    several processes: rank 0 first, ``shared_inputs``) and the evaluator."""
    from factmas.model.features import image_inputs
    model, method, tasks = parts if parts is not None else build_parts(cfg, data)
    if inputs is None:
        inputs = image_inputs(model, data, device, cache=cfg.train.feature_cache, progress=progress,
                              num_workers=cfg.train.num_workers)
    stream = plan_stages(method, tasks)
    evaluator = recorder = None
    if cfg.eval.enabled:
        evaluator = Evaluator(data, cfg.train.split, cfg.eval, device, inputs, tasks=tasks,
                              progress=progress)
        recorder = Recorder.for_evaluator(evaluator, [e.tasks for e in stream])
    trainer = ContinualTrainer(cfg, data, cfg.out, model, method, device, tasks, evaluator,
                               progress=progress, inputs=inputs, recorder=recorder)
    return trainer, stream


def shared_inputs(cfg: RunConfig, data: FactData, device: torch.device, model: torch.nn.Module,
                  progress: bool):
    """The image inputs (``factmas.model.features.image_inputs``); on several processes rank 0 reads or
    builds the feature cache first, then the others read it."""
    from factmas.model.features import image_inputs
    return main_first(lambda: image_inputs(model, data, device, cache=cfg.train.feature_cache,
                                           progress=progress and is_main(),
                                           num_workers=cfg.train.num_workers))


@contextlib.contextmanager
def _lock(run_dir: str | Path):
    """``RunLock`` held by rank 0 (the only writer); a failure to take it is raised on every rank."""
    lock = RunLock(run_dir) if is_main() else None
    agree(lambda: lock.__enter__() if lock is not None else None)
    try:
        yield
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)


def fact_targets_record(model: torch.nn.Module) -> dict:
    """config.json's ``fact_targets`` entry for fixed fact targets (``model.fact_targets =
    "word2vec"``: the word vectors' SHA-256 and size); {} for a learned fact branch."""
    record = getattr(model.fact_branch, "record", None)
    return {"fact_targets": record()} if callable(record) else {}


def check_same_fact_targets(record: dict, model: torch.nn.Module, run_dir: str | Path) -> None:
    """Raise RunDirError when the run recorded word vectors (``fact_targets_record``) other than
    those ``model`` was built with: the vectors file changed since the run started."""
    old = (record.get("fact_targets") or {}).get("word_vectors_sha256")
    new = (fact_targets_record(model).get("fact_targets") or {}).get("word_vectors_sha256")
    if old and old != new:
        raise RunDirError(f"{run_dir}: the run's word vectors had SHA-256 {old[:12]}…, "
                          f"model.word_vectors now has {str(new)[:12]}…; restore the run's vectors "
                          "file or start a new run")


def distributed_record(cfg: RunConfig) -> dict:
    """What config.json says about the processes: world size, backend, the global batch (=
    ``train.batch_size``, split over the processes) and the learning rate (not scaled: the global
    batch is the same on any number of processes)."""
    import torch.distributed as dist
    world = size()
    return {"world_size": world,
            "backend": dist.get_backend() if world > 1 else None,
            "global_batch_size": cfg.train.batch_size,
            "per_process_batch_size": -(-cfg.train.batch_size // world),
            "lr": cfg.train.lr}


def train(cfg: RunConfig, *, command: str = "", overwrite: bool = False, limit_tasks: int | None = None,
          progress: bool = True, data: FactData | None = None) -> RunState:
    """Start a run in ``cfg.out`` and train ``cfg.train.split``'s tasks (the first ``limit_tasks``).

    Raises:
        UsageError, RunDirError, DatasetError, ConfigError: before anything is written.
        TrainingError: while training (the completed tasks' checkpoints are kept).
    """
    if not cfg.out:
        raise UsageError("no run directory: set out (--out RUN_DIR)")
    check_run_args(cfg, limit_tasks)
    device = local_device(resolve_device(cfg.train.device))
    run = RunDir(cfg.out)
    agree(lambda: run.check_free(overwrite))            # before the feature cache is built
    data = data if data is not None else read_dataset(cfg.data)
    parts = build_parts(cfg, data)
    with _lock(cfg.out):
        inputs = shared_inputs(cfg, data, device, parts[0], progress)
        trainer, stages = build_trainer(cfg, data, device, progress, parts, inputs)
        agree(lambda: run.prepare(
            cfg, command=command, data_provenance=data.provenance,
            data_fingerprint=data_fingerprint(data, cfg.train.split), overwrite=overwrite,
            extra={"distributed": distributed_record(cfg), **fact_targets_record(parts[0])})
            if is_main() else None)
        log.info("run %s: method %s (λ = %g), split %s, %d tasks, device %s", cfg.out,
                 cfg.train.method, cfg.train.reg_lambda, cfg.train.split, len(stages), device)
        return trainer.run(stages, limit=limit_tasks)


def resume(run_dir: str | Path, *, limit_tasks: int | None = None, device: str | None = None,
           threads: int | None = None, progress: bool = True, data: FactData | None = None,
           num_workers: int | None = None) -> RunState:
    """Continue the run in ``run_dir`` from its last checkpoint (or from the start if it has none).

    The resumed run ends with the same weights and metrics as an uninterrupted run: every stage
    re-seeds from (seed, stage) and metrics.jsonl is cut back to the checkpoint. ``device``,
    ``threads`` and ``num_workers`` (``train.num_workers``: who reads the image batches, the same
    batches either way) may differ from the run's.

    Raises:
        RunDirError: no config.json, or the data file differs from the run's (fingerprint).
        CheckpointError: an unreadable checkpoint, or one that does not fit the model.
        TrainingError: while training.
    """
    run = RunDir(run_dir)
    cfg, record = run.read_config()
    check_config_matches(run_dir, cfg)      # config.json edited since the checkpoints: refused
    cfg.out = str(run_dir)
    trained_by = int((record.get("distributed") or {}).get("world_size", 1))
    if trained_by != size():
        how = (f"torchrun --nproc-per-node {trained_by} -m factmas.cli train --resume {run_dir}"
               if trained_by > 1 else f"factmas train --resume {run_dir} (one process, no torchrun)")
        raise UsageError(f"{run_dir} was trained by {trained_by} process(es), this resume has "
                         f"{size()}; resume it with {trained_by}: {how} (a resumed run repeats the "
                         "uninterrupted run bit for bit only on the same number of processes)")
    if threads is not None:          # bitwise equality with an uninterrupted run needs the same count
        cfg.train.threads = threads
    if num_workers is not None:      # only who reads the batches: the same batches, bit for bit
        cfg.train.num_workers = num_workers
    check_run_args(cfg, limit_tasks)
    dev = local_device(resolve_device(device or cfg.train.device))
    data = data if data is not None else read_dataset(cfg.data)
    check_settings(cfg, data)
    run.check_same_data(record, data, cfg.train.split)
    parts = build_parts(cfg, data)
    check_same_fact_targets(record, parts[0], run_dir)
    with _lock(run_dir):
        agree(lambda: run.reclaim() if is_main() else None)     # no link inside, no orphaned temps
        inputs = shared_inputs(cfg, data, dev, parts[0], progress)
        trainer, stages = build_trainer(cfg, data, dev, progress, parts, inputs)
        last = run.latest_checkpoint()
        if last is None:
            trainer.metrics.truncate(0)      # a run killed during its first task starts over
            state = None
        else:
            state = trainer.restore(last)
        if state is not None and state.next_stage >= len(stages):
            log.info("run %s: all %d tasks are already trained", run_dir, len(stages))
        return trainer.run(stages, state, limit=limit_tasks)


__all__ = ["CheckpointError", "Experience", "RunDirError", "RunState", "TrainingError", "UsageError",
           "build_method", "build_trainer", "plan_stages", "resolve_device", "resume", "shared_inputs",
           "train"]
