"""Classifier heads: global pooling, then dropout + linear, or the old scripts' MLP.

``hidden=[256, 128]`` gives ``Linear -> BatchNorm -> ReLU -> Dropout`` per hidden layer before the
final linear layer, as the per-model scripts had.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ClassifierHead(nn.Module):
    """``B x C x H x W`` feature map (or ``B x C`` vector) -> ``B x num_classes`` logits."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.2,
                 hidden: Sequence[int] = (), hidden_dropout: float | Sequence[float] = 0.2, pool: str = "avg"):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes} (expected >= 1)")
        if not 0 <= dropout < 1:
            raise ValueError(f"head.dropout={dropout} (expected 0 <= dropout < 1)")
        if pool not in ("avg", "max"):
            raise ValueError(f"head.pool={pool!r} (expected avg or max)")
        self.pool = nn.AdaptiveAvgPool2d(1) if pool == "avg" else nn.AdaptiveMaxPool2d(1)
        hidden = list(hidden or [])
        drops = list(hidden_dropout) if isinstance(hidden_dropout, Sequence) else [hidden_dropout] * len(hidden)
        if len(drops) != len(hidden):
            raise ValueError(f"head.hidden_dropout has {len(drops)} values for {len(hidden)} hidden layers")
        layers: list[nn.Module] = []
        width = in_features
        for size, drop in zip(hidden, drops):
            layers += [nn.Linear(width, size), nn.BatchNorm1d(size), nn.ReLU(inplace=True), nn.Dropout(drop)]
            width = size
        layers += [nn.Dropout(dropout), nn.Linear(width, num_classes)]
        self.mlp = nn.Sequential(*layers)
        self.num_classes = num_classes

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim == 4:
            features = self.pool(features).flatten(1)
        return self.mlp(features)
