"""VSA: self-attention over the CLIP CLS taps, then the dot-product detection head against T."""

from __future__ import annotations

import torch
from torch import nn

from .layers import multihead_attention


class VisualSelfAttention(nn.Module):
    """cls [B,T,Wc] -> g [B,D]: one post-norm attention layer (no MLP), mean over taps, bias-free projection."""

    def __init__(self, clip_width: int, embed_dim: int, heads: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(clip_width, heads, batch_first=True)
        self.norm = nn.LayerNorm(clip_width)
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(clip_width, embed_dim, bias=False)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        h = multihead_attention(self.attn, cls, cls, cls)  # [B,T,Wc]
        h = self.dropout(self.norm(h + cls))
        return self.proj(h.mean(dim=1))  # [B,D]


def detection_logits(g: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """g [B,D] (not normalised), text [2,D] (normalised) -> logits [B,2]: plain dot product, no scale.

    The paper says cosine similarity; the authors' code (which produced the numbers) does this.
    """
    return g @ text.t()
