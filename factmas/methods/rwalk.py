"""Riemannian Walk, RWalk (Chaudhry, Dokania, Ajanthan & Torr, ECCV 2018) on the two-branch model.

RWalk protects a parameter by the sum of two importances, with one quadratic penalty (Eq. 9)::

    L(θ) = L_task(θ) + λ Σ_i (F_i + s_i) (θ_i − θ*_i)²,      θ* the parameters after the last task

- F, the Fisher diagonal kept as a moving average over tasks (Eq. 10, "efficient" update; the paper's
  Eq. 7 averages per step, FACIL per task): after task t, F ← α F + (1 − α) F_t, F starting at 0, F_t
  the diagonal empirical Fisher of task t, (1/N) Σ_k (∂ℓ_k/∂θ)² over its training pairs, exact per
  sample (``ewc_fisher``, as EWC here; ℓ_k the per-pair wildcard regression loss o_k · D(x_k, f_k):
  this model has no likelihood to sample labels from, FACIL samples the predicted class).
- s, the path-integral score of SI normalized by the Fisher-weighted distance the parameter moved
  (Sec. 4.2, "optimization-path based" importance): during task t every step adds
  w_i += −g_i Δθ_i (g the gradient of the task loss alone, Δθ the step; ``SI.before_step`` /
  ``after_step``), and at its end

      s_t,i = max(w_i / (F_i (θ_i − θ_i(start of task))² + ξ), 0),      s ← (s + s_t) / 2,

  with F already updated; w is reset. Averaging keeps s from growing rigid over tasks (p. 8).

Follows FACIL's implementation (mmasana/FACIL, src/approach/r_walk.py at commit 66e3e8e):
``post_train_process`` (the Fisher blend ``self.fisher[n] = self.alpha * self.fisher[n] + (1 -
self.alpha) * curr_fisher[n]``, the score ``curr_score[n] = self.w[n] / (self.fisher[n] *
((curr_params[n] - self.older_params[n]) ** 2) + self.damping)`` with ReLU, ``self.scores[n] =
(self.scores[n] + curr_score[n]) / 2``), ``train_epoch`` (``self.w[n] -= unreg_grads[n] * (p.detach()
- curr_feat_ext[n])``) and ``criterion`` (Eq. 9: ``(self.fisher[n] + self.scores[n]) * (p -
self.older_params[n]).pow(2)``), with its defaults α = 0.5 and damping ξ = 0.1. Not followed: FACIL's
batch-gradient Fisher (here exact per sample) and its α = −1 schedule.

State (checkpoint): Ω = F + s and θ* as every quadratic-anchor method ('omega.', 'anchor.'), and F
('fisher.<name>') and s ('score.<name>') apart, which the next task's updates need.

Distributed (torchrun): F_t is all-reduced as EWC's (``ewc_fisher``); w as SI's needs nothing.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch
from torch import nn

from factmas.methods.base import (MethodOptions, TaskContext, check_int_at_least, check_number,
                                  option)
from factmas.methods.ewc import as_pair_tuples, ewc_fisher
from factmas.methods.quadratic import PREFIXES
from factmas.methods.si import SI

log = logging.getLogger(__name__)

STATE = ("fisher", "score")


def rwalk_update(fisher: dict[str, torch.Tensor], score: dict[str, torch.Tensor],
                 task_fisher: dict[str, torch.Tensor], path: dict[str, torch.Tensor],
                 delta: dict[str, torch.Tensor], alpha: float, xi: float
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(F, s) after a task (module docstring; Chaudhry et al. 2018, Eq. 10 and Sec. 4.2, as FACIL).

    Args:
        fisher, score: name → F, s before the task (empty: zeros, the first task).
        task_fisher: name → F_t of the task.  path: name → w, Σ_steps −g Δθ over the task.
        delta: name → θ(end of task) − θ(start of task).  alpha: α ∈ [0, 1].  xi: ξ > 0.
        Every tensor of a name has the parameter's shape.
    Returns:
        (F ← α F + (1 − α) F_t,  s ← (s + max(w / (F Δ² + ξ), 0)) / 2), new tensors.
    Raises:
        ValueError: names of ``task_fisher``, ``path`` and ``delta`` differ, or α, ξ out of range.
    """
    check_number("alpha", alpha, 0.0, 1.0)
    check_number("xi", xi, 0.0, lo_open=True)
    if not set(task_fisher) == set(path) == set(delta):
        raise ValueError(f"RWalk: the task's Fisher, path integral and parameter change name different "
                         f"parameters, e.g. {sorted(set(task_fisher) ^ set(path) ^ set(delta))[:3]}")
    new_fisher, new_score = {}, {}
    for n, f_t in task_fisher.items():
        f_old = fisher.get(n)
        f = (1.0 - alpha) * f_t if f_old is None else alpha * f_old.to(f_t) + (1.0 - alpha) * f_t
        s_t = (path[n] / (f * delta[n].square() + xi)).clamp_min(0.0)
        s_old = score.get(n)
        new_fisher[n] = f
        new_score[n] = s_t / 2.0 if s_old is None else (s_old.to(s_t) + s_t) / 2.0
    return new_fisher, new_score


