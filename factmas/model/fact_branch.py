"""Fact branch: the words of S, P and O → ψ_S, ψ_P, ψ_O in the spaces of φ_S, φ_P, φ_O.

Sherlock (Elhoseiny et al., AAAI 2017, Sec. 4) encodes each slot's words separately and places the
three slot embeddings in the same structured space [S | P | O] as the image branch. Here:

    e_w        = E[w]                          word embedding, shared by all slots (E[0] = 0, the pad)
    u_s(f)     = (1 / n_s) Σ_{w ∈ slot s} e_w  masked mean over the n_s words of slot s ("run through")
    ψ_s(f)     = W2_s · ReLU(LN_s(W1_s u_s + b1_s)) + b2_s         one small MLP per slot s
    ψ_s(f)     = 0   for absent slots (s ≥ order(f)), with zero gradient.

Parametrized layer types: Embedding, Linear, LayerNorm.
"""
from __future__ import annotations

import torch
from torch import nn

from factmas.config import ModelConfig
from factmas.space import NUM_SLOTS, slot_mask


class FactBranch(nn.Module):
    """Word embeddings (shared) → masked mean per slot → per-slot MLP.

    Args:
        cfg: uses ``word_dim`` (embedding size), ``fact_hidden`` (MLP width), ``embed_dim`` (d).
        vocab_size: number of word ids including the pad id 0.

    Attribute ``check_inputs`` (default True) validates order, word ids and non-empty present slots
    on every call; these checks read tensor values, so set it to False to run the branch under
    ``torch.func`` transforms (vmap) or to avoid the device synchronizations on a GPU.
    """

    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"fact branch: vocab_size must be >= 2 (pad + a word), got {vocab_size}")
        self.embed_dim = cfg.embed_dim
        self.vocab_size = vocab_size
        self.check_inputs = True
        self.words = nn.Embedding(vocab_size, cfg.word_dim, padding_idx=0)
        self.slots = nn.ModuleList(
            nn.Sequential(nn.Linear(cfg.word_dim, cfg.fact_hidden), nn.LayerNorm(cfg.fact_hidden),
                          nn.ReLU(), nn.Linear(cfg.fact_hidden, cfg.embed_dim))
            for _ in range(NUM_SLOTS))

    def forward(self, tokens: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """Raw fact embeddings.

        Args:
            tokens: int [B, 3, L] word ids (0 = pad) of the S, P, O slots.
            order: int [B] number of present slots (1, 2 or 3).
        Returns:
            float32 [B, 3, d] raw ψ; rows s ≥ order are exact zeros and pass no gradient.
        Raises:
            ValueError: bad shapes, an order outside 1..3, a word id outside the vocabulary, or a
                present slot without any word.
        """
        if tokens.ndim != 3 or tokens.shape[1] != NUM_SLOTS or order.shape != tokens.shape[:1]:
            raise ValueError(f"fact branch: expected tokens [B, 3, L] and order [B], got "
                             f"{tuple(tokens.shape)} and {tuple(order.shape)}")
        tokens, order = tokens.long(), order.long()
        present = slot_mask(order)                                         # bool [B, 3]
        counts = (tokens != 0).sum(-1)                                     # [B, 3]
        if self.check_inputs:
            self._check(tokens, order, present, counts)
        pooled = self.words(tokens).sum(2) / counts.clamp_min(1).unsqueeze(-1).to(self.words.weight.dtype)
        psi = torch.stack([mlp(pooled[:, s]) for s, mlp in enumerate(self.slots)], dim=1)
        return torch.where(present.unsqueeze(-1), psi, torch.zeros((), dtype=psi.dtype,
                                                                    device=psi.device))

    def _check(self, tokens: torch.Tensor, order: torch.Tensor, present: torch.Tensor,
               counts: torch.Tensor) -> None:
        """Raise ValueError on an order outside 1..3, an unknown word id or an empty present slot."""
        if len(order) and (int(order.min()) < 1 or int(order.max()) > NUM_SLOTS):
            raise ValueError(f"fact branch: order must be in 1..3, got {sorted(set(order.tolist()))}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise ValueError(f"fact branch: word ids must be in [0, {self.vocab_size}), got "
                             f"[{int(tokens.min())}, {int(tokens.max())}]")
        if bool((present & (counts == 0)).any()):
            raise ValueError("fact branch: a present slot (index < order) has no word")
