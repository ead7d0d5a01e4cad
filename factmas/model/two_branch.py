"""The two-branch model of Sherlock (Elhoseiny et al., AAAI 2017): images and facts in one space."""
from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .fact_branch import FactBranch
from .image_branch import build_image_branch


class TwoBranchModel(nn.Module):
    """``image_branch`` (pixels → φ) and ``fact_branch`` (words → ψ), both raw float32 [B, 3, d].

    Args:
        cfg: the model configuration (backbone, embed_dim d, widths, norm groups).
        vocab_size: number of word ids of the dataset's vocabulary, pad id 0 included.
    """

    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_branch = build_image_branch(cfg)
        self.fact_branch = FactBranch(cfg, vocab_size)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor,
                order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images float32 [B, 3, H, W] (``preprocess`` output), tokens int [B', 3, L], order int [B']
        → (φ float32 [B, 3, d], ψ float32 [B', 3, d]), both raw (not normalized)."""
        return self.image_branch(images), self.fact_branch(tokens, order)


def build_model(cfg: ModelConfig, vocab_size: int) -> TwoBranchModel:
    """The two-branch model for ``cfg``. Raises ValueError on an unknown backbone or bad sizes."""
    if cfg.embed_dim < 1 or cfg.width < 1 or cfg.word_dim < 1 or cfg.fact_hidden < 1:
        raise ValueError(f"model: embed_dim, width, word_dim and fact_hidden must be >= 1, got {cfg}")
    return TwoBranchModel(cfg, vocab_size)
