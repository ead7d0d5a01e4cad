"""The Backbone records (``factmas.config.BACKBONES``) against what the builders really make: the
default and maximum frozen stages, pixel input, the builder of each family, and the help derived
from them (issue 29: specs instead of parallel lists)."""
from __future__ import annotations

import pytest

from factmas.config import BACKBONES, Backbone, ModelConfig, freeze_stages_help
from factmas.model import BUILDERS, build_image_branch

# the lower stages the builders put in front of the backbone's blocks inside FrozenStem.body
LEAD = {"efficientnet_lite": 3,              # renormalize, conv_stem, bn1
        "resnet": 4}                         # conv1, bn1, relu, maxpool


def test_every_family_has_a_builder_and_every_builder_a_backbone():
    assert {b.family for b in BACKBONES.values()} == set(BUILDERS)
    assert all(name == b.name for name, b in BACKBONES.items())


def _cfg(name: str, **kw) -> ModelConfig:
    return ModelConfig(backbone=name, pretrained=False, embed_dim=8, stem_engine="torch", **kw)


@pytest.mark.parametrize("name", [n for n, b in BACKBONES.items() if not b.pixel_input])
def test_frozen_stage_default_and_maximum_are_the_builders(name):
    """Default: the stem holds default_frozen stages; max_frozen is accepted and is the last stage
    before the heads (one more is refused, naming the range)."""
    spec = BACKBONES[name]
    stem, _ = build_image_branch(_cfg(name))
    assert stem.stages == spec.default_frozen
    assert len(stem.body) - LEAD[spec.family] == spec.default_frozen
    top, branch = build_image_branch(_cfg(name, freeze_stages=spec.max_frozen))
    assert top.stages == spec.max_frozen and len(top.body) - LEAD[spec.family] == spec.max_frozen
    assert len(branch.trunk) == 0                     # nothing left between the stem and the heads
    with pytest.raises(ValueError, match=rf"0\.\.{spec.max_frozen} for {name}"):
        build_image_branch(_cfg(name, freeze_stages=spec.max_frozen + 1))


@pytest.mark.parametrize("name", [n for n, b in BACKBONES.items() if b.pixel_input])
def test_pixel_backbones_have_no_stem(name):
    spec = BACKBONES[name]
    stem, _ = build_image_branch(_cfg(name, width=8, norm_groups=4))
    assert stem is None and spec.max_frozen is None and spec.frozen_stages(2) is None


def test_frozen_stages_resolves_none_to_the_default():
    b = Backbone("x", "resnet", 3, 3, 224, "x")
    assert b.frozen_stages(None) == 3 and b.frozen_stages(1) == 1 and not b.pixel_input


def test_train_help_and_choices_come_from_the_records():
    from factmas.cli.train_args import build_parser
    p = build_parser()
    action = next(a for a in p._actions if a.dest == "backbone")
    assert list(action.choices) == list(BACKBONES)
    text = " ".join(p.format_help().split())
    assert all(f"{b.name}: {b.help}, {b.input_size} px" in text for b in BACKBONES.values())
    assert freeze_stages_help() in text
    assert "efficientnet_lite0, efficientnet_lite1, efficientnet_lite2: 6 (0..6)" in freeze_stages_help()


def test_augment_shift_refusal_lists_the_pixel_backbones(tmp_path):
    from factmas.config import RunConfig
    from factmas.machine.device import UsageError
    from factmas.trainer import check_settings

    class Data:
        splits, path = {"s": None}, "d.h5"

    cfg = RunConfig()
    cfg.train.split, cfg.train.augment_shift = "s", 4
    with pytest.raises(UsageError, match=r"pixel-input backbones \(small_cnn, resnet18_gn\) only"):
        check_settings(cfg, Data())
