"""Coordinate attention (Hou, Zhou and Feng, "Coordinate Attention for Efficient Mobile Network Design", CVPR 2021).

The feature map is average-pooled along W (giving a C x H x 1 strip) and along H (C x 1 x W); the
two strips are concatenated, passed through a shared 1x1 conv (C -> mid) + BatchNorm + h-swish,
split again, and each part is mapped back to C channels by its own 1x1 conv + sigmoid. The input
is multiplied by both gates, so the attention knows *where* along each axis a channel matters.
Built on :class:`timm.layers.coord_attn.CoordAttn` with the bottleneck width set explicitly to
the paper's ``mid = max(8, C // reduction)``.
"""

from __future__ import annotations

import torch
from timm.layers.coord_attn import CoordAttn
from torch import nn

from paddy.models.attention._common import check_positive_int


class CoordinateAttention(nn.Module):
    """Coordinate attention over ``channels``; bottleneck width ``max(8, channels // reduction)``.

    As in the paper's reference block the 1x1 convolutions have biases and the activation is
    h-swish (:class:`torch.nn.Hardswish`).
    """


    def __init__(self, channels: int, reduction: int = 32):
        super().__init__()
        check_positive_int("ca", "channels", channels)
        check_positive_int("ca", "reduction", reduction)
        self.attn = CoordAttn(channels, rd_channels=max(8, channels // reduction), bias=True,
                              act_layer=nn.Hardswish, norm_layer=nn.BatchNorm2d, gate_layer="sigmoid")

    @property
    def rd_channels(self) -> int:
        """Width of the bottleneck, ``max(8, channels // reduction)``."""
        return self.attn.conv1.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x)
