"""BoTNet multi-head self-attention (Srinivas et al., "Bottleneck Transformers for Visual
Recognition", CVPR 2021).

Every position of the feature map attends to every other one (``N = H * W`` tokens, cost
O(N^2)). The logit between query position (i, j) and key position (k, l) is
``q . k + q . (r_h[k - i] + r_w[l - j])``: content plus a 2-D relative position encoding that
is factorised into a height table ``r_h`` and a width table ``r_w`` of per-offset vectors.

BoTNet trains at one resolution. Here the tables are stored for a base feature-map size
(``feat_size``, default 7 = a 224 px image at stride 32) and linearly interpolated along the
offset axis to the actual ``2H - 1`` / ``2W - 1`` offsets in every forward pass (with
``align_corners=True``, so offset 0 stays offset 0 and the extreme offsets map onto each other).
The same block therefore runs at any size, e.g. 7x7 to 16x16 for 224-512 px inputs; relative
offsets are measured in fractions of the feature map, as if the same picture were resized.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from paddy.models.attention._common import ResidualSelfAttention, check_heads, check_positive_int

DEFAULT_FEAT_SIZE = 7


def resize_rel_table(table: torch.Tensor, length: int) -> torch.Tensor:
    """A ``(2L0 - 1) x D`` table of relative-offset vectors linearly resampled to ``(2L - 1) x D``."""
    offsets = 2 * length - 1
    if table.shape[0] == offsets:
        return table
    resized = F.interpolate(table.float().t().unsqueeze(0), size=offsets, mode="linear", align_corners=True)
    return resized.squeeze(0).t().to(table.dtype)


def relative_logits(q: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Relative position logits ``B x heads x N x N`` for queries ``q`` (``B x heads x N x D``).

    ``rel_h`` is ``(2H - 1) x D`` and ``rel_w`` is ``(2W - 1) x D``; entry ``H - 1 + d`` holds
    the vector for a key ``d`` rows below (or ``d`` columns right of) the query.
    """
    h, w = size
    b, heads, n, d = q.shape
    q = q.reshape(b, heads, h, w, d)
    rows = torch.arange(h, device=q.device)
    cols = torch.arange(w, device=q.device)
    emb_h = rel_h[rows[None, :] - rows[:, None] + h - 1]  # H(query row) x H(key row) x D
    emb_w = rel_w[cols[None, :] - cols[:, None] + w - 1]  # W(query col) x W(key col) x D
    logits_h = torch.einsum("bnijd,ikd->bnijk", q, emb_h.to(q.dtype))  # B x heads x H x W x H
    logits_w = torch.einsum("bnijd,jld->bnijl", q, emb_w.to(q.dtype))  # B x heads x H x W x W
    logits = logits_h.unsqueeze(-1) + logits_w.unsqueeze(-2)  # B x heads x H x W x H x W
    return logits.reshape(b, heads, n, n)


class BoTSelfAttention(ResidualSelfAttention):
    """BoTNet MHSA as a residual drop-in block: ``x + gamma * proj(MHSA(LayerNorm(x)))``.

    Args:
        channels: channels C of the feature map (in and out).
        heads: attention heads; must divide ``channels`` unless ``dim_head`` is given.
        dim_head: channels per head (default ``channels // heads``).
        feat_size: feature-map size (int or (H, W)) the relative tables are stored at; any other
            size at run time is served by interpolating them (see the module docstring).
        init_scale: initial value of the LayerScale ``gamma`` (small: the block starts near the
            identity; see :class:`~paddy.models.attention._common.ResidualSelfAttention`).

    Feature maps smaller than 2x2 are refused: attention over a single position is only a linear
    map of it, usually a sign that the input images are too small for the backbone's stride.
    """

    NAME = "bot"

    def __init__(self, channels: int, heads: int = 4, dim_head: int | None = None,
                 feat_size: int | tuple[int, int] | None = None, init_scale: float = 1e-2):
        super().__init__()
        if dim_head is None:
            dim_head = check_heads(self.NAME, channels, heads)
        else:
            check_positive_int(self.NAME, "channels", channels)
            check_positive_int(self.NAME, "heads", heads)
            check_positive_int(self.NAME, "dim_head", dim_head)
        if feat_size is None:
            feat_size = DEFAULT_FEAT_SIZE
        fh, fw = (feat_size, feat_size) if isinstance(feat_size, int) else tuple(feat_size)
        for side in (fh, fw):
            if check_positive_int(self.NAME, "feat_size", side) < 2:
                raise ValueError(f"attention {self.NAME!r}: feat_size={feat_size} is too small (at least 2)")
        self._build(channels, heads, dim_head, init_scale)
        self.feat_size = (fh, fw)
        self.scale = dim_head ** -0.5
        self.rel_h = nn.Parameter(torch.randn(2 * fh - 1, dim_head) * self.scale)
        self.rel_w = nn.Parameter(torch.randn(2 * fw - 1, dim_head) * self.scale)

    def check_input(self, x: torch.Tensor) -> None:
        super().check_input(x)
        h, w = x.shape[-2:]
        if h < 2 or w < 2:
            raise ValueError(f"feature map {h}x{w} is too small for {self.NAME} attention (needs at least 2x2, "
                             f"channels={self.channels}, heads={self.heads}); use a larger data.image_size "
                             f"(the backbone divides it by its stride, usually 32)")

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        q = q * self.scale
        rel_h = resize_rel_table(self.rel_h, size[0])
        rel_w = resize_rel_table(self.rel_w, size[1])
        logits = q @ k.transpose(-1, -2) + relative_logits(q, rel_h, rel_w, size)
        attn = logits.float().softmax(dim=-1).to(v.dtype)
        return attn @ v
