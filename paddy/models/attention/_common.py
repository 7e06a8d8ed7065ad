"""Shared pieces of the attention blocks: argument checks and the residual self-attention wrapper."""

from __future__ import annotations

import torch
from timm.layers import LayerNorm2d, LayerScale2d
from torch import nn


def check_positive_int(block: str, knob: str, value: object) -> int:
    """``value`` as an int >= 1, or a ValueError naming the block, the knob and the bad value."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"attention {block!r}: {knob} must be a positive integer, got {value!r}")
    return value


def check_heads(block: str, channels: int, heads: int) -> int:
    """Heads that split ``channels`` evenly; returns the channels per head."""
    check_positive_int(block, "channels", channels)
    check_positive_int(block, "heads", heads)
    if channels % heads:
        divisors = [h for h in range(1, min(channels, 16) + 1) if channels % h == 0]
        raise ValueError(f"attention {block!r}: channels={channels} is not divisible by heads={heads} "
                         f"(heads up to 16 that divide {channels}: {', '.join(map(str, divisors))})")
    return channels // heads


class ResidualSelfAttention(nn.Module):
    """``x + gamma * proj(attend(norm(x)))``: a self-attention drop-in that keeps ``B x C x H x W``.

    * ``norm`` is a per-position LayerNorm over channels (:class:`timm.layers.LayerNorm2d`), the
      pre-norm of transformer blocks: backbone feature maps can be large (post-ReLU, unnormalised
      channels), which would saturate the softmax; LayerNorm does not depend on the batch size.
    * ``proj`` is a 1x1 convolution from ``heads * dim_head`` back to ``channels``.
    * ``gamma`` is a learnable per-channel scale (LayerScale, Touvron et al., "Going deeper with
      image transformers", ICCV 2021) initialised to the small value ``init_scale`` (default 1e-2),
      so a freshly inserted block is nearly the identity and does not disturb a pretrained
      backbone's features. It is not zero (as in ReZero) so that every parameter of the block gets
      a gradient from the first step.

    Subclasses build ``self.qkv`` (1x1 conv to ``3 * heads * dim_head``) via :meth:`_build` and
    implement :meth:`attend` on ``q, k, v`` of shape ``B x heads x N x dim_head`` (``N = H * W``).
    """

    def _build(self, channels: int, heads: int, dim_head: int, init_scale: float) -> None:
        self.channels, self.heads, self.dim_head = channels, heads, dim_head
        inner = heads * dim_head
        self.norm = LayerNorm2d(channels)
        self.qkv = nn.Conv2d(channels, 3 * inner, kernel_size=1, bias=False)
        self.proj = nn.Conv2d(inner, channels, kernel_size=1)
        self.gamma = LayerScale2d(channels, init_values=init_scale)

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"{type(self).__name__} expects B x {self.channels} x H x W, got {tuple(x.shape)}")

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        b, _, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, self.dim_head, h * w).transpose(-1, -2)
        q, k, v = qkv.unbind(1)  # each B x heads x N x dim_head
        out = self.attend(q, k, v, (h, w))  # B x heads x N x dim_head
        out = out.to(q.dtype).transpose(-1, -2).reshape(b, self.heads * self.dim_head, h, w)
        return x + self.gamma(self.proj(out))
