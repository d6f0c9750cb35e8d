"""Simple feature pyramid from the single MAE map, TVCA text-guided attention, and the mask head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DecoderConfig
from .layers import LayerNorm2d, multihead_attention


class PyramidLevel(nn.Module):
    """conv1x1 -> channel LN -> conv3x3 -> channel LN (ViTDet simple-pyramid output convs)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.lateral = nn.Conv2d(in_ch, out_ch, kernel_size=1)
        self.lateral_norm = LayerNorm2d(out_ch)
        self.output = nn.Conv2d(out_ch, out_ch, kernel_size=3, padding=1)
        self.output_norm = LayerNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_norm(self.output(self.lateral_norm(self.lateral(x))))


class SimplePyramid(nn.Module):
    """F [B,C,G,G] -> x4, x2, x1, x0.5 levels -> each to `channels` at 4G x 4G -> fused [B,channels,4G,4G]."""

    def __init__(self, dim: int, channels: int, grid: int):
        super().__init__()
        self.size = 4 * grid
        self.up4 = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2),
            LayerNorm2d(dim // 2),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 2, dim // 4, kernel_size=2, stride=2),
        )
        self.up2 = nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2)
        self.down2 = nn.MaxPool2d(kernel_size=2)
        self.levels = nn.ModuleList(
            [
                PyramidLevel(dim // 4, channels),  # x4: 4G
                PyramidLevel(dim // 2, channels),  # x2: 2G
                PyramidLevel(dim, channels),  # x1: G
                PyramidLevel(dim, channels),  # x0.5: G/2
            ]
        )
        self.fuse = nn.Conv2d(4 * channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [self.up4(x), self.up2(x), x, self.down2(x)]
        out = []
        for level, f in zip(self.levels, feats, strict=True):
            f = level(f)
            if f.shape[-1] != self.size:
                f = F.interpolate(f, size=(self.size, self.size), mode="bilinear", align_corners=False)
            out.append(f)
        return self.fuse(torch.cat(out, dim=1))  # [B,channels,4G,4G]


class TextGuidedAttention(nn.Module):
    """TVCA: the projected fake-class text embedding queries all pixel features (one query per image)."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, pixels: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """pixels [B,C,H,W], query [C] -> pixels + attended vector broadcast to every pixel."""
        b, c, _, _ = pixels.shape
        tokens = pixels.flatten(2).transpose(1, 2)  # [B,H*W,C]
        q = query.reshape(1, 1, c).expand(b, 1, c)  # [B,1,C]
        out = multihead_attention(self.attn, q, tokens, tokens)  # [B,1,C]
        return pixels + out.reshape(b, c, 1, 1)


class MaskDecoder(nn.Module):
    """Pyramid -> TVCA -> channel LN -> dropout -> conv1x1 = mask logits [B,1,4G,4G]."""

    def __init__(self, dim: int, cfg: DecoderConfig, grid: int):
        super().__init__()
        self.pyramid = SimplePyramid(dim, cfg.channels, grid)
        self.tvca = TextGuidedAttention(cfg.channels, cfg.tvca_heads)
        self.norm = LayerNorm2d(cfg.channels)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Conv2d(cfg.channels, 1, kernel_size=1)

    def forward(self, features: torch.Tensor, text_query: torch.Tensor) -> torch.Tensor:
        x = self.tvca(self.pyramid(features), text_query)
        return self.head(self.dropout(self.norm(x)))
