"""ImageNet ResNet-18/50 (He et al., CVPR 2016) image branches with frozen BatchNorm, through
torchvision's own weights API — for users with internet.

``cfg.pretrained_path`` (a torchvision state dict file) is used when given; otherwise the ImageNet
weights come from ``torchvision.models.ResNet{18,50}_Weights.IMAGENET1K_V1.get_state_dict()``, which
downloads them once into the torch hub cache (``$TORCH_HOME/hub/checkpoints/``) and reads the cached
file afterwards. The tests place a state dict in that cache beforehand; nothing is downloaded there.

The network is cut like the EfficientNet branch: the stem (conv1, bn1, max-pool) and the first
``freeze_stages`` residual layers (0..3, default 3) are frozen and cached; the remaining layers up to
layer3 train; each of the S and PO heads is a copy of layer4, then global average pooling and a
Linear (Sherlock's fork). BatchNorm keeps its ImageNet statistics everywhere, so samples stay
independent and per-sample gradients (exact Ω) are defined. Input: ``preprocess`` output (the
ImageNet mean/std normalization these weights expect).

May import: torch, torchvision, ``.frozen``, ``factmas.config``.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from factmas.config import BACKBONES, ModelConfig
from factmas.model.fork import ForkedBranch
from factmas.model.frozen import FrozenStem
from factmas.model.weights import load_state_file

log = logging.getLogger(__name__)

# backbone name → (torchvision constructor, weights enum, channels of layer4)
RESNETS = {"resnet18": ("resnet18", "ResNet18_Weights", 512),
           "resnet50": ("resnet50", "ResNet50_Weights", 2048)}


def resnet_state_dict(name: str, path: str | None) -> dict[str, torch.Tensor]:
    """The weights of ResNet ``name``: the file ``path`` (weights_only load) or torchvision's ImageNet
    weights (``IMAGENET1K_V1``, downloaded once into the torch hub cache).

    Raises:
        ValueError: an unreadable file or not a state dict (names the file), or no weights could be
            had (no file and no cached copy or network; the message says where to put the file).
    """
    import torchvision
    if path:
        return load_state_file(path, f"{name} weights")
    weights = getattr(torchvision.models, RESNETS[name][1]).IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=False)
    except (OSError, RuntimeError, ValueError) as e:
        raise ValueError(f"backbone {name}: torchvision's ImageNet weights ({weights.url}) could not be "
                         f"read or downloaded ({e}); place the file in {torch.hub.get_dir()}/checkpoints/ "
                         "or set model.pretrained_path") from e


def build_resnet(cfg: ModelConfig):
    """(FrozenStem, trainable ForkedBranch) of an ImageNet ResNet (module docstring).

    Raises:
        ValueError: ``freeze_stages`` outside 0..3 (``Backbone.max_frozen``), or weights that cannot
            be had or do not fit.
    """
    import torchvision

    ctor, _, channels = RESNETS[cfg.backbone]
    net = getattr(torchvision.models, ctor)(weights=None)
    if cfg.pretrained:
        state = resnet_state_dict(cfg.backbone, cfg.pretrained_path)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{cfg.pretrained_path or cfg.backbone}: not torchvision {cfg.backbone} "
                             f"weights: {str(e).splitlines()[0]}") from e
    spec = BACKBONES[cfg.backbone]
    k = spec.frozen_stages(cfg.freeze_stages)
    if not 0 <= k <= spec.max_frozen:
        raise ValueError(f"model.freeze_stages: must be in 0..{spec.max_frozen} for {cfg.backbone} (residual layers "
                         f"1-3; layer4 forks into the heads), got {k}")
    layers = [net.layer1, net.layer2, net.layer3]
    stem = FrozenStem(nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, *layers[:k]),
                      engine=cfg.stem_engine, stages=k)
    branch = ForkedBranch(nn.Sequential(*layers[k:]), net.layer4, channels, cfg.embed_dim)
    log.info("image branch: %s (%s), residual layers 1-%d frozen, %s trainable parameters",
             cfg.backbone, "ImageNet weights" if cfg.pretrained else "random weights", k,
             f"{sum(p.numel() for p in branch.parameters()):,}")
    return stem, branch.train(False)
