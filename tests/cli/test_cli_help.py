"""``--help`` shows defaults and choices (``train``'s derived from the registries) and, but for
``train`` (whose method choices and option flags are read from ``factmas.methods.METHODS``, which loads
torch), answers without loading torch."""
from __future__ import annotations

import subprocess
import sys

from factmas.config import TrainConfig
from factmas.cli.train_args import METHOD_NAMES, build_parser


def test_written_out_names_are_the_registries():
    from factmas.config import BACKBONES
    backbone = next(a for a in build_parser()._actions if a.dest == "backbone")
    assert list(backbone.choices) == list(BACKBONES)


def test_method_choices_and_option_flags_come_from_the_registry():
    """Issue 29: no hand-copied method list; every field of every method's Options has a flag whose
    help names the methods that read it and their default."""
    import dataclasses
    from factmas.methods import METHODS
    parser = build_parser()
    method = next(a for a in parser._actions if a.dest == "method")
    assert list(method.choices) == list(METHODS) == list(METHOD_NAMES)
    text = " ".join(parser.format_help().split())
    for name, cls in METHODS.items():
        for f in dataclasses.fields(cls.Options):
            flag = f"--{f.metadata['flag']}"
            action = next(a for a in parser._actions if flag in a.option_strings)
            assert name in action.help and action.default is None
            assert flag in text
    gamma = next(a for a in parser._actions if "--ewc-gamma" in a.option_strings)
    assert gamma.help.endswith("(ewc; default 1)") and gamma.type is float


def test_train_help_lists_defaults_and_choices():
    text = build_parser().format_help()
    assert f"(default {TrainConfig().epochs})" in text and "(default mas)" in text
    assert all(m in text for m in METHOD_NAMES) and "efficientnet_lite0" in text
    assert "(mas, l-mas; default train)" in " ".join(text.split())          # --omega-data


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
    """Every subcommand's help but ``train``'s (module docstring)."""
    code = ("import sys, contextlib, io\nfrom factmas.cli import main\n"
            "for cmd in ('query', 'evaluate', 'features', 'search', 'gallery', 'calibrate'):\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        try:\n            main([cmd, '--help'])\n"
            "        except SystemExit:\n            pass\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
