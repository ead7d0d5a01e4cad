"""Quadratic anchoring to the parameters after earlier tasks: the base of MAS, EWC, SI and L-MAS.

After each task t the method estimates a per-parameter importance Ω_t (the subclass's
``estimate_importance``), accumulates it into Ω and stores the anchor θ* = θ. Later tasks train with
(MAS, Aljundi et al., ECCV 2018, Eq. 3)::

    L(θ) = L_task(θ) + λ Σ_ij Ω_ij (θ_ij − θ*_ij)²,      ∂/∂θ_ij: 2 λ Ω_ij (θ_ij − θ*_ij)

State: Ω (``omega``) and θ* (``anchor``), dicts keyed by parameter name — two copies of the
parameters (the paper's Fig. 4). ``state_dict`` keys: 'omega.<name>', 'anchor.<name>'.

A subclass implements only ``estimate_importance(model, ctx) -> {name: Ω_t}``; one that keeps more
state (e.g. SI's path integral, using ``before_step``/``after_step``) adds it through ``extra_state``
and ``load_extra_state``.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

import torch
from torch import nn

from factmas.methods.base import (Method, MethodOptions, TaskContext, check_choice, check_number,
                                  option)

log = logging.getLogger(__name__)

PREFIXES = ("omega", "anchor")
ACCUMULATE = ("sum", "alpha")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode; restore each one's own mode afterwards."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes.items():
            m.training = training


def accumulate_omega(old: dict[str, torch.Tensor] | None, new: dict[str, torch.Tensor],
                     mode: str = "sum", alpha: float = 0.5) -> dict[str, torch.Tensor]:
    """Ω after a task from the Ω of the earlier tasks and the new task's importance.

    ``mode="sum"``: Ω ← Ω_old + Ω_new (the MAS authors' code accumulates by summing).
    ``mode="alpha"``: Ω ← α Ω_old + (1 − α) Ω_new (a moving average; α is the weight of the past).
    With no earlier Ω (``old`` None or empty) the result is a copy of ``new`` in both modes.

    Raises:
        ValueError: unknown mode, α outside [0, 1], or ``old`` and ``new`` with different keys or
            shapes.
    """
    if mode not in ACCUMULATE:
        raise ValueError(f"omega_accumulate: unknown mode {mode!r}; valid: {list(ACCUMULATE)}")
    if mode == "alpha" and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"omega_alpha must be in [0, 1], got {alpha}")
    if not old:
        return {n: t.detach().clone() for n, t in new.items()}
    if set(old) != set(new):
        diff = sorted(set(old) ^ set(new))
        raise ValueError(f"accumulate_omega: Ω of earlier tasks and of the new task have different "
                         f"parameters, e.g. {diff[:3]}")
    out = {}
    for n, t in new.items():
        if old[n].shape != t.shape:
            raise ValueError(f"accumulate_omega: {n} has shape {tuple(old[n].shape)} before and "
                             f"{tuple(t.shape)} now")
        o = old[n].to(t.device, t.dtype)
        out[n] = o + t if mode == "sum" else alpha * o + (1.0 - alpha) * t
    return out


@dataclass(frozen=True)
class AnchorOptions(MethodOptions):
    """Options of every quadratic-anchor method.

    Attributes:
        accumulate: "sum" (Ω ← Ω + Ω_t, the MAS code) or "alpha" (Ω ← α Ω + (1 − α) Ω_t); flag
            ``--omega-accumulate`` (the old flat key ``train.omega_accumulate``).
        alpha: α ∈ [0, 1], the weight of the earlier tasks' Ω when ``accumulate == "alpha"``;
            ``--omega-alpha``.
    Raises:
        ValueError: unknown accumulation mode, α outside [0, 1].
    """
    accumulate: str = option("sum", "omega-accumulate", "how Ω of the tasks adds up: sum (the MAS "
                             "code) or alpha (α Ω_old + (1 − α) Ω_new)", ACCUMULATE)
    alpha: float = option(0.5, "omega-alpha", "α ∈ [0, 1], the weight of the old Ω when "
                          "--omega-accumulate alpha")

    def __post_init__(self) -> None:
        check_choice("accumulate", self.accumulate, ACCUMULATE)
        check_number("alpha", self.alpha, 0.0, 1.0)


class QuadraticAnchor(Method):
    """λ Σ Ω (θ − θ*)² with Ω accumulated over tasks; abstract (``estimate_importance``).

    Args:
        reg_lambda: λ ≥ 0.  options: ``AnchorOptions`` (or a subclass's), or their fields as keywords.
    Raises:
        ValueError: λ < 0, an unknown option or one out of range (see ``AnchorOptions``).
    """
    name = "quadratic"
    Options: ClassVar[type[MethodOptions]] = AnchorOptions

    def __init__(self, reg_lambda: float = 1.0, options: AnchorOptions | None = None,
                 **values: Any) -> None:
        super().__init__(reg_lambda, options, **values)
        if self.reg_lambda < 0:
            raise ValueError(f"reg_lambda must be >= 0, got {reg_lambda}")
        self.omega: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}

    def estimate_importance(self, model: nn.Module, ctx: TaskContext) -> dict[str, torch.Tensor]:
        """Importance Ω_t ≥ 0 of the task just learned: name → float tensor shaped like the
        parameter, for the trainable parameters to protect (others stay free)."""
        raise NotImplementedError(f"{type(self).__name__} must implement estimate_importance")

    def on_task_end(self, model: nn.Module, ctx: TaskContext) -> None:
        """Ω ← accumulate(Ω, estimate_importance(model, ctx)); θ* ← θ (detached copies).

        Raises:
            ValueError: the estimate names a parameter the model lacks or has a wrong shape.
        """
        params = dict(model.named_parameters())
        new = self.estimate_importance(model, ctx)
        for n, t in new.items():
            if n not in params or params[n].shape != t.shape:
                raise ValueError(f"{type(self).__name__}: importance for {n!r} "
                                 f"{tuple(t.shape)} matches no parameter of the model")
        self.omega = accumulate_omega(self.omega, {n: t.detach() for n, t in new.items()},
                                      self.options.accumulate, float(self.options.alpha))
        self.anchor = {n: params[n].detach().clone() for n in self.omega}
        total = sum(float(t.sum()) for t in self.omega.values())
        size = sum(t.numel() for t in self.omega.values())
        log.info("%s: task %d: Ω updated (%s), mean Ω %.3g over %d parameters; θ* stored",
                 self.name, ctx.task + 1, self.options.accumulate, total / max(size, 1), size)

    def penalty(self, model: nn.Module) -> torch.Tensor | float:
        """λ Σ Ω (θ − θ*)² as a scalar tensor with gradient (0.0 before the first task or λ = 0).

        Raises:
            ValueError: Ω names a parameter the model lacks.
        """
        if not self.omega or self.reg_lambda == 0.0:
            return 0.0
        params = dict(model.named_parameters())
        total = None
        for n, omega in self.omega.items():
            if n not in params:
                raise ValueError(f"{type(self).__name__}: Ω has parameter {n!r}, the model has not")
            p = params[n]
            if omega.device != p.device or omega.dtype != p.dtype:      # e.g. after loading
                omega = self.omega[n] = omega.to(p.device, p.dtype)
                self.anchor[n] = self.anchor[n].to(p.device, p.dtype)
            term = (omega * (p - self.anchor[n]).square()).sum()
            total = term if total is None else total + term
        return self.reg_lambda * total

    def state_dict(self) -> dict[str, torch.Tensor]:
        """{'omega.<name>': Ω, 'anchor.<name>': θ*} plus the subclass's ``extra_state()``."""
        out = {f"omega.{n}": t for n, t in self.omega.items()}
        out.update({f"anchor.{n}": t for n, t in self.anchor.items()})
        out.update(self.extra_state())
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore ``state_dict()``'s output. Raises ValueError on Ω and θ* of different parameters
        or shapes; keys with other prefixes go to ``load_extra_state``."""
        parts: dict[str, dict[str, torch.Tensor]] = {p: {} for p in PREFIXES}
        rest = {}
        for key, t in state.items():
            prefix, _, name = key.partition(".")
            if prefix in parts and name:
                parts[prefix][name] = t
            else:
                rest[key] = t
        omega, anchor = parts["omega"], parts["anchor"]
        if set(omega) != set(anchor) or any(omega[n].shape != anchor[n].shape for n in omega):
            diff = sorted(set(omega) ^ set(anchor)) or [n for n in omega
                                                        if omega[n].shape != anchor[n].shape]
            raise ValueError(f"{type(self).__name__} state: Ω and θ* disagree on {diff[:3]}")
        self.omega, self.anchor = dict(omega), dict(anchor)
        self.load_extra_state(rest)

    def extra_state(self) -> dict[str, torch.Tensor]:
        """More state of a subclass (keys must not start with 'omega.' or 'anchor.'); none here."""
        return {}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore ``extra_state()``. Raises ValueError on keys this method does not know."""
        if state:
            raise ValueError(f"{type(self).__name__} state: unknown keys {sorted(state)[:5]}; "
                             f"expected 'omega.<name>' and 'anchor.<name>'")
