"""Continual-learning methods: a plain registry name → class (see ``base.Method`` for the hooks)."""
from __future__ import annotations

from typing import Any

from .base import Method, TaskContext
from .ewc import EWC
from .joint import Joint
from .lmas import LocalMAS
from .lwf import LwF
from .mas import MAS
from .quadratic import QuadraticAnchor
from .si import SI

METHODS: dict[str, type[Method]] = {"finetune": Method, "mas": MAS, "joint": Joint, "ewc": EWC,
                                    "si": SI, "lwf": LwF, "l-mas": LocalMAS}


def make_method(name: str, reg_lambda: float = 0.0, **opts: Any) -> Method:
    """The method ``name`` with λ = ``reg_lambda`` and options ``opts`` (e.g. omega_accumulate,
    omega_alpha, omega_data, omega_max_samples). Raises ValueError listing the valid names."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {sorted(METHODS)}")
    return METHODS[name](reg_lambda=reg_lambda, **opts)


__all__ = ["EWC", "Joint", "LocalMAS", "LwF", "MAS", "METHODS", "Method", "QuadraticAnchor", "SI",
           "TaskContext", "make_method"]
