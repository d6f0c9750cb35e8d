"""Frozen CLIP (open_clip): the visual tower with its ln_2 taps, and the text tower for the prompts.

The taps are the OUTPUT OF ln_2 (the normalised state entering each tapped block's MLP), returned
explicitly from the forward: hooks do not survive ONNX export.
"""

from __future__ import annotations

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from torch import nn

from ..config import ClipConfig
from .layers import multihead_attention


def build_open_clip(cfg: ClipConfig) -> open_clip.model.CLIP:
    """An open_clip CLIP (QuickGELU, as OpenAI trained it) with randomly initialised weights."""
    vision = CLIPVisionCfg(
        layers=cfg.layers,
        width=cfg.width,
        head_width=cfg.width // cfg.heads,
        patch_size=cfg.patch_size,
        image_size=cfg.image_size,
    )
    text = CLIPTextCfg(
        context_length=cfg.context_length,
        vocab_size=cfg.vocab_size,
        width=cfg.text_width,
        heads=cfg.text_heads,
        layers=cfg.text_layers,
    )
    return open_clip.model.CLIP(embed_dim=cfg.embed_dim, vision_cfg=vision, text_cfg=text, quick_gelu=True)


class ClipTower(nn.Module):
    """Holds the whole frozen open_clip model; computes visual taps and prompt embeddings."""

    def __init__(self, cfg: ClipConfig):
        super().__init__()
        self.cfg = cfg
        self.model = build_open_clip(cfg)
        self.model.requires_grad_(False)

    def visual_taps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B,3,224,224] -> cls [B,T,W], maps [B,T,W,g,g] (T taps, W width, g grid)."""
        visual = self.model.visual
        tokens = visual._embeds(x)  # [B,1+g*g,W]: conv1, CLS, positions, ln_pre
        taps = []
        last = max(self.cfg.taps)
        for i, block in enumerate(visual.transformer.resblocks[: last + 1]):
            h = block.ln_1(tokens)
            tokens = tokens + block.ls_1(multihead_attention(block.attn, h, h, h))
            mid = block.ln_2(tokens)  # the tap: ln_2 output
            if i in self.cfg.taps:
                taps.append(mid)
            if i < last:  # the last tapped block's MLP feeds nothing
                tokens = tokens + block.ls_2(block.mlp(mid))
        stacked = torch.stack(taps, dim=1)  # [B,T,1+g*g,W]
        b, t, _, w = stacked.shape
        g = self.cfg.grid
        cls = stacked[:, :, 0]  # [B,T,W]
        maps = stacked[:, :, 1:].transpose(2, 3).reshape(b, t, w, g, g)  # [B,T,W,g,g]
        return cls, maps

    def encode_prompts(self, prompts: torch.Tensor, eot_index: int) -> torch.Tensor:
        """Token embeddings [C,L,Wt] (contexts already in place) -> L2-normalised class embeddings [C,D]."""
        m = self.model
        x = prompts + m.positional_embedding  # [C,L,Wt]
        x = m.transformer(x, attn_mask=m.attn_mask)
        x = m.ln_final(x)
        x = x[:, eot_index] @ m.text_projection  # [C,D]
        return F.normalize(x, dim=-1)
