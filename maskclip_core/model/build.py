"""build_model: a MaskCLIP from a registered config name (or config), with optional pretrained backbones."""

from __future__ import annotations

from ..config import MaskCLIPConfig, get_config
from ..weights import load_clip_weights, load_mae_weights
from .maskclip import MaskCLIP


def build_model(
    config: str | MaskCLIPConfig,
    clip_weights: str | None = None,
    mae_weights: str | None = None,
) -> MaskCLIP:
    """Random init unless weights are given (hub tags: CLIP `openai`, MAE `vit_base_patch16_224.mae`; or files).

    Build under `with torch.device("meta"):` to count parameters without allocating them.
    """
    cfg = get_config(config) if isinstance(config, str) else config
    model = MaskCLIP(cfg)
    if clip_weights:
        load_clip_weights(model.clip.model, clip_weights, cfg.clip.model_name)
    if mae_weights:
        load_mae_weights(model.mae, mae_weights)
    return model
