"""VCA: visual cross-attention injecting one CLIP tap into the MAE stream (7 independent copies)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import LayerNorm2d, merge_heads, scaled_attention, split_heads


class VisualCrossAttention(nn.Module):
    """Queries from the CLIP map, keys/values from the MAE tokens; residual into the MAE stream."""

    def __init__(self, clip_width: int, dim: int, heads: int, grid: int):
        super().__init__()
        self.heads = heads
        self.grid = grid
        self.clip_proj = nn.Conv2d(clip_width, dim, kernel_size=1)
        self.clip_norm = LayerNorm2d(dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, clip_map: torch.Tensor) -> torch.Tensor:
        """x [B,G,G,C] MAE tokens, clip_map [B,Wc,g,g] -> [B,G,G,C]."""
        b, g, _, c = x.shape
        clip = F.interpolate(clip_map, size=(self.grid, self.grid), mode="bilinear", align_corners=False)
        clip = self.clip_norm(self.clip_proj(clip))  # [B,C,G,G]
        clip = clip.flatten(2).transpose(1, 2)  # [B,G*G,C]
        tokens = x.reshape(b, g * g, c)  # no pre-norm on the MAE side
        q = split_heads(self.q(clip), self.heads)
        k = split_heads(self.k(tokens), self.heads)
        v = split_heads(self.v(tokens), self.heads)
        out = merge_heads(scaled_attention(q, k, v))  # [B,G*G,C]
        return x + self.norm(self.proj(out)).reshape(b, g, g, c)
