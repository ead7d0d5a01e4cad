"""The forked top of an image branch (Sherlock, Elhoseiny et al., AAAI 2017, Fig. 3): a shared trunk,
then one head for the subject (S) and one for predicate + object (P, O).

``ForkHeads``: the two heads, pooling and Linears; ``ForkedBranch``: a pretrained network's trainable
stages with the heads (used by ``factmas.model.image_branch`` and ``factmas.model.resnet``).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from factmas.model.frozen import FrozenBatchNormMixin


class ForkHeads(nn.Module):
    """The two heads on top of a shared trunk's feature map.

    ``s_head`` / ``po_head``: modules mapping the trunk's feature map [B, C, h, w] to [B, C', h', w'];
    each is followed by global average pooling and a Linear to d (S) or 2d (P, O).
    """

    def __init__(self, s_head: nn.Module, po_head: nn.Module, channels: int, embed_dim: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.s_head, self.po_head = s_head, po_head
        self.s_fc = nn.Linear(channels, embed_dim)
        self.po_fc = nn.Linear(channels, 2 * embed_dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h float [B, C, h, w] → raw φ float [B, 3, d]."""
        s = self.s_fc(self.s_head(h).mean(dim=(2, 3)))                    # [B, d]
        po = self.po_fc(self.po_head(h).mean(dim=(2, 3)))                 # [B, 2d]
        return torch.cat([s, po], dim=1).view(-1, 3, self.embed_dim)


class ForkedBranch(FrozenBatchNormMixin):
    """The trainable part of a pretrained image branch, forked as Sherlock's.

    ``trunk``: the stages after the frozen stem up to the last one (shared); each head: a copy of
    ``head`` (EfficientNet-Lite: the last stage + the 1×1 head convolution + its BatchNorm/ReLU6, 1,280
    channels; ResNet: layer4), then global average pooling and a Linear to d (S) or 2d (P, O).
    BatchNorm keeps its ImageNet statistics (eval mode, ``FrozenBatchNormMixin``).

    Input: the stem's feature map float32 [B, C_k, h, w]; output raw φ float32 [B, 3, d].
    """

    def __init__(self, trunk: nn.Module, head: nn.Module, channels: int, embed_dim: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.heads = ForkHeads(head, copy.deepcopy(head), channels, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(self.trunk(x))
