"""``factmas --help`` lists every command: each command module of ``factmas/cli`` is in ``SUBCOMMANDS``
(issue 29: ``paper`` and ``compare`` were missing), and each command's ``--help`` answers."""
from __future__ import annotations

import contextlib
import importlib
import io
import subprocess
import sys
from pathlib import Path

import pytest

import factmas.cli as cli
from factmas.cli import NOT_COMMANDS, SUBCOMMANDS, main

CLI_DIR = Path(cli.__file__).parent


def _command_modules() -> set[str]:
    return {f"factmas.cli.{p.stem}" for p in CLI_DIR.glob("*.py") if p.stem not in NOT_COMMANDS}


def test_every_command_module_is_a_subcommand():
    listed = {module for module, _ in SUBCOMMANDS.values()}
    assert _command_modules() - listed == set(), "a cli/*.py command missing from SUBCOMMANDS"
    assert listed - _command_modules() == set(), "SUBCOMMANDS names a module that is not in cli/"
    assert {"paper", "compare"} <= set(SUBCOMMANDS)
    assert all((CLI_DIR / f"{n}.py").is_file() for n in NOT_COMMANDS if n != "__init__")


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_each_command_has_a_main(name):
    module = importlib.import_module(SUBCOMMANDS[name][0])
    assert callable(module.main)


def test_top_level_help_lists_every_command():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--help"]) == 0
    text = out.getvalue()
    for name in SUBCOMMANDS:
        assert f"\n  {name} " in text
    assert "{" + ",".join(SUBCOMMANDS) + "}" in text


def test_unknown_command_exits_2_naming_it(capsys):
    assert main(["papers"]) == 2
    assert "unknown subcommand 'papers'" in capsys.readouterr().err


def test_every_command_help_exits_0_without_torch():
    """Each command's ``--help`` (compare too) answers without loading torch, but for ``train`` and
    ``paper``: their method choices, option flags and λ grids are read from the registry
    (``factmas.methods.METHODS``, whose modules import torch), so they are asked last and only their
    exit status is checked."""
    code = ("import sys, contextlib, io\nfrom factmas.cli import SUBCOMMANDS, main\nrcs, torch_at = [], None\n"
            "for cmd in [c for c in SUBCOMMANDS if c not in ('train', 'paper')] + ['train', 'paper']:\n"
            "    if torch_at is None and cmd == 'train':\n        torch_at = 'torch' in sys.modules\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        try:\n            rcs.append(main([cmd, '--help']))\n"
            "        except SystemExit as e:\n            rcs.append(e.code)\n"
            "print(rcs, torch_at)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    rcs, torch_loaded = out.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    assert {"train", "paper"} <= set(SUBCOMMANDS)
    assert rcs == str([0] * len(SUBCOMMANDS)) and torch_loaded == "False"


def test_no_library_module_parses_arguments():
    """Library functions take typed parameters, never an argparse Namespace (issue 29): argparse is
    imported by ``factmas/cli`` only."""
    import ast
    root = CLI_DIR.parent
    users = []
    for path in sorted(root.rglob("*.py")):
        if CLI_DIR in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "argparse" or n.startswith("argparse.") for n in names):
                users.append(str(path.relative_to(root)))
    assert users == [], f"argparse outside factmas/cli: {users}"
