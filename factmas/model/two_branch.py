"""The two-branch model of Sherlock (Elhoseiny et al., AAAI 2017): images and facts in one space."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from factmas.config import ModelConfig
from factmas.model.fact_branch import FactBranch
from factmas.model.image_branch import build_image_branch
from factmas.model.word_targets import FACT_TARGETS, build_word_targets


class TwoBranchModel(nn.Module):
    """``image_branch`` (image input → φ) and ``fact_branch`` (words → ψ), both raw float32 [B, 3, d].

    The *image input* of ``image_branch`` is the output of ``image_stem`` — the frozen lower stages of
    a pretrained backbone, float32 [B, C, h, w], read from the feature cache for dataset images — or,
    for backbones without a stem (``image_stem`` is None), the ``preprocess``-ed pixels.
    ``embed_pixels`` goes from pixels to φ in either case; how a run embeds its images and facts
    (flip averaging, batch size, feature cache) is ``factmas.model.embedder.RunEmbedder``.

    Args:
        cfg: the model configuration (backbone, embed_dim d, widths, norm groups, fact_targets).
        vocab_size: number of word ids of the dataset's vocabulary, pad id 0 included.
        vocab: the dataset's words (id order), when known: with ``fact_targets = "word2vec"`` they
            must be the vectors file's words (``factmas.model.word_targets``).

    ``fact_branch`` is a ``FactBranch`` (``fact_targets = "learned"``) or a parameter-free
    ``WordVectorTargets`` (``"word2vec"``, Sherlock's fixed targets); both map (tokens, order) to
    float32 [B, 3, d].
    """

    def __init__(self, cfg: ModelConfig, vocab_size: int, vocab: Sequence[str] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.fact_targets not in FACT_TARGETS:
            raise ValueError(f"model.fact_targets: {cfg.fact_targets!r}; valid: {list(FACT_TARGETS)}")
        # the image branch first: the random initial weights of every run made before fact_targets
        # existed were drawn in this order
        self.image_stem, self.image_branch = build_image_branch(cfg)
        if cfg.fact_targets == "word2vec":
            self.fact_branch = build_word_targets(cfg.word_vectors, vocab_size, cfg.embed_dim, vocab)
        else:
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


def build_model(cfg: ModelConfig, vocab_size: int, vocab: Sequence[str] | None = None) -> TwoBranchModel:
    """The two-branch model for ``cfg`` (``vocab``: see ``TwoBranchModel``). Raises ValueError on an
    unknown backbone or fact_targets, bad sizes, or word vectors that do not fit (named)."""
    if cfg.embed_dim < 1 or cfg.width < 1 or cfg.word_dim < 1 or cfg.fact_hidden < 1:
        raise ValueError(f"model: embed_dim, width, word_dim and fact_hidden must be >= 1, got {cfg}")
    return TwoBranchModel(cfg, vocab_size, vocab)
