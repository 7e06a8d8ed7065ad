"""The image classifier: backbone feature map -> attention -> head. Knows nothing of Lightning."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from paddy.models.backbone import create_backbone, feature_channels
from paddy.models.heads import ClassifierHead


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


def build_classifier(num_classes: int, backbone: dict, head: dict | None = None) -> ImageClassifier:
    """Build an :class:`ImageClassifier` from plain config dicts (``cfg.backbone``, ``cfg.model.head``).

    ``backbone`` holds ``name``, ``pretrained``, ``pretrained_file``, ``drop_path_rate`` and any
    extra timm keyword arguments under ``kwargs``.
    """
    options = dict(backbone)
    name = options.pop("name")
    extra = dict(options.pop("kwargs", None) or {})
    net = create_backbone(name, pretrained=options.get("pretrained", False),
                          pretrained_file=options.get("pretrained_file"),
                          drop_path_rate=options.get("drop_path_rate", 0.0), **extra)
    head_options = dict(head or {})
    hidden: Sequence[int] = head_options.pop("hidden", None) or ()
    return ImageClassifier(net, ClassifierHead(feature_channels(net), num_classes, hidden=hidden, **head_options))
