"""Continual-learning methods: a plain registry name → class (see ``base.Method`` for the hooks)."""
from __future__ import annotations

from typing import Any

from factmas.methods.base import Method, TaskContext
from factmas.methods.ewc import EWC
from factmas.methods.joint import Joint
from factmas.methods.lmas import LocalMAS
from factmas.methods.lwf import LwF
from factmas.methods.mas import MAS
from factmas.methods.quadratic import QuadraticAnchor
from factmas.methods.si import SI

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
