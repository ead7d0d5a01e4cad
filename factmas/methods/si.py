"""Synaptic Intelligence (Zenke, Poole & Ganguli, ICML 2017) on the two-branch model.

During a task every step adds to the path integral of each parameter (Eq. 4, discretized)

    ω_i += −g_i · Δθ_i,

g the gradient of the *task loss alone* at the step (read in ``before_step``: ``p.grad`` minus the
known gradient 2 λ Ω (θ − θ*) of SI's own penalty; the trainer adds nothing else for SI) and Δθ the
change the optimizer step made (measured in ``after_step``). At the end of the task (Eq. 5)

    Ω_i += max(ω_i / ((Δ_i)² + ξ), 0),    Δ_i = θ_i(end of task) − θ_i(start of task),

and ω is reset. Training adds λ Σ Ω (θ − θ*)² (``QuadraticAnchor``). ξ (``si_xi``) damps parameters
that hardly moved; the paper uses ξ = 1e-3 (split MNIST) and 0.1 (split CIFAR); the default here is
0.1, the paper's value for its convolutional network. Negative Ω (the net movement raised the loss,
possible with Adam's momentum) is set to 0 (a penalty needs Ω ≥ 0). With plain gradient descent and
small steps, Σ −g Δθ → L(θ_start) − L(θ_end) (tests/methods/test_methods_si.py).

Memory: three extra copies of the parameters during a task (ω, θ at the task start, θ before the step).

Distributed (torchrun): nothing to reduce. ``p.grad`` read in ``before_step`` is already the gradient of
the global batch that DistributedDataParallel all-reduced, and θ is the same on every rank, so every
rank accumulates the same ω.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from factmas.methods.base import MethodOptions, TaskContext, check_number, option
from factmas.methods.quadratic import AnchorOptions, QuadraticAnchor

log = logging.getLogger(__name__)


def si_importance(path: dict[str, torch.Tensor], delta: dict[str, torch.Tensor],
                  xi: float) -> dict[str, torch.Tensor]:
    """Ω = max(ω / (Δ² + ξ), 0) per parameter (Zenke et al. 2017, Eq. 5).

    Args:
        path: name → ω, the path integral Σ_steps −g Δθ over the task.
        delta: name → Δ = θ(end of task) − θ(start), same shapes.  xi: ξ > 0 (damping).
    Raises:
        ValueError: ξ ≤ 0 or different names/shapes.
    """
    if not xi > 0:
        raise ValueError(f"SI: xi must be > 0, got {xi}")
    if set(path) != set(delta) or any(path[n].shape != delta[n].shape for n in path):
        raise ValueError("SI: path integral and parameter change have different parameters/shapes")
    return {n: (w / (delta[n].square() + xi)).clamp_min(0.0) for n, w in path.items()}


@dataclass(frozen=True)
class SIOptions(AnchorOptions):
    """Options of SI (and ``AnchorOptions``'s).

    Attributes:
        xi: ξ > 0, the damping of Ω = ω / (Δ² + ξ); flag ``--si-xi`` (old key ``train.si_xi``).
    Raises:
        ValueError: ξ ≤ 0 (and see ``AnchorOptions``).
    """
    xi: float = option(0.1, "si-xi", "SI: damping ξ > 0 of Ω = ω / (Δ² + ξ) (Zenke et al. 2017)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("xi", self.xi, 0.0, lo_open=True)


class SI(QuadraticAnchor):
    """Synaptic Intelligence.

    Args:
        reg_lambda: λ (the paper's c).  options: ``SIOptions`` (or its fields as keywords).
    Raises:
        ValueError: an unknown option or one out of range (see ``SIOptions``), λ < 0.
    """
    name = "si"
    title = "SI"
    paper_grid = (0.0, 1.0, 10.0, 100.0)
    Options: ClassVar[type[MethodOptions]] = SIOptions

    def __init__(self, reg_lambda: float = 1.0, options: SIOptions | None = None,
                 **values: Any) -> None:
        super().__init__(reg_lambda, options, **values)
        self.xi = float(self.options.xi)
        self.path: dict[str, torch.Tensor] = {}       # ω of the current task
        self.start: dict[str, torch.Tensor] = {}      # θ at the start of the task
        self._before: dict[str, torch.Tensor] = {}    # θ before the current step
        self._grad: dict[str, torch.Tensor] = {}      # task-loss gradient of the current step

    @staticmethod
    def _params(model: nn.Module) -> dict[str, nn.Parameter]:
        return {n: p for n, p in model.named_parameters() if p.requires_grad}

    def on_task_start(self, model: nn.Module, ctx: TaskContext) -> None:
        """ω ← 0; remember θ(start)."""
        params = self._params(model)
        self.path = {n: torch.zeros_like(p, memory_format=torch.contiguous_format)
                     for n, p in params.items()}
        self.start = {n: p.detach().clone() for n, p in params.items()}

    def before_step(self, model: nn.Module) -> None:
        """Keep g = ∂L_task/∂θ (``p.grad`` minus the penalty's gradient) and θ before the step."""
        self._grad, self._before = {}, {}
        for n, p in self._params(model).items():
            if p.grad is None:
                continue
            g = p.grad.detach().clone()
            if n in self.omega and self.reg_lambda != 0.0:
                omega = self.omega[n].to(p.device, p.dtype)
                g.sub_(2.0 * self.reg_lambda * omega * (p.detach() - self.anchor[n].to(p.device, p.dtype)))
            self._grad[n] = g
            self._before[n] = p.detach().clone()

    def after_step(self, model: nn.Module) -> None:
        """ω += −g · Δθ for the step just taken."""
        if not self.path:
            raise RuntimeError("SI: after_step called before on_task_start")
        for n, p in self._params(model).items():
            if n in self._grad:
                self.path[n].sub_(self._grad[n] * (p.detach() - self._before[n]))
        self._grad, self._before = {}, {}

    def estimate_importance(self, model: nn.Module, ctx: TaskContext) -> dict[str, torch.Tensor]:
        """Ω_t = max(ω / (Δ² + ξ), 0) of the task just learned; resets ω."""
        if not self.path:
            raise RuntimeError("SI: on_task_end called before on_task_start")
        params = self._params(model)
        delta = {n: params[n].detach() - self.start[n] for n in self.path}
        negative = sum(int((w < 0).sum()) for w in self.path.values())
        size = sum(w.numel() for w in self.path.values())
        log.info("SI: task %d: path integral Σω = %.4g; %d of %d parameters with ω < 0 (Ω set to 0)",
                 ctx.task + 1, sum(float(w.sum()) for w in self.path.values()), negative, size)
        omega = si_importance(self.path, delta, self.xi)
        self.path, self.start = {}, {}
        return omega
