"""``--help`` shows defaults and choices and answers without loading torch."""
from __future__ import annotations

import subprocess
import sys

from factmas.config import TrainConfig
from factmas.cli.train_args import METHOD_NAMES, build_parser


def test_written_out_names_are_the_registries():
    from factmas.methods import METHODS
    assert set(METHOD_NAMES) == set(METHODS)


def test_train_help_lists_defaults_and_choices():
    text = build_parser().format_help()
    assert f"(default {TrainConfig().epochs})" in text and "(default mas)" in text
    assert all(m in text for m in METHOD_NAMES) and "efficientnet_lite0" in text


def test_freeze_stages_help_gives_the_builders_defaults():
    """Drift bug of issue 29: the help said 5 for EfficientNet-Lite while the builder froze 6."""
    from factmas.config import ModelConfig
    from factmas.model import build_image_branch
    text = " ".join(build_parser().format_help().split())
    stem, _ = build_image_branch(ModelConfig(backbone="efficientnet_lite0", pretrained=False))
    frozen = len(stem.body) - 3                      # renormalize, conv_stem, bn1, then the blocks
    assert frozen == stem.stages == 6 and "efficientnet_lite2: 6 (0..6)" in text
    default, _ = build_image_branch(ModelConfig(backbone="resnet18", pretrained=False))
    resnet_layers = len(default.body) - 4            # conv1, bn1, relu, maxpool, then the layers
    assert resnet_layers == default.stages == 3 and "resnet50: 3 (0..3)" in text


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