@dataclass(frozen=True)
class RWalkOptions(MethodOptions):
    """Options of RWalk.

    Attributes:
        fisher_alpha: α ∈ [0, 1], the weight of the earlier tasks' Fisher (F ← α F + (1 − α) F_t);
            flag ``--rwalk-fisher-alpha``.
        xi: ξ > 0, the damping of the score s_t = w / (F Δ² + ξ); ``--rwalk-xi``.
        max_samples: at most this many training pairs per task for F_t (None: all);
            ``--omega-max-samples``.
    Raises:
        ValueError: α outside [0, 1], ξ ≤ 0, ``max_samples`` < 1.
    """
    fisher_alpha: float = option(0.5, "rwalk-fisher-alpha", "RWalk: weight α ∈ [0, 1] of the "
                                 "earlier tasks' Fisher, F ← α F + (1 − α) F_t (Chaudhry et al. 2018)")
    xi: float = option(0.1, "rwalk-xi", "RWalk: damping ξ > 0 of the path score w / (F Δ² + ξ)")
    max_samples: Optional[int] = option(None, "omega-max-samples", "at most this many samples per "
                                        "task for Ω (MAS, ℓ-MAS: images and facts; EWC: pairs)")

    def __post_init__(self) -> None:
        check_number("fisher_alpha", self.fisher_alpha, 0.0, 1.0)
        check_number("xi", self.xi, 0.0, lo_open=True)
        check_int_at_least("max_samples", self.max_samples, 1, optional=True)


class RWalk(SI):
    """RWalk: Ω = F + s (module docstring); the path integral w is SI's (``before_step``,
    ``after_step``), F_t EWC's exact Fisher.

    Args:
        reg_lambda: λ ≥ 0.  options: ``RWalkOptions`` (or its fields as keywords).
    Raises:
        ValueError: an unknown option or one out of range (see ``RWalkOptions``), λ < 0.
    """
    name = "rwalk"
    title = "RWalk"
    # Ω = F + s: s is SI's score with F Δ² (≪ Δ²) in place of Δ², halved, so SI's grid
    paper_grid = (0.0, 1.0, 10.0, 100.0)
    Options: ClassVar[type[MethodOptions]] = RWalkOptions

    def __init__(self, reg_lambda: float = 1.0, options: RWalkOptions | None = None,
                 **values: Any) -> None:
        super().__init__(reg_lambda, options, **values)
        self.fisher: dict[str, torch.Tensor] = {}
        self.score: dict[str, torch.Tensor] = {}

    def on_task_end(self, model: nn.Module, ctx: TaskContext) -> None:
        """F, s ← ``rwalk_update``; Ω ← F + s; θ* ← θ; w reset.

        Raises:
            RuntimeError: called before ``on_task_start``.  ValueError: no training pairs.
        """
        if not self.path:
            raise RuntimeError("RWalk: on_task_end called before on_task_start")
        params = self._params(model)
        task_fisher = ewc_fisher(model, as_pair_tuples(ctx.pair_batches()),
                                 max_samples=self.options.max_samples)
        task_fisher = {n: t for n, t in task_fisher.items() if n in self.path}
        delta = {n: params[n].detach() - self.start[n] for n in self.path}
        self.fisher, self.score = rwalk_update(self.fisher, self.score, task_fisher, self.path, delta,
                                               float(self.options.fisher_alpha), self.xi)
        self.omega = {n: self.fisher[n] + self.score[n] for n in self.fisher}
        self.anchor = {n: params[n].detach().clone() for n in self.omega}
        self.path, self.start = {}, {}
        size = sum(t.numel() for t in self.omega.values())
        log.info("rwalk: task %d: mean F %.3g, mean s %.3g over %d parameters; θ* stored", ctx.task + 1,
                 sum(float(t.sum()) for t in self.fisher.values()) / max(size, 1),
                 sum(float(t.sum()) for t in self.score.values()) / max(size, 1), size)

    def extra_state(self) -> dict[str, torch.Tensor]:
        """{'fisher.<name>': F, 'score.<name>': s}."""
        out = {f"fisher.{n}": t for n, t in self.fisher.items()}
        out.update({f"score.{n}": t for n, t in self.score.items()})
        return out

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore ``extra_state()``. Raises ValueError on other keys, or F and s of different
        parameters than Ω."""
        parts: dict[str, dict[str, torch.Tensor]] = {p: {} for p in STATE}
        for key, t in state.items():
            prefix, _, name = key.partition(".")
            if prefix not in parts or not name:
                raise ValueError(f"RWalk state: unknown key {key!r}; expected "
                                 f"{', '.join(p + '.<name>' for p in PREFIXES + STATE)}")
            parts[prefix][name] = t
        if not set(parts["fisher"]) == set(parts["score"]) == set(self.omega):
            raise ValueError("RWalk state: F, s and Ω name different parameters")
        self.fisher, self.score = parts["fisher"], parts["score"]
