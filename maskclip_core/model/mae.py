"""The trainable MAE side network: a windowed ViT-B/16 at 512 (ViTDet / SAM image-encoder style).

Parameter names follow timm (`patch_embed.proj`, `blocks.N.attn.qkv`, `attn.rel_pos_h`, ...), so
FAIR's MAE weights (`vit_base_patch16_224.mae`) load by name. All padding sizes and the position
table size are Python constants from the config: nothing in the graph depends on data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import nn

from ..config import MaeConfig
from .layers import merge_heads, scaled_attention


def relative_position_table(rel_pos: torch.Tensor, size: int) -> torch.Tensor:
    """Table [2*size-1, d] -> per-pair embeddings [size(q), size(k), d] (q - k + size - 1 indexing)."""
    coords = torch.arange(size)
    index = coords[:, None] - coords[None, :] + (size - 1)  # [size,size], a constant in the graph
    return rel_pos[index]


def decomposed_rel_pos_bias(q: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """SAM / ViTDet decomposed relative position bias, written as batched matmuls (no einsum).

    q [N,h*w,d] (unscaled), rel_h [h,h,d], rel_w [w,w,d] -> bias [N,h*w,h*w].
    bias[n,(i,j),(k,l)] = q[n,i,j]·rel_h[i,k] + q[n,i,j]·rel_w[j,l].
    """
    n, _, d = q.shape
    r_q = q.reshape(n, h, w, d)
    # height term: for each query row i, [n*w, d] @ [d, h] -> [h, n*w, h(k)]
    bias_h = r_q.permute(1, 0, 2, 3).reshape(h, n * w, d) @ rel_h.transpose(1, 2)
    bias_h = bias_h.reshape(h, n, w, h).permute(1, 0, 2, 3)  # [n,h,w,h(k)]
    # width term: for each query column j, [n*h, d] @ [d, w] -> [w, n*h, w(l)]
    bias_w = r_q.permute(2, 0, 1, 3).reshape(w, n * h, d) @ rel_w.transpose(1, 2)
    bias_w = bias_w.reshape(w, n, h, w).permute(1, 2, 0, 3)  # [n,h,w,w(l)]
    bias = bias_h[..., :, None] + bias_w[..., None, :]  # [n,h,w,h(k),w(l)]
    return bias.reshape(n, h * w, h * w)


class RelPosAttention(nn.Module):
    """Multi-head self-attention over an h x w token grid with decomposed relative position bias."""

    def __init__(self, dim: int, heads: int, size: int):
        super().__init__()
        self.heads = heads
        self.size = size  # window side, or the full grid side in global blocks
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        head_dim = dim // heads
        # zero-initialised, as in ViTDet; MAE weights carry none
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * size - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * size - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape  # [B,h,w,C], h == w == self.size
        qkv = self.qkv(x).reshape(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * self.heads, h * w, c // self.heads).unbind(0)  # each [B*heads,hw,d]
        rel_h = relative_position_table(self.rel_pos_h, self.size)
        rel_w = relative_position_table(self.rel_pos_w, self.size)
        bias = decomposed_rel_pos_bias(q, rel_h, rel_w, self.size, self.size)
        out = scaled_attention(q, k, v, bias)  # [B*heads,hw,d]
        out = merge_heads(out.reshape(b, self.heads, h * w, c // self.heads))  # [B,hw,C]
        return self.proj(out).reshape(b, h, w, c)


def window_partition(x: torch.Tensor, window: int, padded: int) -> torch.Tensor:
    """[B,H,W,C] -> zero-pad to [B,padded,padded,C] -> windows [B*n*n,window,window,C]."""
    _, h, w, c = x.shape
    x = F.pad(x, (0, 0, 0, padded - w, 0, padded - h))
    n = padded // window
    x = x.reshape(-1, n, window, n, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window, window, c)


def window_unpartition(windows: torch.Tensor, window: int, padded: int, size: int) -> torch.Tensor:
    """windows [B*n*n,window,window,C] -> [B,size,size,C] (padding dropped)."""
    n = padded // window
    c = windows.shape[-1]
    x = windows.reshape(-1, n, n, window, window, c).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(-1, padded, padded, c)
    return x[:, :size, :size]


class MaeBlock(nn.Module):
    """Pre-norm ViT block; windowed (window > 0) or global attention over the [B,G,G,C] grid."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, grid: int, window: int, drop_path: float):
        super().__init__()
        self.grid = grid
        self.window = window
        self.padded = -(-grid // window) * window if window else grid  # 32 -> 42 for window 14
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RelPosAttention(dim, heads, window or grid)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)  # [B,G,G,C]
        if self.window:
            h = window_partition(h, self.window, self.padded)  # [B*n*n,ws,ws,C]
            h = self.attn(h)
            h = window_unpartition(h, self.window, self.padded, self.grid)  # [B,G,G,C]
        else:
            h = self.attn(h)
        x = x + self.drop_path(h)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)  # [B,3,S,S] -> [B,G,G,C]


class MaeSideNet(nn.Module):
    """Patch embedding, resized MAE position table, and the 12 blocks (VCAs are interleaved by MaskCLIP)."""

    def __init__(self, cfg: MaeConfig, grid: int):
        super().__init__()
        self.cfg = cfg
        self.grid = grid
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.width)
        # the MAE 224 table including its CLS row, kept as trained so MAE weights load unchanged
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.pretrain_grid**2, cfg.width))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        rates = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]  # linear 0 -> rate
        self.blocks = nn.ModuleList(
            MaeBlock(
                cfg.width,
                cfg.heads,
                cfg.mlp_ratio,
                grid,
                0 if i in cfg.global_blocks else cfg.window_size,
                rates[i],
            )
            for i in range(cfg.depth)
        )

    def abs_pos_embed(self) -> torch.Tensor:
        """The 14x14 table (CLS row dropped) resized bicubically to the grid: [1,G,G,C]."""
        p = self.cfg.pretrain_grid
        table = self.pos_embed[:, 1:].reshape(1, p, p, -1).permute(0, 3, 1, 2)  # [1,C,14,14]
        table = F.interpolate(table, size=(self.grid, self.grid), mode="bicubic", align_corners=False)
        return table.permute(0, 2, 3, 1)  # [1,G,G,C]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """[B,3,S,S] -> tokens [B,G,G,C]."""
        return self.patch_embed(x) + self.abs_pos_embed()
