"""Image branch: a CNN that forks, as Sherlock's does, into an S head and a PO head.

Sherlock (Elhoseiny et al., AAAI 2017, Sec. 4 and Fig. 3) shares the lower convolutional layers of the
image network (the trunk) and splits the upper layers into two heads: one gives the subject embedding
φ_S, the other the predicate and object embeddings φ_P, φ_O (predicate and object depend on the same
wider context). Both backbones here follow that shape; the output is the *raw* embedding [B, 3, d]
(slot 0 S, 1 P, 2 O); normalization happens in the loss and in retrieval (``factmas.space``).

Every backbone keeps samples independent, so that the per-sample gradients of exact MAS importance
are defined: ``small_cnn`` and ``resnet18`` use GroupNorm; the ImageNet-pretrained EfficientNet-Lite
backbones keep BatchNorm with its frozen ImageNet statistics (``factmas.model.frozen``).

``build_image_branch(cfg)`` returns ``(stem, branch)``: ``stem`` is the frozen lower part of a
pretrained backbone (pixels → feature map, computed once per image into the feature cache,
``factmas.model.features``) or None; ``branch`` maps the stem's output (or the pixels when there is no stem)
to the raw embedding. Parametrized layer types: ``small_cnn`` Conv2d, GroupNorm, Linear;
``efficientnet_lite*`` Conv2d (pointwise and depthwise), BatchNorm2d (eval), Linear.
"""
from __future__ import annotations

import copy
import logging
import pickle

import torch
from torch import nn

from factmas.config import BACKBONES, ModelConfig
from factmas.model.fork import ForkHeads, ForkedBranch
from factmas.model.efficientnet import LITE_MEAN, LITE_STD, imagenet_lite
from factmas.model.frozen import FrozenStem, Renormalize
from factmas.model.preprocess import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)


def conv_block(c_in: int, c_out: int, groups: int, stride: int = 2) -> nn.Sequential:
    """3×3 Conv2d (no bias, GroupNorm follows) → GroupNorm(groups) → ReLU; halves H, W when stride 2."""
    if c_out % groups:
        raise ValueError(f"norm_groups={groups} must divide the channel count {c_out}")
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                         nn.GroupNorm(groups, c_out), nn.ReLU())


