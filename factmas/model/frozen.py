"""Pieces for pretrained backbones: frozen BatchNorm, a frozen stem, and exact-gradient layer forms.

A pretrained image branch is cut in two (``factmas.model.image_branch``):

- the **stem** (the lower stages): frozen — no parameter trains, BatchNorm uses its ImageNet running
  statistics — so its output for a dataset image never changes and is computed once into the feature
  cache (``factmas.model.features``). Its output is rounded to float16, the precision the cache stores, so
  the live path and the cached path agree to one float16 step.
- the **trainable part** (upper stages and the S / PO heads): every parameter trains and carries Ω,
  but BatchNorm still uses the frozen running statistics (eval mode even while training). Then every
  layer is a per-sample function and per-sample gradients (exact MAS Ω) are defined.

``exact_layers`` rewrites the two timm layer types whose hooks would see the wrong tensors: a
``Conv2dSame`` pads inside its forward (the hook would see the unpadded input) and a
``BatchNormAct2d`` applies its activation inside (the hook would see the activated output). Each
becomes a plain ``nn.Sequential`` of the same arithmetic: ``[SamePad2d, Conv2d]`` and
``[BatchNorm2d, drop, act]``.

On the CPU, ``FrozenStem`` runs its body through a fast engine when its optional package is
installed (``factmas.model.stem_engine``: OpenVINO, else ONNX Runtime; 2.8× and 2.0× torch at the
same float16-rounded features),
so the feature cache, live stem inputs and ``embed_pixels`` (query, search, evaluation without the
cache) take the same path.

May import: torch, ``.stem_engine`` (timm's classes are recognized by name, so timm is not needed here).
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from factmas.model.stem_engine import OrtStem, fast_engine, ort_available

log = logging.getLogger(__name__)


class FrozenBatchNormMixin(nn.Module):
    """A module whose BatchNorm layers always stay in eval mode (frozen running statistics).

    ``train(True)`` puts every other submodule in training mode as usual; BatchNorm layers neither
    update nor use batch statistics, so samples stay independent (Aljundi et al.'s per-sample Ω needs
    it) and small continual-learning batches do not disturb the ImageNet statistics.
    """

    def train(self, mode: bool = True) -> "FrozenBatchNormMixin":
        super().train(mode)
        for m in self.modules():
            if isinstance(m, _BatchNorm):
                m.eval()
        return self


class Renormalize(nn.Module):
    """Fixed per-channel affine map from one input normalization to another (no parameters).

    ``factmas.model.preprocess`` normalizes pixels with the ImageNet mean/std of torchvision; a
    backbone trained with other statistics (EfficientNet-Lite: mean 0.5, std 0.5) gets
    x' = ((x · std_in + mean_in) − mean_out) / std_out, i.e. the pixels in [0, 1] renormalized.
    Input and output float32 [B, 3, H, W].
    """

    def __init__(self, mean_in, std_in, mean_out, std_out) -> None:
        super().__init__()
        t = lambda v: torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1)  # noqa: E731
        self.register_buffer("scale", t(std_in) / t(std_out), persistent=False)
        self.register_buffer("shift", (t(mean_in) - t(mean_out)) / t(std_out), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class FrozenStem(nn.Module):
    """The frozen lower part of a backbone: pixels → feature map, no gradient, float16-rounded.

    Args:
        body: the lower stages (e.g. ``nn.Sequential(renormalize, conv_stem, bn, blocks[:k])``).
        engine: "auto" (a float32 CPU input runs through ``stem_engine.fast_engine()``: OpenVINO when
            ``openvino`` is installed, else ONNX Runtime when ``onnxruntime`` and ``onnx`` are, else
            torch) or "torch" (always torch).
        stages: how many of the backbone's stages ``body`` holds (``Backbone.frozen_stages``; it
            names the feature cache file, ``factmas.model.features.cache_file``); None: not said.
    ``forward(x)``: x float32 [B, 3, H, W] (``preprocess`` output) → float32 [B, C, h, w], each value
    rounded to the nearest float16 (the feature cache's storage type). Always in eval mode; its
    parameters have ``requires_grad = False`` and are never in Ω or the optimizer's updates. The two
    engines agree to the cache's float16 tolerance (tests/model/test_stem_engine.py); if the fast engine
    fails (export or session), a warning says why and the stem stays on torch. A session follows the
    body's weights (rebuilt when a parameter or buffer is written, e.g. by ``load_state_dict``).
    """

    ENGINES = ("auto", "torch")

    def __init__(self, body: nn.Module, engine: str = "auto", stages: int | None = None) -> None:
        super().__init__()
        if engine not in self.ENGINES:
            raise ValueError(f"FrozenStem engine {engine!r}; valid: {list(self.ENGINES)}")
        self.body = body
        self.engine = engine
        self.stages = stages
        self._ort: tuple[int, OrtStem] | None = None    # (weights version, sessions)
        self._ort_failed = False
        for p in self.body.parameters():
            p.requires_grad_(False)
        self.eval()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_ort"] = None                            # sessions are rebuilt, never copied
        return state

    def train(self, mode: bool = True) -> "FrozenStem":
        return super().train(False)

    def _weights_version(self) -> int:
        return sum(t._version for t in self.body.state_dict(keep_vars=True).values())

    def uses_onnxruntime(self, device: torch.device) -> bool:
        """Whether a float32 input on ``device`` runs through a fast engine, OpenVINO or ONNX Runtime
        (engine "auto", the CPU, a package installed, no earlier failure; the name is older than
        OpenVINO's use)."""
        return (self.engine == "auto" and not self._ort_failed and torch.device(device).type == "cpu"
                and ort_available())

    def _ort_forward(self, x: torch.Tensor) -> torch.Tensor | None:
        if x.dtype != torch.float32 or not self.uses_onnxruntime(x.device):
            return None
        try:
            version = self._weights_version()
            if self._ort is None or self._ort[0] != version:
                self._ort = (version, OrtStem(self.body))
            return self._ort[1](x)
        except Exception as e:                          # any exporter/runtime failure: stay on torch
            self._ort_failed = True
            log.warning("frozen stem: %s unavailable (%s: %s); running it in torch",
                        fast_engine(), type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
            return None

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._ort_forward(x)
        if y is None:
            y = self.body(x)
        return y.to(torch.float16).to(torch.float32)


class SamePad2d(nn.Module):
    """TensorFlow "SAME" zero padding for a following convolution (no parameters).

    For input size n, kernel k, stride s, dilation r the total padding is
    max((⌈n/s⌉ − 1)·s + (k − 1)·r + 1 − n, 0), split with the extra pixel on the right/bottom — the
    padding of timm's ``Conv2dSame`` (``timm.layers.padding.pad_same``), here as its own layer so the
    convolution after it is a plain ``nn.Conv2d`` whose forward hook sees the padded input.
    """

    def __init__(self, kernel_size, stride, dilation) -> None:
        super().__init__()
        pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
        self.k, self.s, self.d = pair(kernel_size), pair(stride), pair(dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        ph = max((math.ceil(ih / self.s[0]) - 1) * self.s[0] + (self.k[0] - 1) * self.d[0] + 1 - ih, 0)
        pw = max((math.ceil(iw / self.s[1]) - 1) * self.s[1] + (self.k[1] - 1) * self.d[1] + 1 - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return x


def _plain_conv(conv: nn.Conv2d) -> nn.Sequential:
    """A timm Conv2dSame → [SamePad2d, nn.Conv2d(padding=0)] with the same weights."""
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0,
                    conv.dilation, conv.groups, conv.bias is not None)
    out.load_state_dict(conv.state_dict())
    return nn.Sequential(SamePad2d(conv.kernel_size, conv.stride, conv.dilation), out)


def _plain_bn(bn: nn.BatchNorm2d) -> nn.Sequential:
    """A timm BatchNormAct2d → [nn.BatchNorm2d, drop, act] with the same parameters and statistics."""
    out = nn.BatchNorm2d(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    out.load_state_dict(nn.BatchNorm2d.state_dict(bn))
    return nn.Sequential(out, bn.drop, bn.act)


def exact_layers(module: nn.Module) -> nn.Module:
    """Rewrite, in place, timm's ``Conv2dSame`` and ``BatchNormAct2d`` (module docstring) anywhere
    in ``module`` into plain layers computing the same function; returns ``module``."""
    for name, child in module.named_children():
        kind = type(child).__name__
        if kind == "Conv2dSame":
            setattr(module, name, _plain_conv(child))
        elif kind == "BatchNormAct2d":
            setattr(module, name, _plain_bn(child))
        else:
            exact_layers(child)
    return module
