"""Continual-learning methods: a plain registry name → class (see ``base.Method`` for the hooks)."""
from __future__ import annotations

from typing import Any

from .base import Method, TaskContext
from .mas import MAS
from .quadratic import QuadraticAnchor

METHODS: dict[str, type[Method]] = {"finetune": Method, "mas": MAS}


def make_method(name: str, reg_lambda: float = 0.0, **opts: Any) -> Method:
    """The method ``name`` with λ = ``reg_lambda`` and options ``opts`` (e.g. omega_accumulate,
    omega_alpha, omega_data, omega_max_samples). Raises ValueError listing the valid names."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {sorted(METHODS)}")
    return METHODS[name](reg_lambda=reg_lambda, **opts)


__all__ = ["MAS", "METHODS", "Method", "QuadraticAnchor", "TaskContext", "make_method"]
