"""The two-branch model of Sherlock (Elhoseiny et al., AAAI 2017): images and facts in one space."""
from __future__ import annotations

import torch
from torch import nn

from factmas.config import ModelConfig
from factmas.model.fact_branch import FactBranch
from factmas.model.image_branch import build_image_branch


class TwoBranchModel(nn.Module):
    """``image_branch`` (image input → φ) and ``fact_branch`` (words → ψ), both raw float32 [B, 3, d].

    The *image input* of ``image_branch`` is the output of ``image_stem`` — the frozen lower stages of
    a pretrained backbone, float32 [B, C, h, w], read from the feature cache for dataset images — or,
    for backbones without a stem (``image_stem`` is None), the ``preprocess``-ed pixels.
    ``embed_pixels`` goes from pixels to φ in either case; how a run embeds its images and facts
    (flip averaging, batch size, feature cache) is ``factmas.model.embedder.RunEmbedder``.

    Args:
        cfg: the model configuration (backbone, embed_dim d, widths, norm groups).
        vocab_size: number of word ids of the dataset's vocabulary, pad id 0 included.
    """

    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_stem, self.image_branch = build_image_branch(cfg)
        self.fact_branch = FactBranch(cfg, vocab_size)

    def image_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """``preprocess``-ed pixels float32 [B, 3, H, W] → the image branch's input (no gradient
        through a stem)."""
        return pixels if self.image_stem is None else self.image_stem(pixels)

    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """``preprocess``-ed pixels float32 [B, 3, H, W] → raw φ float32 [B, 3, d] of these images
        as they are (one orientation; a run's flip averaging, batching and feature cache are
        ``factmas.model.embedder.RunEmbedder``'s)."""
        return self.image_branch(self.image_input(pixels))

    def forward(self, images: torch.Tensor, tokens: torch.Tensor,
                order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images: the image input (class docstring), tokens int [B', 3, L], order int [B']
        → (φ float32 [B, 3, d], ψ float32 [B', 3, d]), both raw (not normalized)."""
        return self.image_branch(images), self.fact_branch(tokens, order)


def build_model(cfg: ModelConfig, vocab_size: int) -> TwoBranchModel:
    """The two-branch model for ``cfg``. Raises ValueError on an unknown backbone or bad sizes."""
    if cfg.embed_dim < 1 or cfg.width < 1 or cfg.word_dim < 1 or cfg.fact_hidden < 1:
        raise ValueError(f"model: embed_dim, width, word_dim and fact_hidden must be >= 1, got {cfg}")
    return TwoBranchModel(cfg, vocab_size)
