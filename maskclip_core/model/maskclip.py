"""MaskCLIP: frozen CLIP taps + trainable MAE side net fused by VCA, pyramid decoder with TVCA, VSA head.

The forward is split into the three stages that export as separate graphs (`--split`):
clip_features (image -> taps), trunk (image, CLIP maps -> MAE features), heads (-> logits, masks).
The heads split again into verdict_head (CLIP CLS -> logits) and mask_head (features -> mask) for the
cascade export, whose screen graph answers the verdict without the MAE side.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from maskclip_runtime.kernel.preprocess import PreprocessSpec

from ..config import MaskCLIPConfig
from .clip_tower import ClipTower
from .decoder import MaskDecoder
from .detection import VisualSelfAttention, detection_logits
from .fusion import VisualCrossAttention
from .mae import MaeSideNet
from .prompts import PromptLearner


def upsample_mask_logits(mask_logits: torch.Tensor, size: int) -> torch.Tensor:
    """[B,1,S/4,S/4] -> [B,1,S,S], bilinear with align_corners=True (as the authors upsample)."""
    return F.interpolate(mask_logits, size=(size, size), mode="bilinear", align_corners=True)


def _autocast_off(device_type: str):
    """CLIP runs in fp32 even inside a bf16 training autocast; a no-op context otherwise (export, meta)."""
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


class MaskCLIP(nn.Module):
    def __init__(self, config: MaskCLIPConfig):
        super().__init__()
        config.validate()
        self.config = config
        c = config
        self.clip = ClipTower(c.clip)  # frozen
        self.prompts = PromptLearner(
            self.clip.model.token_embedding, c.prompt_length, c.prompt_suffix, c.clip.context_length
        )
        self.mae = MaeSideNet(c.mae, c.grid)
        self.vca = nn.ModuleList(
            VisualCrossAttention(c.clip.width, c.mae.width, c.vca_heads, c.grid) for _ in c.clip.taps
        )
        self.decoder = MaskDecoder(c.mae.width, c.decoder, c.grid)
        self.text_proj = nn.Linear(c.clip.embed_dim, c.decoder.channels)  # T[fake] -> TVCA query
        self.vsa = VisualSelfAttention(c.clip.width, c.clip.embed_dim, c.vsa_heads, c.vsa_dropout)
        self._text_cache: tuple[tuple, torch.Tensor] | None = None

    # --- text ---------------------------------------------------------------------------------
    def compute_text_embeddings(self) -> torch.Tensor:
        """Prompts through the frozen text tower -> T [2,D] (row 0 real, row 1 fake), L2-normalised.

        Gradients flow through the frozen tower into the prompt contexts.
        """
        tokens = self.prompts(self.clip.model.token_embedding)  # [2,L,Wt]
        return self.clip.encode_prompts(tokens, self.prompts.eot_index)

    def text_embeddings(self) -> torch.Tensor:
        """T [2,D]. Recomputed every training step; cached in inference until the contexts change.

        The cache key is the context tensor's version counter (bumped by every in-place update:
        optimiser steps, load_state_dict) and storage, so a stale T is never served.
        """
        if self.training:
            return self.compute_text_embeddings()
        ctx = self.prompts.ctx
        key = (ctx._version, ctx.data_ptr(), ctx.device, ctx.dtype)
        if self._text_cache is None or self._text_cache[0] != key:
            with torch.no_grad():
                self._text_cache = (key, self.compute_text_embeddings())
        return self._text_cache[1]

    # --- the three exportable stages ----------------------------------------------------------
    def clip_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B,3,S,S] -> cls [B,T,Wc], maps [B,T,Wc,g,g]. Frozen, fp32, no grad."""
        size = self.config.clip.image_size
        with torch.no_grad(), _autocast_off(x.device.type):
            x224 = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=True)
            return self.clip.visual_taps(x224)

    def trunk(self, x: torch.Tensor, clip_maps: torch.Tensor) -> torch.Tensor:
        """x [B,3,S,S], clip_maps [B,T,Wc,g,g] -> MAE features [B,C,G,G] (VCA_i after block i, i = 1..T)."""
        tokens = self.mae.embed(x)  # [B,G,G,C]
        for i, block in enumerate(self.mae.blocks):
            tokens = block(tokens)
            if 1 <= i <= len(self.vca):
                tokens = self.vca[i - 1](tokens, clip_maps[:, i - 1])
        return tokens.permute(0, 3, 1, 2)  # [B,C,G,G]

    def heads(self, features: torch.Tensor, clip_cls: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        """MAE features, CLIP CLS taps and T -> logits [B,2], fake_prob [B], mask_logits, mask_prob."""
        return {**self.verdict_head(clip_cls, text), **self.mask_head(features, text)}

    def verdict_head(self, clip_cls: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        """CLIP CLS taps and T -> logits [B,2], fake_prob [B]: the verdict needs no MAE side of the model."""
        logits = detection_logits(self.vsa(clip_cls), text)  # [B,2]
        return {"logits": logits, "fake_prob": logits.softmax(dim=-1)[:, 1]}

    def mask_head(self, features: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        """MAE features and T -> mask_logits [B,1,4G,4G], mask_prob [B,1,S,S]."""
        mask_logits = self.decoder(features, self.text_proj(text)[1])
        return {
            "mask_logits": mask_logits,
            "mask_prob": upsample_mask_logits(mask_logits, self.config.image_size).sigmoid(),
        }

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x [B,3,S,S] CLIP-normalised -> dict(logits, fake_prob, mask_logits, mask_prob). No labels needed."""
        text = self.text_embeddings()
        cls, maps = self.clip_features(x)
        return self.heads(self.trunk(x, maps), cls, text)

    # --- bookkeeping --------------------------------------------------------------------------
    def preprocess_spec(self) -> PreprocessSpec:
        return self.config.preprocess_spec()

    def parts(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by part, as in MODEL.md's table (text part: text tower, token embedding, logit scale)."""
        visual = list(self.clip.model.visual.parameters())
        seen = {id(p) for p in visual}
        modules = {
            "mae": self.mae,
            "vca": self.vca,
            "decoder": self.decoder,
            "text_proj": self.text_proj,
            "vsa": self.vsa,
            "prompts": self.prompts,
        }
        return {
            "clip_visual": visual,
            "clip_text": [p for p in self.clip.model.parameters() if id(p) not in seen],
            **{name: list(m.parameters()) for name, m in modules.items()},
        }

    def train(self, mode: bool = True) -> MaskCLIP:
        super().train(mode)
        self.clip.eval()  # frozen tower: dropout-free anyway, but keep it in eval explicitly
        return self
