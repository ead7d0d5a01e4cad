"""``--help`` shows defaults and choices and answers without loading torch."""
from __future__ import annotations

import subprocess
import sys

from factmas.config import TrainConfig
from factmas.cli.train_args import BACKBONE_NAMES, METHOD_NAMES, build_parser


def test_written_out_names_are_the_registries():
    from factmas.methods import METHODS
    from factmas.model import BACKBONES
    assert set(METHOD_NAMES) == set(METHODS)
    assert set(BACKBONE_NAMES) == set(BACKBONES)


def test_train_help_lists_defaults_and_choices():
    text = build_parser().format_help()
    assert f"(default {TrainConfig().epochs})" in text and "(default mas)" in text
    assert all(m in text for m in METHOD_NAMES) and "efficientnet_lite0" in text


def test_help_loads_no_torch():
    code = ("import sys, contextlib, io\nfrom factmas.cli import main\n"
            "for cmd in ('train', 'query', 'evaluate', 'features', 'search', 'gallery', 'calibrate'):\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        try:\n            main([cmd, '--help'])\n"
            "        except SystemExit:\n            pass\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
