"""Efficient Channel Attention (Wang et al., "ECA-Net: Efficient Channel Attention for Deep
Convolutional Neural Networks", CVPR 2020).

Global average pooling, then a 1-D convolution of size k across the channel axis (local
cross-channel interaction, no dimensionality reduction), then a sigmoid gate. Built on
:class:`timm.layers.EcaModule`.
"""

from __future__ import annotations

import torch
from timm.layers import EcaModule
from torch import nn

from paddy.models.attention._common import check_positive_int


class EfficientChannelAttention(nn.Module):
    """ECA over ``channels``.

    ``kernel_size=None`` picks the paper's adaptive size ``k = |(log2(C) + 1) / 2|_odd`` (at least
    3); an int fixes it (odd sizes only, so the convolution stays centred). timm's ``EcaModule``
    ignores ``kernel_size`` whenever ``channels`` is given, so a fixed size is built with
    ``channels=None`` (the module does not otherwise need the channel count).
    """


    def __init__(self, channels: int, kernel_size: int | None = None):
        super().__init__()
        check_positive_int("eca", "channels", channels)
        if kernel_size is None:
            self.eca = EcaModule(channels=channels)
        else:
            check_positive_int("eca", "kernel_size", kernel_size)
            if kernel_size % 2 == 0:
                raise ValueError(f"attention 'eca': kernel_size must be odd, got {kernel_size} "
                                 f"(use {kernel_size - 1} or {kernel_size + 1}, or null for the adaptive size)")
            self.eca = EcaModule(channels=None, kernel_size=kernel_size)

    @property
    def kernel_size(self) -> int:
        """Size of the 1-D convolution across channels actually used."""
        return int(self.eca.conv.kernel_size[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.eca(x)
