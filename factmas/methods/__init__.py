"""Continual-learning methods: a plain registry name → class (see ``base.Method`` for the hooks).

Each file owns one method: its algorithm, its Ω estimator and its typed options (``<Name>Options``,
a frozen dataclass; unknown options are refused). ``options_for(name, train_config)`` reads a
method's options from the ``TrainConfig`` keys it owns (``Options.CONFIG_KEYS``).

May import: ``factmas.persample``, ``factmas.space``, ``factmas.space.loss``, ``factmas.config``,
``factmas.data`` (the experiences joint training merges), ``factmas.progress``, ``factmas.distributed``
(the all-reduce of Ω sums). Never ``factmas.trainer`` or ``factmas.cli``.
"""
from __future__ import annotations

from typing import Any

from factmas.methods.base import Method, MethodOptions, TaskContext, options_from_config
from factmas.methods.ewc import EWC, EWCOptions
from factmas.methods.joint import Joint
from factmas.methods.lmas import LocalMAS
from factmas.methods.lwf import LwF
from factmas.methods.mas import MAS, MASOptions
from factmas.methods.quadratic import AnchorOptions, QuadraticAnchor
from factmas.methods.si import SI, SIOptions

METHODS: dict[str, type[Method]] = {"finetune": Method, "mas": MAS, "joint": Joint, "ewc": EWC,
                                    "si": SI, "lwf": LwF, "l-mas": LocalMAS}


def method_class(name: str) -> type[Method]:
    """``METHODS[name]``. Raises ValueError listing the valid names."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {sorted(METHODS)}")
    return METHODS[name]


def make_method(name: str, reg_lambda: float = 0.0, options: MethodOptions | None = None,
                **values: Any) -> Method:
    """The method ``name`` with λ = ``reg_lambda`` and its options: an instance of its ``Options``
    or their fields as keywords (``make_method("ewc", 1.0, gamma=0.9)``).

    Raises:
        ValueError: an unknown method (listing the valid names), or an option the method does not
            have or out of range (named).
    """
    return method_class(name)(reg_lambda, options, **values)


def options_for(name: str, train_config: Any) -> MethodOptions:
    """The options of method ``name`` read from ``train_config`` (a ``TrainConfig``): each field from
    the config key it owns (``Options.CONFIG_KEYS``), e.g. EWC's ``gamma`` from ``train.ewc_gamma``."""
    return options_from_config(method_class(name).Options, train_config)


def foreign_options(name: str, train_config: Any, defaults: Any) -> list[str]:
    """The ``TrainConfig`` keys set away from their default (``defaults``: a default ``TrainConfig``)
    that belong to other methods than ``name`` and that ``name`` therefore ignores."""
    own = set(method_class(name).Options.CONFIG_KEYS.values())
    every = {k for cls in METHODS.values() for k in cls.Options.CONFIG_KEYS.values()}
    return sorted(k for k in every - own if getattr(train_config, k) != getattr(defaults, k))


__all__ = ["AnchorOptions", "EWC", "EWCOptions", "Joint", "LocalMAS", "LwF", "MAS", "MASOptions",
           "METHODS", "Method", "MethodOptions", "QuadraticAnchor", "SI", "SIOptions", "TaskContext",
           "foreign_options", "make_method", "method_class", "options_for"]
