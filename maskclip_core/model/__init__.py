"""MaskCLIP modules, one per concept."""

from .build import build_model
from .maskclip import MaskCLIP, upsample_mask_logits

__all__ = ["MaskCLIP", "build_model", "upsample_mask_logits"]
