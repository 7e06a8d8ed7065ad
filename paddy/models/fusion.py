"""The old scripts' "lightweight" DCT-fusion classifier: a CNN branch and a DCT-coefficient branch.

::

    images -> backbone -> attention -> global avg pool ---------------> B x cnn_channels --+
    dct    -> [Linear -> BatchNorm1d -> ReLU -> Dropout(0.2)] x 2 (1024 -> 256 -> 128) ----+-> concat
    concat -> Linear -> BN -> ReLU -> Dropout(0.3) -> Linear -> BN -> ReLU -> Dropout(0.2) -> Linear
              (cnn_channels + 128 -> 256 -> 128 -> num_classes)

The DCT input is :class:`paddy.data.features.DCTFeatures` of each image (1024 low-frequency
coefficients for ``block=32``); :attr:`DCTFusionClassifier.input_features` names it so the data
module knows to compute it and pass it as the second argument of ``forward``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _mlp(in_features: int, hidden: Sequence[int], dropout: Sequence[float]) -> list[nn.Module]:
    """``[Linear -> BatchNorm1d -> ReLU -> Dropout]`` per hidden width."""
    layers: list[nn.Module] = []
    width = in_features
    for size, drop in zip(hidden, dropout):
        if not 0 <= drop < 1:
            raise ValueError(f"dropout={drop} (expected 0 <= dropout < 1)")
        layers += [nn.Linear(width, size), nn.BatchNorm1d(size), nn.ReLU(inplace=True), nn.Dropout(drop)]
        width = size
    return layers


def _per_layer(value: float | Sequence[float], hidden: Sequence[int], name: str) -> list[float]:
    values = [float(v) for v in value] if isinstance(value, Sequence) else [float(value)] * len(hidden)
    if len(values) != len(hidden):
        raise ValueError(f"{name} has {len(values)} values for {len(hidden)} hidden layers")
    return values


class DCTFusionClassifier(nn.Module):
    """Logits from an image (CNN branch) and its DCT coefficients (MLP branch), fused by an MLP.

    Args:
        cnn: a feature-map backbone (``B x C x H x W``), e.g. :func:`paddy.models.backbone.create_backbone`.
        cnn_channels: ``C``, the backbone's output channels (timm's ``cnn.num_features``).
        num_classes: number of classes.
        dct_dim: length of the DCT feature vector (``block * block``).
        attention: a block on the feature map that keeps its shape; ``None`` = identity.
        dct_hidden, dct_dropout: the DCT branch's widths and dropout(s); its output width is
            ``dct_hidden[-1]``.
        hidden, dropout: the fused classifier's hidden widths and their dropouts.

    The defaults are the old scripts' layers. Parameter groups for the optimizer, as in
    :class:`~paddy.models.classifier.ImageClassifier`: :meth:`backbone_parameters` (the CNN) and
    :meth:`head_parameters` (attention, DCT branch and fused classifier: the newly initialised parts).
    """

    input_features: tuple[str, ...] = ("dct",)
    """Extra per-sample inputs ``forward`` takes after the images, by feature name."""

    def __init__(self, cnn: nn.Module, cnn_channels: int, num_classes: int, dct_dim: int = 1024,
                 attention: nn.Module | None = None, dct_hidden: Sequence[int] = (256, 128),
                 dct_dropout: float | Sequence[float] = 0.2, hidden: Sequence[int] = (256, 128),
                 dropout: float | Sequence[float] = (0.3, 0.2)):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes} (expected >= 1)")
        if cnn_channels < 1 or dct_dim < 1:
            raise ValueError(f"cnn_channels={cnn_channels}, dct_dim={dct_dim} (expected >= 1)")
        dct_hidden, hidden = list(dct_hidden), list(hidden)
        if not dct_hidden:
            raise ValueError("dct_hidden needs at least one layer (its last width is the DCT branch's output)")
        self.backbone = cnn
        self.attention = attention if attention is not None else nn.Identity()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.dct_mlp = nn.Sequential(*_mlp(dct_dim, dct_hidden, _per_layer(dct_dropout, dct_hidden, "dct_dropout")))
        fused = _mlp(cnn_channels + dct_hidden[-1], hidden, _per_layer(dropout, hidden, "dropout"))
        self.head = nn.Sequential(*fused, nn.Linear(hidden[-1] if hidden else cnn_channels + dct_hidden[-1],
                                                    num_classes))
        self.cnn_channels = cnn_channels
        self.dct_dim = dct_dim
        self.num_classes = num_classes

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The attended feature map ``B x C x H' x W'`` (before pooling)."""
        return self.attention(self.backbone(images))

    def forward(self, images: torch.Tensor, dct: torch.Tensor) -> torch.Tensor:
        if dct.ndim != 2 or dct.shape[1] != self.dct_dim or dct.shape[0] != images.shape[0]:
            raise ValueError(f"dct features of shape {tuple(dct.shape)} for {images.shape[0]} images "
                             f"(expected {images.shape[0]} x {self.dct_dim})")
        cnn = self.pool(self.forward_features(images))
        if cnn.shape[1] != self.cnn_channels:
            raise ValueError(f"the backbone gives {cnn.shape[1]} channels, the model was built for "
                             f"cnn_channels={self.cnn_channels}")
        return self.head(torch.cat([cnn, self.dct_mlp(dct.to(cnn.dtype))], dim=1))

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.attention.parameters()) + list(self.dct_mlp.parameters()) + list(self.head.parameters())
