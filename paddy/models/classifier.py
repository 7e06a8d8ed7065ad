"""The image classifier: backbone feature map -> attention -> head. Knows nothing of Lightning."""

from __future__ import annotations

import torch
from torch import nn


class ImageClassifier(nn.Module):
    """``backbone`` (feature map) -> ``attention`` (same shape) -> ``head`` (logits).

    The parameter groups the optimizer needs are :meth:`backbone_parameters` and
    :meth:`head_parameters` (attention + head: the newly initialised parts).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, attention: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.attention = attention if attention is not None else nn.Identity()
        self.head = head

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.attention(self.backbone(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(images))

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.attention.parameters()) + list(self.head.parameters())
