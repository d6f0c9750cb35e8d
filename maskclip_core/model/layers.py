"""Small building blocks shared by the MaskCLIP modules.

Attention is written out explicitly (projections, constant scale, softmax) rather than through
nn.MultiheadAttention's forward: its fast path and fused kernels do not export cleanly to ONNX /
TensorRT. Parameters still live in nn.MultiheadAttention containers (in_proj_weight, out_proj), the
layout of open_clip's CLIP weights and of the authors' VSA attention. Most other names of ours differ
from the authors' checkpoints (their TVCA, for one, splits in_proj into to_q and to_kv):
maskclip_core/authors.py maps them (`maskclip-import`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of an NCHW map (SAM's LayerNorm2d, eps 1e-6).

    Computed as NHWC F.layer_norm so it exports as one LayerNormalization op, which fp16 / TensorRT
    conversions can keep in fp32 by op type.
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.channels = channels  # a Python int: the ONNX exporter needs a constant normalized_shape
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # [B,H,W,C]
        x = F.layer_norm(x, (self.channels,), self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)  # [B,C,H,W]


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B,L,E] -> [B,heads,L,E/heads]."""
    b, n, e = x.shape
    return x.reshape(b, n, heads, e // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B,heads,L,d] -> [B,L,heads*d]."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def scaled_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v on [..., L, d] tensors, with the scale a Python constant."""
    scale = q.shape[-1] ** -0.5
    attn = (q * scale) @ k.transpose(-2, -1)
    if bias is not None:
        attn = attn + bias
    return attn.softmax(dim=-1) @ v


def multihead_attention(
    mha: nn.MultiheadAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """What nn.MultiheadAttention(batch_first=True, dropout=0) computes, written out.

    query [B,Lq,E], key/value [B,Lk,E] -> [B,Lq,E]. attn_mask is additive [Lq,Lk].
    """
    e, heads = mha.embed_dim, mha.num_heads
    w, b = mha.in_proj_weight, mha.in_proj_bias
    if query is key and key is value:  # self-attention: one GEMM for q, k and v
        q, k, v = F.linear(query, w, b).chunk(3, dim=-1)
    else:
        q = F.linear(query, w[:e], b[:e])
        k = F.linear(key, w[e : 2 * e], b[e : 2 * e])
        v = F.linear(value, w[2 * e :], b[2 * e :])
    out = scaled_attention(split_heads(q, heads), split_heads(k, heads), split_heads(v, heads), attn_mask)
    return mha.out_proj(merge_heads(out))
