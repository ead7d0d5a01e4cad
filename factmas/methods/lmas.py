"""Local MAS, ℓ-MAS (Aljundi et al., ECCV 2018, Sec. 4.3): each layer's importance from its own output.

Ω of layer l's parameters = (1/N) Σ_k |∂‖F_l(x_k)‖₂²/∂θ_l|, F_l the layer's own output, the gradient
local to the layer (the paper's link to Hebbian learning: for a linear layer |2 y_i x_j|). Computed
exactly per sample by ``factmas.importance_extra.local_mas_importance``; Ω data, accumulation and the
penalty λ Σ Ω (θ − θ*)² are those of ``MAS``.
"""
from __future__ import annotations

import torch
from torch import nn

from factmas.importance_extra import local_mas_importance
from factmas.methods.base import TaskContext
from factmas.methods.mas import MAS


class LocalMAS(MAS):
    """ℓ-MAS; same options as ``MAS`` (``omega_data`` "train", "test", "train+test", ...)."""
    name = "l-mas"

    def estimate_importance(self, model: nn.Module, ctx: TaskContext) -> dict[str, torch.Tensor]:
        """Local Ω of task ``ctx.task`` (module docstring) from its images and facts."""
        cap = self.omega_max_samples if self.omega_max_samples is not None else ctx.max_samples
        return local_mas_importance(model, self._images(ctx), ctx.fact_batches(), max_samples=cap)
