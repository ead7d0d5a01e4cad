"""The command line of ``factmas train`` (options, defaults and choices); ``factmas.cli.train`` runs it.

The method choices and the flags of the methods' options (``--omega-data``, ``--ewc-gamma``, ...,
with their help and defaults) are derived from the registry ``factmas.methods.METHODS`` and the
fields of each method's ``Options``: a new method or option needs no line here. Reading the
registry loads torch: ``factmas train --help`` took 4.0 s against 0.14 s torch-free before (Xeon, 2
cores, load 6.5; tests/cli/test_cli_help.py keeps the other subcommands torch-free).
"""
from __future__ import annotations

import argparse

from factmas.config import BACKBONES, ModelConfig, TrainConfig, freeze_stages_help
from factmas.methods import METHODS, OptionFlag, option_flags

T, M = TrainConfig(), ModelConfig()
METHOD_NAMES = tuple(METHODS)

# command-line option -> field of RunConfig.train
TRAIN_OPTIONS = {"split": "split", "method": "method", "reg_lambda": "reg_lambda", "epochs": "epochs",
                 "batch_size": "batch_size", "lr": "lr", "seed": "seed", "device": "device",
                 "threads": "threads", "optimizer": "optimizer", "tensorboard": "tensorboard",
                 "num_workers": "num_workers"}
# command-line option -> field of RunConfig.model
MODEL_OPTIONS = {"backbone": "backbone", "freeze_stages": "freeze_stages"}
# command-line option (argparse dest) -> the method option it sets (train.options.<method>.<field>)
METHOD_FLAGS: dict[str, OptionFlag] = {f.flag.replace("-", "_"): f for f in option_flags()}


def flag_help(f: OptionFlag) -> str:
    """``f.help`` with the methods that read the option and their defaults."""
    values = set(map(repr, f.defaults.values()))
    if len(values) == 1:
        default = f"default {_shown(next(iter(f.defaults.values())))}"
    else:
        default = "defaults " + ", ".join(f"{m} {_shown(v)}" for m, v in f.defaults.items())
    return f"{f.help} ({', '.join(f.defaults)}; {default})"


def _shown(v: object) -> str:
    return "none" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


# options --resume accepts: they choose where and how fast the run continues, not what it computes;
# every other option given with --resume is refused (``fixed_by_run``)
RESUME_FREE = ("resume", "device", "threads", "num_workers", "limit_tasks", "no_progress", "quiet")


def fixed_by_run(args: argparse.Namespace) -> list[str]:
    """The options given beside ``--resume`` that the run's config.json fixes, as "--name" (every
    option of ``build_parser`` outside ``RESUME_FREE`` that is not at its unset default)."""
    return [f"--{k.replace('_', '-')}" for k, v in vars(args).items()
            if k not in RESUME_FREE and v is not None and v is not False]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="factmas train",
        description="Train the tasks of a fact split in order (continual learning) and evaluate after "
                    "each task; or continue a killed run with --resume RUN_DIR.")
    p.add_argument("--data", help="HDF5 dataset (data_prep/README.md)")
    p.add_argument("--split", help=f"task split in the dataset (default {T.split})")
    p.add_argument("--method", choices=METHOD_NAMES, metavar="METHOD",
                   help=f"continual-learning method: {', '.join(METHOD_NAMES)} (default {T.method})")
    p.add_argument("--reg-lambda", type=float, help=f"regularization strength λ (default {T.reg_lambda:g}, "
                                                    "chosen on val images for MAS; LwF's val choice is 30)")
    p.add_argument("--out", help="run directory to create")
    p.add_argument("--epochs", type=int, help=f"epochs per task (default {T.epochs})")
    p.add_argument("--batch-size", type=int, help=f"image–fact pairs per step (default {T.batch_size})")
    p.add_argument("--lr", type=float, help=f"learning rate (default {T.lr:g}, chosen for Adam)")
    p.add_argument("--optimizer", choices=["adam", "sgd"],
                   help=f"adam (default) or sgd with momentum {T.momentum:g} (the official MAS and "
                        "LFL code; give it its own --lr)")
    p.add_argument("--seed", type=int, help=f"seed of model init and shuffling (default {T.seed})")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: auto (cuda if present)")
    methods = p.add_argument_group("options of the methods (train.options.<method>; each applies "
                                   "to the methods named in its help)")
    for f in METHOD_FLAGS.values():
        methods.add_argument(f"--{f.flag}", type=f.type, choices=f.choices, help=flag_help(f))
    p.add_argument("--threads", type=int, help="torch CPU threads (default: all cores; on a CPU "
                                               "shared with other jobs, 1 can be much faster)")
    p.add_argument("--num-workers", type=int,
                   help=f"DataLoader worker processes that read the image batches (train.num_workers, "
                        f"default {T.num_workers}: read in the training process); the same batches "
                        "in the same order either way")
    p.add_argument("--backbone", choices=list(BACKBONES), metavar="BACKBONE",
                   help=f"image backbone (default {M.backbone}): "
                        + "; ".join(f"{b.name}: {b.help}, {b.input_size} px" for b in BACKBONES.values()))
    p.add_argument("--freeze-stages", type=int, help="stages kept frozen and read from the feature "
                                                     "cache (default and range per backbone: "
                                                     f"{freeze_stages_help()})")
    p.add_argument("--tensorboard", action="store_true", default=None,
                   help="write TensorBoard events to RUN_DIR/tensorboard (loss parts, images/s, metrics "
                        "after every task, the R matrix; needs pip install 'factmas[tb]')")
    p.add_argument("--config", help="a RunConfig JSON file; command-line options override it")
    p.add_argument("--limit-tasks", type=int, metavar="N", help="stop after the first N tasks")
    p.add_argument("--overwrite", action="store_true", help="delete an earlier run in --out first")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress (a bar on a terminal; in a log a line with rate and time left every 30 s)")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    return p
