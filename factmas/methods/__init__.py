"""Continual-learning methods: a plain registry name → class (see ``base.Method`` for the hooks).

Each file owns one method: its algorithm, its Ω estimator and its typed options (``<Name>Options``,
a frozen dataclass; the one place of their defaults, range checks, flags and help). The options of a
run are ``train.options.<method>`` in the configuration (``factmas.config.TrainConfig.options``);
``options_for(train_config)`` builds them, ``resolve_options`` writes them back complete (what
config.json records), ``option_flags`` lists the command-line flags ``factmas train`` derives from
them. Everything that lists methods (the CLI's choices and flags, the range checks of
``factmas.config_check``, the paper table's rows and λ grids) reads ``METHODS``: a new method is its
file, its test and one line below.

May import: ``factmas.persample``, ``factmas.space``, ``factmas.space.loss``, ``factmas.config``,
``factmas.data`` (the experiences joint training merges), ``factmas.progress``, ``factmas.distributed``
(the all-reduce of Ω sums). Never ``factmas.trainer`` or ``factmas.cli``.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from factmas.config import ConfigError
from factmas.methods.base import (Method, MethodOptions, TaskContext, option_fields,
                                  options_from_dict)
from factmas.methods.ewc import EWC, EWCOptions
from factmas.methods.joint import Joint
from factmas.methods.lmas import LocalMAS
from factmas.methods.lwf import LwF
from factmas.methods.mas import MAS, MASOptions
from factmas.methods.quadratic import AnchorOptions, QuadraticAnchor
from factmas.methods.rwalk import RWalk
from factmas.methods.si import SI, SIOptions

# the order is the paper table's row order (``factmas.experiments.paper_table``)
METHODS: dict[str, type[Method]] = {
    "finetune": Method,
    "lwf": LwF,
    "ewc": EWC,
    "si": SI,
    "mas": MAS,
    "l-mas": LocalMAS,
    "rwalk": RWalk,
    "joint": Joint,
}


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


def section_options(name: str, values: Any) -> MethodOptions:
    """The options of method ``name`` from its config section ``train.options.<name>`` (a dict;
    fields left out take the defaults).

    Raises:
        ConfigError: an unknown method, key, a wrong type or a value out of range, naming the dotted
            key (``train.options.ewc.gamma``) and the flag (``--ewc-gamma``).
    """
    if name not in METHODS:
        raise ConfigError(f"train.options.{name}: unknown method; valid: {sorted(METHODS)}")
    return options_from_dict(METHODS[name].Options, values, f"train.options.{name}")


def options_for(train_config: Any) -> MethodOptions:
    """The options of ``train_config.method`` (a ``TrainConfig``) from ``train.options``. Raises
    ConfigError as ``section_options``."""
    return section_options(train_config.method, (train_config.options or {}).get(train_config.method, {}))


def check_options(train_config: Any) -> None:
    """Every section of ``train.options`` is a known method's and holds valid options (also the
    sections of other methods than ``train.method``, which the run ignores). Raises ConfigError."""
    options = train_config.options
    if not isinstance(options, dict):
        raise ConfigError(f"train.options: expected an object of method → options, got {options!r}")
    for name, values in options.items():
        section_options(name, values)
    options_for(train_config)


def resolve_options(train_config: Any) -> dict[str, dict[str, Any]]:
    """Set ``train.options`` to ``{method: every option of the method}`` (defaults filled in, the
    other methods' sections dropped; ``{}`` for a method without options), as a run records it in
    config.json; returns it. Raises ConfigError as ``options_for``."""
    values = dataclasses.asdict(options_for(train_config))
    resolved = {train_config.method: values} if values else {}
    train_config.options = resolved
    return resolved


@dataclasses.dataclass(frozen=True)
class OptionFlag:
    """A command-line flag of method options (``factmas train --<flag>``): the ``field`` it sets in
    ``train.options.<method>``, its value ``type`` (str, int, float), ``help``, ``choices`` and each
    method's default (``defaults``: method name → value)."""
    flag: str
    field: str
    type: type
    help: str
    choices: tuple | None
    defaults: dict[str, Any]


def _value_type(f: dataclasses.Field, cls: type) -> type:
    import typing
    hint = typing.get_type_hints(cls)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) is typing.Union and args else hint


def option_flags() -> list[OptionFlag]:
    """The flags of every method's options, from the fields' metadata (``base.option``), in the
    registry's order; a flag that several methods share (e.g. ``--omega-accumulate``) appears once.

    Raises:
        ValueError: a flag that two methods give different fields or types (a registry defect).
    """
    flags: dict[str, OptionFlag] = {}
    for name, cls in METHODS.items():
        for f in option_fields(cls.Options):
            flag = f.metadata.get("flag") or f.name.replace("_", "-")
            kind = _value_type(f, cls.Options)
            have = flags.get(flag)
            if have is None:
                flags[flag] = OptionFlag(flag, f.name, kind, f.metadata.get("help", ""),
                                         f.metadata.get("choices"), {name: f.default})
            elif have.field != f.name or have.type is not kind:
                raise ValueError(f"--{flag}: field {have.field!r} ({have.type.__name__}) of "
                                 f"{sorted(have.defaults)} and {f.name!r} ({kind.__name__}) of {name!r}")
            else:
                have.defaults[name] = f.default
    return list(flags.values())


__all__ = ["AnchorOptions", "EWC", "EWCOptions", "Joint", "LocalMAS", "LwF", "MAS", "MASOptions",
           "METHODS", "Method", "MethodOptions", "OptionFlag", "QuadraticAnchor", "SI", "SIOptions",
           "TaskContext", "check_options", "make_method", "method_class", "option_flags",
           "options_for", "resolve_options", "section_options"]
