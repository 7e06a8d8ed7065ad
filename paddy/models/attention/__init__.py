"""Attention blocks that map a feature map ``B x C x H x W`` to the same shape, and their factory.

| name | block | paper | knobs |
|---|---|---|---|
| ``none`` | :class:`torch.nn.Identity` | | |
| ``se`` | :class:`SqueezeExcite` | Hu et al., CVPR 2018 | reduction |
| ``ca`` | :class:`CoordinateAttention` | Hou et al., CVPR 2021 | reduction |
| ``eca`` | :class:`EfficientChannelAttention` | Wang et al., CVPR 2020 | kernel_size |
| ``cbam`` | :class:`CBAM` | Woo et al., ECCV 2018 | reduction, kernel_size, channel, spatial |
| ``bot`` | :class:`BoTSelfAttention` | Srinivas et al., CVPR 2021 | heads |
| ``bot_linear`` | :class:`LinearSelfAttention` | Katharopoulos et al., 2020; Cai et al., 2023 | heads |
| ``hybrid`` | :class:`HybridAttention` | ca then bot | reduction, heads |

Each block class lists the knobs it accepts in ``KNOBS``; :func:`create_attention` refuses any
other knob that is set (``None`` means "not set", so a config can carry every knob as null).
"""

from __future__ import annotations

from torch import nn

from paddy.models.attention.bot import BoTSelfAttention
from paddy.models.attention.cbam import CBAM
from paddy.models.attention.coord import CoordinateAttention
from paddy.models.attention.eca import EfficientChannelAttention
from paddy.models.attention.hybrid import HybridAttention
from paddy.models.attention.linear import LinearSelfAttention
from paddy.models.attention.se import SqueezeExcite

ATTENTION_BLOCKS: dict[str, type[nn.Module]] = {
    "none": nn.Identity,
    "se": SqueezeExcite,
    "ca": CoordinateAttention,
    "eca": EfficientChannelAttention,
    "cbam": CBAM,
    "bot": BoTSelfAttention,
    "bot_linear": LinearSelfAttention,
    "hybrid": HybridAttention,
}


def _block(name: str) -> type[nn.Module]:
    if name not in ATTENTION_BLOCKS:
        raise ValueError(f"unknown attention {name!r} (available: {', '.join(ATTENTION_BLOCKS)})")
    return ATTENTION_BLOCKS[name]


def attention_knobs(name: str) -> tuple[str, ...]:
    """The knobs (constructor arguments besides ``channels``) that attention ``name`` accepts."""
    return tuple(getattr(_block(name), "KNOBS", ()))


def create_attention(name: str, channels: int, **knobs: object) -> nn.Module:
    """The attention block ``name`` for a ``channels``-channel feature map (``"none"``: identity).

    Knobs set to ``None`` are left at the block's default; a set knob the block does not have is
    a ValueError naming it and the block's knobs.
    """
    block = _block(name)
    accepted = attention_knobs(name)
    given = {key: value for key, value in knobs.items() if value is not None}
    for key in given:
        if key not in accepted:
            has = f"it has: {', '.join(accepted)}" if accepted else "it has no knobs"
            raise ValueError(f"attention {name!r} has no knob {key!r} ({has})")
    if block is nn.Identity:
        return nn.Identity()
    return block(channels, **given)


__all__ = [
    "ATTENTION_BLOCKS",
    "CBAM",
    "BoTSelfAttention",
    "CoordinateAttention",
    "EfficientChannelAttention",
    "HybridAttention",
    "LinearSelfAttention",
    "SqueezeExcite",
    "attention_knobs",
    "create_attention",
]