class SmallCNNBranch(nn.Module):
    """The default image branch, fast on a 2-core CPU at 64×64 input.

    Trunk: three stride-2 conv blocks, widths w, 2w, 4w (64×64 → 8×8). Heads: one stride-2 conv block of
    width 4w each (→ 4×4), global average pool, Linear. With w = 32: 32 → 64 → 128 | 128 (S), 128 (PO).
    Every block is Conv2d 3×3 → GroupNorm(norm_groups) → ReLU.

    Input float32 [B, 3, H, W] (``preprocess`` output, H, W ≥ 16); output raw φ float32 [B, 3, d].
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        w, g = cfg.width, cfg.norm_groups
        self.trunk = nn.Sequential(conv_block(3, w, g), conv_block(w, 2 * w, g),
                                   conv_block(2 * w, 4 * w, g))
        self.heads = ForkHeads(conv_block(4 * w, 4 * w, g), conv_block(4 * w, 4 * w, g),
                               4 * w, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(self.trunk(x))


class ResNet18Branch(nn.Module):
    """torchvision resnet18 forked at layer4: trunk = stem + layer1..layer3, each head = a copy of layer4.

    Every BatchNorm2d is replaced by GroupNorm(norm_groups) with the same affine parameters (γ, β copied
    when pretrained weights are loaded; the running statistics are dropped), so samples stay independent
    and per-sample gradients are defined in training and for Ω. ``cfg.pretrained_path`` is a torchvision
    resnet18 state dict (e.g. ``resnet18-f37072fd.pth``) loaded with ``weights_only=True``; nothing is
    downloaded. GroupNorm with copied BatchNorm affines is not the same function as the pretrained
    network, so pretrained weights are a starting point to fine-tune, not a frozen feature extractor.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        import torchvision  # lazily: only this backbone needs it

        net = torchvision.models.resnet18(weights=None)
        if cfg.pretrained_path:
            try:
                state = torch.load(cfg.pretrained_path, map_location="cpu", weights_only=True)
            except (OSError, RuntimeError, ValueError, pickle.UnpicklingError, EOFError) as e:
                raise ValueError(f"{cfg.pretrained_path}: cannot load resnet18 weights: not a "
                                 f"weights-only state dict file ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:200] if str(e) else ''})") from e
            if not isinstance(state, dict):
                raise ValueError(f"{cfg.pretrained_path}: not a torchvision resnet18 state dict "
                                 f"(a {type(state).__name__})")
            try:
                missing, unexpected = net.load_state_dict(state, strict=False)
            except RuntimeError as e:
                raise ValueError(f"{cfg.pretrained_path}: not a torchvision resnet18 state dict: "
                                 f"{e}") from e
            bad = [k for k in missing if not k.startswith("fc.")] + list(unexpected)
            if bad:
                raise ValueError(f"{cfg.pretrained_path}: not a torchvision resnet18 state dict "
                                 f"(mismatched keys, e.g. {bad[:3]})")
            log.info("image branch: loaded resnet18 weights from %s", cfg.pretrained_path)
        _batchnorm_to_groupnorm(net, cfg.norm_groups)
        self.trunk = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool,
                                   net.layer1, net.layer2, net.layer3)
        self.heads = ForkHeads(net.layer4, copy.deepcopy(net.layer4), 512, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(self.trunk(x))


def _batchnorm_to_groupnorm(module: nn.Module, groups: int) -> None:
    """Replace every BatchNorm2d in ``module`` (in place) by GroupNorm keeping weight and bias."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            gn = nn.GroupNorm(groups, child.num_features, eps=child.eps)
            with torch.no_grad():
                gn.weight.copy_(child.weight)
                gn.bias.copy_(child.bias)
            setattr(module, name, gn)
        else:
            _batchnorm_to_groupnorm(child, groups)


def build_lite(cfg: ModelConfig) -> tuple[FrozenStem, ForkedBranch]:
    """EfficientNet-Lite cut after ``cfg.freeze_stages`` (None: the record's default, 6) of its 7
    block stages (stem convolution included in the frozen part); ImageNet weights unless
    ``cfg.pretrained`` is False.

    Raises:
        ValueError: ``freeze_stages`` outside 0..6 (``Backbone.max_frozen``), or weights that cannot
            be loaded.
    """
    net = imagenet_lite(cfg.backbone, cfg.pretrained_path, cfg.pretrained)
    stages = len(net.blocks)
    spec = BACKBONES[cfg.backbone]
    k = spec.frozen_stages(cfg.freeze_stages)
    if not 0 <= k <= spec.max_frozen:
        raise ValueError(f"model.freeze_stages: must be in 0..{spec.max_frozen} for {cfg.backbone} (the "
                         f"last of its {stages} stages forks into the heads), got {k}")
    stem = FrozenStem(nn.Sequential(Renormalize(IMAGENET_MEAN, IMAGENET_STD, LITE_MEAN, LITE_STD),
                                    net.conv_stem, net.bn1, *net.blocks[:k]), engine=cfg.stem_engine,
                      stages=k)
    head = nn.Sequential(net.blocks[-1], net.conv_head, net.bn2)
    branch = ForkedBranch(nn.Sequential(*net.blocks[k:-1]), head, net.conv_head.out_channels,
                          cfg.embed_dim)
    log.info("image branch: %s (%s), stages 1-%d frozen, %s trainable parameters", cfg.backbone,
             "ImageNet weights" if cfg.pretrained else "random weights", k,
             f"{sum(p.numel() for p in branch.parameters()):,}")
    return stem, branch.train(False)


def _build_resnet(cfg: ModelConfig):
    from factmas.model.resnet import build_resnet          # torchvision only when a ResNet is asked for
    return build_resnet(cfg)


# ``Backbone.family`` (factmas.config.BACKBONES) → the builder: cfg → (stem, branch) or branch
BUILDERS = {"small_cnn": SmallCNNBranch, "resnet18_gn": ResNet18Branch, "resnet": _build_resnet,
            "efficientnet_lite": build_lite}


def build_image_branch(cfg: ModelConfig) -> tuple[FrozenStem | None, nn.Module]:
    """(frozen stem or None, trainable branch) of the backbone named by ``cfg.backbone``: its record
    (``factmas.config.BACKBONES``) names the builder (``BUILDERS``).

    Raises:
        ValueError: an unknown backbone (the message lists the valid names) or bad weights.
    """
    if cfg.backbone not in BACKBONES:
        raise ValueError(f"model.backbone: unknown backbone {cfg.backbone!r}; valid: {sorted(BACKBONES)}")
    built = BUILDERS[BACKBONES[cfg.backbone].family](cfg)
    return built if isinstance(built, tuple) else (None, built)
