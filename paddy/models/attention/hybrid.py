"""Coordinate attention followed by BoTNet self-attention: the position-aware channel gating of
Hou et al. (CVPR 2021) refines the features, then global self-attention with relative positions
(Srinivas et al., CVPR 2021) mixes them across the whole feature map.
"""

from __future__ import annotations

import torch
from torch import nn

from paddy.models.attention.bot import BoTSelfAttention
from paddy.models.attention.coord import CoordinateAttention


class HybridAttention(nn.Module):
    """:class:`CoordinateAttention` (``reduction``) then :class:`BoTSelfAttention` (``heads``)."""


    def __init__(self, channels: int, reduction: int = 32, heads: int = 4,
                 feat_size: int | tuple[int, int] | None = None):
        super().__init__()
        self.coord = CoordinateAttention(channels, reduction=reduction)
        self.bot = BoTSelfAttention(channels, heads=heads, feat_size=feat_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bot(self.coord(x))
