"""Training losses (MODEL.md): CE on detection logits + BCE on the mask + 20 x edge-weighted BCE.

Both mask terms use the logits form (`binary_cross_entropy_with_logits` on the mask logits
upsampled to S), a documented deviation from the authors' BCE on sigmoid probabilities. On
ordinary batches the two agree (8.7e-8 apart); they part for confidently wrong pixels, measured in
fp32: for a real pixel (target 0) the probability form is already 1 % low at a logit of 15
(1 - p is rounded), and from about 16.6 p rounds to 1, the log is clamped at -100 and its
gradient is zero; for a fake pixel (target 1) its gradient shrinks from a logit of about -27.6
(BCE's backward floors p(1-p) at 1e-12) and its value is clamped from about -88. The logits form
keeps value and gradient exact there, so the model keeps learning from its worst mistakes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from maskclip_core.model import upsample_mask_logits

EDGE_WEIGHT = 20.0


def compute_losses(
    outputs: dict[str, torch.Tensor], mask: torch.Tensor, edge: torch.Tensor, label: torch.Tensor
) -> dict[str, torch.Tensor]:
    """outputs of MaskCLIP; mask/edge [B,1,S,S] float {0,1}; label [B] long -> dict(total, ce, bce, edge)."""
    logits = upsample_mask_logits(outputs["mask_logits"].float(), mask.shape[-1])  # [B,1,S,S]
    ce = F.cross_entropy(outputs["logits"].float(), label)
    bce = F.binary_cross_entropy_with_logits(logits, mask)
    # Weighted by the edge map but averaged over ALL pixels, as IMDLBenCo's edge loss does.
    edge_loss = F.binary_cross_entropy_with_logits(logits, mask, weight=edge)
    return {"total": ce + bce + EDGE_WEIGHT * edge_loss, "ce": ce, "bce": bce, "edge": edge_loss}
