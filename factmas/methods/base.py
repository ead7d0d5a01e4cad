"""The interface between the continual trainer and a continual-learning method.

The trainer (``factmas.trainer``) calls, for each task t in order::

    method.on_task_start(model, ctx)
    for each step:  loss = task_loss + method.penalty(model) + method.extra_loss(model, batch, out)
                    loss.backward(); method.before_step(model); optimizer.step(); method.after_step(model)
    method.on_task_end(model, ctx)          # e.g. MAS: Ω += importance on task t, θ* = θ
    save checkpoint with method.state_dict()

A method's state (Ω, θ*, ...) is a flat dict of tensors keyed by parameter name so that it is saved
in checkpoints and loaded with ``torch.load(..., weights_only=True)``.

Options: each method class names its own typed options, a frozen dataclass (``Method.Options``;
``MethodOptions`` here: none). The dataclass is the one place of the options' defaults, their range
checks (``__post_init__``, raising ``ValueError`` through ``bad_option``) and, in each field's
metadata (``option``), the command-line flag and help that ``factmas train`` derives from it. The
configuration holds them as ``train.options.<method>`` (``factmas.config.TrainConfig.options``).
``Method(reg_lambda, options)`` takes an instance, or keyword values of its fields
(``EWC(1.0, gamma=0.5)``); a key the method does not have is a ``ValueError`` naming it.

Class attributes read by the paper table (``factmas.experiments.paper_table``): ``title`` (its row),
``paper_grid`` (the λ values its search tries, λ = 0 and values a decade apart; None: λ is not used)
and ``upper_bound`` (the row goes last, after the ablations).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Optional

import torch
from torch import nn

from factmas.config import ConfigError, from_dict


@dataclass
class TaskContext:
    """What a method may look at when a task starts or ends.

    Attributes:
        task: index of the task (0-based).  device: where the model lives.
        image_batches: callable(which: str) -> iterator of float [B, 3, H, W] preprocessed images of
            this task's images in image split ``which`` ("train", "val", "test"), unshuffled.
        fact_batches: callable() -> iterator of (tokens int64 [B, 3, L], order int64 [B]) for the
            facts of this task.
        pair_batches: callable() -> iterator of training batches (the trainer's batch dict: keys
            "images" float [B, 3, H, W], "tokens" int64 [B, 3, L], "order" int64 [B],
            "positive" bool [B, B]).
    """
    task: int
    device: torch.device
    image_batches: Callable[[str], Iterator[torch.Tensor]]
    fact_batches: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]
    pair_batches: Callable[[], Iterator[dict]]


def option(default: Any, flag: str, help: str, choices: tuple | None = None) -> Any:
    """A field of a method's ``Options`` with its command-line ``flag`` (without "--"; the old flat
    config key with "-" for "_", e.g. "ewc-gamma") and ``help`` (``factmas train --help`` appends the
    default); ``choices``: the allowed values (the flag's argparse choices)."""
    return dataclasses.field(default=default, metadata={"flag": flag, "help": help, "choices": choices})


def bad_option(name: str, value: Any, want: str) -> ValueError:
    """The error of option ``name`` out of range: "name: expected WANT, got VALUE"."""
    return ValueError(f"{name}: expected {want}, got {value!r}")


def check_int_at_least(name: str, value: Any, lo: int, optional: bool = False) -> None:
    """Raise ``bad_option`` unless ``value`` is an integer >= ``lo`` (or None when ``optional``)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise bad_option(name, value, f"an integer >= {lo}" + (" or null" if optional else ""))


def check_number(name: str, value: Any, lo: float, hi: float | None = None,
                 lo_open: bool = False) -> None:
    """Raise ``bad_option`` unless ``value`` is a finite number in [lo, hi] (lo excluded when
    ``lo_open``; no upper bound when ``hi`` is None)."""
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (value > lo if lo_open else value >= lo) and (hi is None or value <= hi))
    if not ok:
        rng = f"{'>' if lo_open else '>='} {lo:g}" + (f" and <= {hi:g}" if hi is not None else "")
        raise bad_option(name, value, f"a finite number {rng}")


def check_choice(name: str, value: Any, choices: tuple) -> None:
    """Raise ``bad_option`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise bad_option(name, value, f"one of {list(choices)}")


@dataclass(frozen=True)
class MethodOptions:
    """A method's typed options: none here (finetune, joint, LwF). Subclasses add fields made by
    ``option`` (default, flag, help) and check their ranges in ``__post_init__`` (``bad_option``:
    ValueError)."""


def option_fields(cls: type[MethodOptions]) -> list[dataclasses.Field]:
    """The fields of an ``Options`` class, in order."""
    return list(dataclasses.fields(cls))


def make_options(cls: type[MethodOptions], values: dict[str, Any], method: str) -> MethodOptions:
    """``cls(**values)``, refusing a key ``cls`` lacks.

    Raises:
        ValueError: an unknown key (the message names it, the method and the method's options), or a
            value out of range (``cls.__post_init__``).
    """
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"method {method!r}: unknown option {unknown[0]!r}; its options: "
                         f"{names if names else 'none'}")
    return cls(**values)


def options_from_dict(cls: type[MethodOptions], values: Any, where: str) -> MethodOptions:
    """The options ``cls`` from a config section (``train.options.<method>``, a dict of field → value;
    fields left out take their defaults), types checked as every config value is
    (``factmas.config.from_dict``).

    Raises:
        ConfigError: not a dict, an unknown key, a wrong type, or a value out of range; the message
            names the dotted key (``where.<field>``) and the field's flag.
    """
    try:
        return from_dict(cls, values, where)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:      # __post_init__: "name: expected ..., got ..."
        name, _, rest = str(e).partition(": ")
        flags = {f.name: f.metadata.get("flag") for f in dataclasses.fields(cls)}
        if name in flags and rest:
            flag = f" (--{flags[name]})" if flags[name] else ""
            raise ConfigError(f"{where}.{name}{flag}: {rest}") from None
        raise ConfigError(f"{where}: {e}") from None


class Method:
    """Finetune: the base method, which does nothing beyond the task loss.

    Subclasses override the hooks they need; every hook has a no-op default.

    Args:
        reg_lambda: λ (its meaning is the method's; unused by finetune and joint).
        options: an instance of the class's ``Options`` (None: built from ``values``, the defaults
            for the fields not given).
    Raises:
        ValueError: an option the method does not have, or an option out of range (named).
    """
    name = "finetune"
    title = "Finetune"
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    paper_grid: ClassVar[Optional[tuple[float, ...]]] = None
    upper_bound: ClassVar[bool] = False

    def __init__(self, reg_lambda: float = 0.0, options: MethodOptions | None = None,
                 **values: Any) -> None:
        self.reg_lambda = float(reg_lambda)
        if options is None:
            options = make_options(self.Options, values, self.name)
        elif values or not isinstance(options, self.Options):
            raise ValueError(f"method {self.name!r}: give either {self.Options.__name__} or keyword "
                             f"options, got {type(options).__name__} and {sorted(values)}")
        self.options = options

    def stream(self, experiences: list) -> list:
        """The experiences trained one after another (``factmas.trainer.experience``): the tasks in
        order here; joint training merges them into one."""
        return list(experiences)

    def on_task_start(self, model: nn.Module, ctx: TaskContext) -> None:
        """Called before the first step of a task."""

    def penalty(self, model: nn.Module) -> torch.Tensor | float:
        """Regularization term added to the loss (already multiplied by λ); 0.0 for none."""
        return 0.0

    def extra_loss(self, model: nn.Module, batch: dict, out: dict) -> torch.Tensor | float:
        """Further loss term from the batch (e.g. LwF distillation); 0.0 for none."""
        return 0.0

    def before_step(self, model: nn.Module) -> None:
        """Called after backward, before the optimizer step (gradients are in ``p.grad``)."""

    def after_step(self, model: nn.Module) -> None:
        """Called after the optimizer step."""

    def on_task_end(self, model: nn.Module, ctx: TaskContext) -> None:
        """Called after the last step of a task, before the checkpoint is saved."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat dict of tensors (keys like 'omega.<param name>') saved in the checkpoint."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what ``state_dict`` returned."""
