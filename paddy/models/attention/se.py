"""Squeeze-and-Excitation channel attention (Hu, Shen and Sun, "Squeeze-and-Excitation Networks", CVPR 2018).

Global average pooling -> 1x1 conv (C -> C/r) -> ReLU -> 1x1 conv (C/r -> C) -> sigmoid, which
rescales the channels. Built on :class:`timm.layers.SEModule`.
"""

from __future__ import annotations

import torch
from timm.layers import SEModule
from torch import nn

from paddy.models.attention._common import check_positive_int


class SqueezeExcite(nn.Module):
    """SE block over ``channels`` with reduction ratio ``reduction``.

    The bottleneck width is ``C / reduction`` rounded to a multiple of 8 (at least 8), as timm's
    ``SEModule`` does (``rd_divisor=8``).
    """


    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        check_positive_int("se", "channels", channels)
        check_positive_int("se", "reduction", reduction)
        self.se = SEModule(channels, rd_ratio=1.0 / reduction)

    @property
    def rd_channels(self) -> int:
        """Width of the bottleneck."""
        return self.se.fc1.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.se(x)
