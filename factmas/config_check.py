"""Range checks of a ``RunConfig``: every value, before any work starts.

``factmas.config`` checks keys and types when a configuration is read; this module checks that each
value is usable (a positive epoch count, a finite non-negative λ, a known method, ...), so a
bad value is refused up front with a ``ConfigError`` naming the dotted key (``train.reg_lambda``)
and, for command-line options, the option (``--reg-lambda``), instead of failing after training
started (a non-finite loss one task later, a method error at the end of task 1). A method's options
(``train.options.<method>``) are checked by the method's own ``Options`` (``factmas.methods``), the one
place of their ranges.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from factmas.config import ConfigError, RunConfig

# dotted key -> the command-line option that sets it (named in messages)
OPTIONS = {"train.reg_lambda": "--reg-lambda", "train.lr": "--lr", "train.epochs": "--epochs",
           "train.batch_size": "--batch-size", "train.seed": "--seed", "train.threads": "--threads",
           "train.num_workers": "--num-workers",
           "train.device": "--device", "train.split": "--split",
           "train.method": "--method", "train.optimizer": "--optimizer",
           "train.tensorboard": "--tensorboard"}


def _name(key: str) -> str:
    return f"{key} ({OPTIONS[key]})" if key in OPTIONS else key


def _fail(key: str, value: Any, want: str) -> ConfigError:
    return ConfigError(f"{_name(key)}: expected {want}, got {value!r}")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int_at_least(lo: int, optional: bool = False) -> Callable[[str, Any], None]:
    def check(key: str, v: Any) -> None:
        if v is None and optional:
            return
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise _fail(key, v, f"an integer >= {lo}" + (" or null" if optional else ""))
    return check


def _float(lo: float, lo_open: bool = False, hi: float | None = None) -> Callable[[str, Any], None]:
    def check(key: str, v: Any) -> None:
        ok = _finite(v) and (v > lo if lo_open else v >= lo) and (hi is None or v <= hi)
        if not ok:
            rng = f"{'>' if lo_open else '>='} {lo:g}" + (f" and <= {hi:g}" if hi is not None else "")
            raise _fail(key, v, f"a finite number {rng}")
    return check


def _choice(options: Callable[[], list[str]]) -> Callable[[str, Any], None]:
    def check(key: str, v: Any) -> None:
        valid = options()
        if v not in valid:
            raise _fail(key, v, f"one of {valid}")
    return check


def _backbones() -> list[str]:
    from factmas.model import BACKBONES
    return sorted(BACKBONES)


def _methods() -> list[str]:
    from factmas.methods import METHODS
    return sorted(METHODS)


def _tensorboard(key: str, v: Any) -> None:
    """A bool; true needs the tensorboard package (an optional dependency, extra ``tb``)."""
    import importlib.util
    if not isinstance(v, bool):
        raise _fail(key, v, "true or false")
    if v and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(f"{_name(key)}: TensorBoard logging needs the tensorboard package, which is "
                          "not installed; install it with pip install 'factmas[tb]' (or pip install "
                          "tensorboard), or leave TensorBoard off")


def _nonempty_str(key: str, v: Any) -> None:
    if not isinstance(v, str) or not v:
        raise _fail(key, v, "a non-empty name")


POSITIVE = _int_at_least(1)
RULES: dict[str, Callable[[str, Any], None]] = {
    "model.backbone": _choice(_backbones),
    "model.embed_dim": POSITIVE, "model.width": POSITIVE, "model.word_dim": POSITIVE,
    "model.fact_hidden": POSITIVE, "model.norm_groups": POSITIVE,
    "model.freeze_stages": _int_at_least(0, optional=True),
    "model.stem_engine": _choice(lambda: ["auto", "torch"]),
    "model.fact_targets": _choice(lambda: ["learned", "word2vec"]),
    "loss.kind": _choice(lambda: ["contrastive", "sherlock"]),
    "loss.regression_weight": _float(0), "loss.contrastive_weight": _float(0),
    "loss.fact_softmax_weight": _float(0), "loss.sigmoid_weight": _float(0),
    "loss.sigmoid_margin": _float(0, hi=4), "loss.image_softmax_weight": _float(0),
    "loss.temperature": _float(0, lo_open=True),
    "train.split": _nonempty_str, "train.method": _choice(_methods),
    "train.reg_lambda": _float(0), "train.epochs": POSITIVE, "train.batch_size": POSITIVE,
    "train.lr": _float(0, lo_open=True), "train.weight_decay": _float(0),
    "train.optimizer": _choice(lambda: ["adam", "sgd"]),
    "train.lr_schedule": _choice(lambda: ["constant", "cosine"]), "train.momentum": _float(0, hi=1),
    "train.seed": _int_at_least(0), "train.device": _choice(lambda: ["auto", "cpu", "cuda"]),
    "train.num_workers": _int_at_least(0),
    "train.aux_batch_size": POSITIVE, "train.threads": _int_at_least(1, optional=True),
    "train.augment_shift": _int_at_least(0), "train.swa_start_epoch": _int_at_least(1, optional=True),
    "train.tensorboard": _tensorboard,
    "eval.ap_k": POSITIVE, "eval.image_pool": _choice(lambda: ["all", "task"]),
    "eval.search_batch": POSITIVE, "eval.embed_batch": POSITIVE,
    "eval.image_split": _choice(lambda: ["test", "val"]),
    "eval.calibration_k": POSITIVE, "eval.calibration_precision": _float(0, lo_open=True, hi=1),
}


def validate_config(cfg: RunConfig) -> None:
    """Check every value of ``cfg`` that has a rule in ``RULES``.

    Raises:
        ConfigError: the first bad value, naming its dotted key (and command-line option) and the
            values allowed.
    """
    if cfg.loss.regression_weight == 0 and cfg.loss.contrastive_weight == 0:
        raise ConfigError("loss.regression_weight and loss.contrastive_weight are both 0: nothing "
                          "to train")
    for key, rule in RULES.items():
        section, name = key.split(".")
        rule(key, getattr(getattr(cfg, section), name))
    if cfg.loss.kind == "sherlock" and cfg.model.fact_targets != "word2vec":
        raise ConfigError("loss.kind = 'sherlock' regresses onto fixed fact targets: it needs "
                          "model.fact_targets = 'word2vec' (with learned targets both branches would "
                          "collapse onto one point)")
    if cfg.model.fact_targets == "word2vec" and not cfg.model.word_vectors:
        raise ConfigError("model.fact_targets = 'word2vec' needs model.word_vectors, the file written "
                          "by python -m data_prep.word2vec --data DATA.h5 --out VECTORS.npz")
    from factmas.methods import check_options     # the methods' own checks (loads torch)
    check_options(cfg.train)


def check_limit_tasks(limit: Any) -> None:
    """``--limit-tasks``: None or an integer >= 1. Raises ConfigError naming the option."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"--limit-tasks: expected an integer >= 1, got {limit!r}")
