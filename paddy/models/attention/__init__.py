"""Attention blocks that map a feature map ``B x C x H x W`` to the same shape.

| ``attention=`` | block | paper | knobs |
|---|---|---|---|
| ``none`` | :class:`torch.nn.Identity` | | |
| ``se`` | :class:`SqueezeExcite` | Hu et al., CVPR 2018 | reduction |
| ``ca`` | :class:`CoordinateAttention` | Hou et al., CVPR 2021 | reduction |
| ``eca`` | :class:`EfficientChannelAttention` | Wang et al., CVPR 2020 | kernel_size |
| ``cbam`` | :class:`CBAM` | Woo et al., ECCV 2018 | reduction, kernel_size, channel, spatial |
| ``bot`` | :class:`BoTSelfAttention` | Srinivas et al., CVPR 2021 | heads, dim_head, ... |
| ``bot_linear`` | :class:`LinearSelfAttention` | Katharopoulos et al., 2020; Cai et al., 2023 | heads, ... |
| ``hybrid`` | :class:`HybridAttention` | ca then bot | reduction, heads, ... |

A block is named in ``conf/attention/<name>.yaml`` by ``_target_`` (any module class that takes the
channel count first; paddy's own or a user's, see ``PADDY_TRUSTED_TARGETS``). Its knobs are the
class's other keyword arguments; ``name`` (the label in reports) and ``placement`` (``head`` |
``blocks``) are paddy's own keys. :func:`attention_spec` reads such a config, checks it in this one
place and returns how to make the block for any channel count.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from paddy.errors import PaddyError
from paddy.models.attention.bot import BoTSelfAttention
from paddy.models.attention.cbam import CBAM
from paddy.models.attention.coord import CoordinateAttention
from paddy.models.attention.eca import EfficientChannelAttention
from paddy.models.attention.hybrid import HybridAttention
from paddy.models.attention.linear import LinearSelfAttention
from paddy.models.attention.se import SqueezeExcite

PLACEMENTS = ("head", "blocks")
RESERVED = ("name", "placement")  # paddy's keys in conf/attention: not arguments of the block


class AttentionConfigError(PaddyError):
    """``cfg.attention`` names a block that cannot be made as configured."""


def _block_class(target: str | type) -> type:
    if not isinstance(target, str):
        return target
    from hydra.utils import get_class

    return get_class(target)


def attention_knobs(target: str | type) -> tuple[str, ...]:
    """The knobs of attention class ``target`` (a class or its dotted path): its keyword arguments after
    the channel count."""
    params = list(inspect.signature(_block_class(target)).parameters.values())[1:]
    return tuple(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


@dataclass(frozen=True)
class AttentionSpec:
    """A checked ``cfg.attention``: :meth:`make` builds the block for a ``channels``-channel map."""

    name: str
    target: str
    placement: str = "head"
    knobs: dict[str, Any] = field(default_factory=dict)
    factory: Callable[..., nn.Module] | None = None  # None: no attention (torch.nn.Identity)

    @property
    def enabled(self) -> bool:
        return self.factory is not None

    def make(self, channels: int) -> nn.Module:
        return nn.Identity() if self.factory is None else self.factory(int(channels))


def attention_spec(attention: Mapping[str, Any] | None) -> AttentionSpec:
    """``cfg.attention`` (a plain mapping) -> :class:`AttentionSpec`; the one place that checks it.

    Knobs set to None are left at the class's default; a key that is not a keyword argument of the
    class, an unknown placement, or a class outside the trusted targets is an AttentionConfigError."""
    from paddy.config import shipped_target, trusted_callable

    options = {k: v for k, v in dict(attention or {}).items() if k != "_partial_"}
    name = str(options.pop("name", None) or "none")
    placement = str(options.pop("placement", None) or "head")
    target = options.pop("_target_", None) or shipped_target("attention", name)
    if placement not in PLACEMENTS:
        raise AttentionConfigError(f"attention.placement={placement!r} (expected one of: {', '.join(PLACEMENTS)})")
    factory = trusted_callable(target, f"attention {name!r}", AttentionConfigError)
    knobs = {k: v for k, v in options.items() if v is not None}
    accepted = attention_knobs(factory)
    unknown = sorted(set(knobs) - set(accepted))
    if unknown:
        has = ", ".join(accepted) or "none"
        raise AttentionConfigError(f"attention {name!r} ({target}) has no knob {unknown[0]!r} (its knobs: {has})")
    if factory is nn.Identity:
        return AttentionSpec(name, target, placement)
    return AttentionSpec(name, target, placement, knobs, functools.partial(factory, **knobs))


@functools.cache
def _named_target(name: str) -> str:
    from paddy.config import shipped_target

    return shipped_target("attention", name)


def create_attention(name: str, channels: int, **knobs: object) -> nn.Module:
    """Paddy's attention block ``name`` (``conf/attention/<name>.yaml``: its class, at the class's
    defaults) for a ``channels``-channel map, with ``knobs``; ``"none"``: identity."""
    return attention_spec({"_target_": _named_target(name), "name": name, **knobs}).make(channels)


__all__ = [
    "PLACEMENTS",
    "AttentionConfigError",
    "AttentionSpec",
    "CBAM",
    "BoTSelfAttention",
    "CoordinateAttention",
    "EfficientChannelAttention",
    "HybridAttention",
    "LinearSelfAttention",
    "SqueezeExcite",
    "attention_knobs",
    "attention_spec",
    "create_attention",
]
