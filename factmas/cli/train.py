"""``factmas train``: train the tasks of a split in order, or resume a killed run.

Usage::

    factmas train --data FILE.h5 --split random4_seed0 --method mas --reg-lambda 10 --out RUN_DIR
                  [--epochs E] [--batch-size B] [--lr LR] [--seed S] [--device auto|cpu|cuda]
                  [--omega-data train|test|train+test] [--ewc-gamma G] [...] [--threads N] [--num-workers N]
                  [--config RUNCONFIG.json] [--limit-tasks N] [--overwrite] [--no-progress]
                  [--tensorboard]
    factmas train --resume RUN_DIR [--device ...] [--threads N] [--num-workers N] [--limit-tasks N]
    torchrun --nproc-per-node N -m factmas.cli train ...     # N processes, one run (factmas.distributed)

Under torchrun (``WORLD_SIZE`` > 1 in the environment) the command joins the process group (NCCL on
GPUs, one process per GPU; gloo on CPUs); rank 0 alone logs, shows progress and writes the run.

Options given on the command line override those of ``--config``; the flags of the methods' options
(``--omega-data``, ``--ewc-gamma``, ...; ``factmas.cli.train_args.METHOD_FLAGS``) set
``train.options.<method>`` of the chosen method, and one the method does not have is refused. Exit status: 0 done, 1 training
error (e.g. a non-finite loss; the completed tasks' checkpoints are kept), 2 usage error (unknown
split, method or device, a value out of range (named with its option or config key), bad data file,
a run already in RUN_DIR, RUN_DIR in use by another live process), 130 interrupted (Ctrl-C),
143 terminated (SIGTERM); both keep the completed tasks' checkpoints for --resume.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import sys
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from factmas.config import ConfigError, RunConfig
from factmas.data.dataset import DatasetError
from factmas.errors import Terminated, sigterm_raises
from factmas.api.training import resume, train_config
from factmas.trainer import CheckpointError, RunDirError, TrainingError, UsageError

log = logging.getLogger("factmas.trainer")

from factmas.cli.train_args import (METHOD_FLAGS, MODEL_OPTIONS, TRAIN_OPTIONS, build_parser,  # noqa: F401
                                   fixed_by_run)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The RunConfig of ``--config`` (or the defaults) with the command-line options applied.

    Raises:
        ConfigError: an unreadable or invalid --config file.  UsageError: no --data or --out, or a
            flag of an option the method does not have.
    """
    cfg = RunConfig.from_json(args.config) if args.config else RunConfig()
    if args.data:
        cfg.data = args.data
    if args.out:
        cfg.out = args.out
    for opt, key in TRAIN_OPTIONS.items():
        value = getattr(args, opt)
        if value is not None:
            setattr(cfg.train, key, value)
    for opt, key in MODEL_OPTIONS.items():
        value = getattr(args, opt)
        if value is not None:
            setattr(cfg.model, key, value)
    for opt, flag in METHOD_FLAGS.items():
        value = getattr(args, opt)
        if value is None:
            continue
        if cfg.train.method not in flag.defaults:
            raise UsageError(f"--{flag.flag}: method {cfg.train.method} has no option "
                             f"{flag.field!r}; it is an option of {', '.join(flag.defaults)}")
        options = dict(cfg.train.options)
        options[cfg.train.method] = {**options.get(cfg.train.method, {}), flag.field: value}
        cfg.train.options = options
    if not cfg.data or not cfg.out:
        raise UsageError("--data FILE.h5 and --out RUN_DIR are required (or --resume RUN_DIR)")
    cfg.data = str(Path(cfg.data).resolve())
    return cfg


def _dist_errors() -> type:
    """torch.distributed's error of a failed collective (e.g. a peer that died or timed out)."""
    import torch.distributed as dist
    return dist.DistError


def _join_process_group(args: argparse.Namespace) -> None:
    """Under torchrun, join the process group (NCCL when the run's device is CUDA, else gloo).
    Raises UsageError on a bad torchrun environment or a failed rendezvous."""
    from factmas import distributed
    from factmas.distributed.world import env_world_size
    try:
        if env_world_size() <= 1:
            return
        device = args.device
        if device is None and args.resume:
            from factmas.run.rundir import read_run_config
            device = read_run_config(args.resume)[0].train.device
        elif device is None:
            device = config_from_args(args).train.device
        distributed.start_from_env(device)
    except (ValueError, RuntimeError) as e:
        if isinstance(e, ConfigError):
            raise
        raise UsageError(f"cannot join the torchrun process group: {e}") from e


def main(argv: list[str] | None = None) -> int:
    """Run ``factmas train``; returns the exit status (0 ok, 1 training error, 2 usage error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:          # argparse: --help (0) or a usage error (2)
        return int(e.code or 0)
    main_rank = os.environ.get("RANK", "0") == "0"        # torchrun's rank; logs from rank 0 only
    logging.basicConfig(level=logging.WARNING if args.quiet or not main_rank else logging.INFO,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    progress = not args.no_progress and main_rank
    signals = contextlib.ExitStack()
    signals.enter_context(sigterm_raises())       # SIGTERM → Terminated, handled like Ctrl-C
    from factmas import distributed
    finished = False                   # every rank that gets here waits for the others (stop)
    try:
        with logging_redirect_tqdm():
            _join_process_group(args)
            if args.resume:
                given = fixed_by_run(args)
                if given:
                    raise UsageError("--resume takes the settings of the run's config.json; only "
                                     "--device, --threads, --num-workers and --limit-tasks may be given "
                                     "with it, not "
                                     + ", ".join(given))
                state = resume(args.resume, limit_tasks=args.limit_tasks, device=args.device,
                               threads=args.threads, num_workers=args.num_workers,
                               progress=progress).state
                run_dir = args.resume
            else:
                cfg = config_from_args(args)
                command = "factmas train " + shlex.join(argv)
                state = train_config(cfg, command=command, overwrite=args.overwrite,
                                     limit_tasks=args.limit_tasks, progress=progress).state
                run_dir = cfg.out
        finished = True
    except (UsageError, RunDirError, ConfigError, DatasetError) as e:
        print(f"factmas train: error: {e}", file=sys.stderr)
        return 2
    except (TrainingError, CheckpointError) as e:
        print(f"factmas train: training error: {e}", file=sys.stderr)
        return 1
    except (distributed.DistributedError, _dist_errors()) as e:
        print(f"factmas train: process {distributed.rank()} of the run: another process failed or "
              f"stopped answering ({type(e).__name__}: {str(e)[:300]}); its own message says why",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        where = args.resume or args.out or "RUN_DIR"
        print(f"factmas train: {'terminated' if isinstance(e, Terminated) else 'interrupted'}; the "
              f"completed tasks are checkpointed; continue with factmas train --resume {where}",
              file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    finally:
        distributed.stop(clean=finished)
        signals.close()                            # the previous SIGTERM handler is back
    if not main_rank:
        return 0
    from factmas.run.checkpoint import task_names
    print(f"factmas train: tasks {task_names(state.completed_tasks)} done; run directory {run_dir}")
    return 0


if __name__ == "__main__":
    from factmas.errors import guarded_main
    sys.exit(guarded_main("factmas train", main))
