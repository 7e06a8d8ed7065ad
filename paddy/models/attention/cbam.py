"""Convolutional Block Attention Module (Woo, Park, Lee and Kweon, "CBAM: Convolutional Block
Attention Module", ECCV 2018).

Channel attention (average- and max-pooled descriptors through a shared MLP C -> C/r -> C, summed,
sigmoid) followed by spatial attention (channel-wise mean and max maps, a k x k convolution +
BatchNorm, sigmoid). Built on :class:`timm.layers.cbam.ChannelAttn` and
:class:`timm.layers.cbam.SpatialAttn`; either half can be switched off for ablations.
"""

from __future__ import annotations

import torch
from timm.layers.cbam import ChannelAttn, SpatialAttn
from torch import nn

from paddy.models.attention._common import check_positive_int


class CBAM(nn.Module):
    """CBAM over ``channels``: channel attention (reduction ``reduction``), then spatial attention
    (``kernel_size`` x ``kernel_size`` convolution, odd sizes only).

    ``channel=False`` or ``spatial=False`` drops that half (the ablation of the paper's Table 3);
    dropping both is an error. The channel MLP width is ``max(1, round(channels / reduction))``.
    """


    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7,
                 channel: bool = True, spatial: bool = True):
        super().__init__()
        check_positive_int("cbam", "channels", channels)
        check_positive_int("cbam", "reduction", reduction)
        check_positive_int("cbam", "kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"attention 'cbam': kernel_size must be odd, got {kernel_size} "
                             f"(the paper uses 7; 3 also works)")
        if not channel and not spatial:
            raise ValueError("attention 'cbam': channel=false and spatial=false leaves nothing; "
                             "enable at least one (or use attention=none)")
        self.channel = ChannelAttn(channels, rd_ratio=1.0 / reduction) if channel else None
        self.spatial = SpatialAttn(kernel_size=kernel_size) if spatial else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel is not None:
            x = self.channel(x)
        if self.spatial is not None:
            x = self.spatial(x)
        return x
