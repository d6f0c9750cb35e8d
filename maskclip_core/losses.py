"""Training losses (MODEL.md): CE on detection logits + BCE on the mask + 20 x edge-weighted BCE.

Both mask terms use the logits form (`binary_cross_entropy_with_logits` on the mask logits
upsampled to S), the documented, numerically safer deviation from the authors' BCE on
probabilities (which has produced NaN in fp32 training). The values are the same where the
probability form is finite.
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
