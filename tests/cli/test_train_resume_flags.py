"""``factmas train --resume RUN_DIR`` refuses every option that the run's config.json fixes (issue 29):
all of ``build_parser``'s options but ``RESUME_FREE`` (where and how fast the run continues), the
methods' option flags derived from the registry included."""
from __future__ import annotations

import argparse

import pytest

from factmas.cli.train_args import METHOD_FLAGS, RESUME_FREE, build_parser, fixed_by_run


def _value(action: argparse.Action) -> list[str]:
    """Command-line words that set ``action`` to a value other than its unset default."""
    if action.nargs == 0:                                  # store_true
        return []
    if action.choices:
        return [str(list(action.choices)[-1])]
    return ["2"] if action.type in (int, float) else ["x"]


def _options() -> list[argparse.Action]:
    return [a for a in build_parser()._actions
            if a.option_strings and a.dest not in RESUME_FREE and a.dest != "help"]


@pytest.mark.parametrize("action", _options(), ids=lambda a: a.option_strings[-1])
def test_every_option_the_config_fixes_is_refused_with_resume(action):
    flag = action.option_strings[-1]
    args = build_parser().parse_args(["--resume", "RUN", flag, *_value(action)])
    assert fixed_by_run(args) == [f"--{action.dest.replace('_', '-')}"]


def test_the_free_options_and_the_method_flags_are_covered():
    dests = {a.dest for a in _options()}
    assert set(METHOD_FLAGS) <= dests and {"backbone", "optimizer", "freeze_stages", "method"} <= dests
    args = build_parser().parse_args(["--resume", "RUN", "--device", "cpu", "--threads", "1",
                                      "--limit-tasks", "2", "--no-progress", "-q"])
    assert fixed_by_run(args) == []


def test_resume_with_a_method_option_exits_2_naming_it(tmp_path, capsys):
    from factmas.cli.train import main
    assert main(["--resume", str(tmp_path), "--ewc-gamma", "0.5", "--omega-data", "test"]) == 2
    err = capsys.readouterr().err
    assert "--ewc-gamma" in err and "--omega-data" in err and "config.json" in err
