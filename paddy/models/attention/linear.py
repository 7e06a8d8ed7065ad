"""Linear self-attention with a ReLU feature map (Katharopoulos et al., "Transformers are RNNs:
Fast Autoregressive Transformers with Linear Attention", ICML 2020), in the ReLU form used by
EfficientViT's LiteMLA (Cai, Li, Gan and Han, "EfficientViT: Multi-Scale Linear Attention for
High-Resolution Dense Prediction", ICCV 2023).

With ``phi = relu``, per head::

    out_i = phi(q_i)^T (sum_j phi(k_j) v_j^T) / (phi(q_i)^T sum_j phi(k_j) + eps)

which equals softmax-free attention with weights ``phi(q_i) . phi(k_j)`` normalised over j, but
costs O(N) in the number of positions N = H * W instead of O(N^2). There is no position encoding
(the block is permutation-equivariant over positions), so it runs at any feature-map size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from paddy.models.attention._common import ResidualSelfAttention, check_heads


def relu_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """ReLU linear attention of ``B x heads x N x D`` tensors, computed in float32 (even under autocast).

    The sums over N and the division by the normaliser lose too much in half precision, so
    autocast is switched off here and the result is float32.
    """
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k, v = F.relu(q.float()), F.relu(k.float()), v.float()
        kv = torch.einsum("bhnd,bhne->bhde", k, v)  # sum_j phi(k_j) v_j^T: D x E per head
        numerator = torch.einsum("bhnd,bhde->bhne", q, kv)
        denominator = torch.einsum("bhnd,bhd->bhn", q, k.sum(dim=2))
        return numerator / (denominator.unsqueeze(-1) + eps)


class LinearSelfAttention(ResidualSelfAttention):
    """ReLU linear attention as a residual drop-in block: ``x + gamma * proj(attn(LayerNorm(x)))``.

    Same residual, pre-norm and LayerScale convention as
    :class:`~paddy.models.attention.bot.BoTSelfAttention`; ``heads`` must divide ``channels``.
    """

    NAME = "bot_linear"

    def __init__(self, channels: int, heads: int = 4, eps: float = 1e-6, init_scale: float = 1e-2):
        super().__init__()
        dim_head = check_heads(self.NAME, channels, heads)
        self._build(channels, heads, dim_head, init_scale)
        self.eps = eps

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return relu_linear_attention(q, k, v, self.eps)
