"""compute_losses against the probability-form formulas of MODEL.md."""

import torch

from maskclip_core.losses import EDGE_WEIGHT, compute_losses
from maskclip_core.model import upsample_mask_logits


def _outputs(b=2, s=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask_logits = torch.randn(b, 1, s // 4, s // 4, generator=g, requires_grad=True)
    logits = torch.randn(b, 2, generator=g, requires_grad=True)
    return {"logits": logits, "mask_logits": mask_logits}


def test_matches_probability_form():
    out = _outputs()
    g = torch.Generator().manual_seed(1)
    mask = (torch.rand(2, 1, 16, 16, generator=g) > 0.5).float()
    edge = (torch.rand(2, 1, 16, 16, generator=g) > 0.7).float()
    label = torch.tensor([0, 1])
    losses = compute_losses(out, mask, edge, label)
    p = upsample_mask_logits(out["mask_logits"], 16).sigmoid()
    bce_px = -(mask * p.log() + (1 - mask) * (1 - p).log())
    ce = -out["logits"].log_softmax(-1)[torch.arange(2), label].mean()
    torch.testing.assert_close(losses["bce"], bce_px.mean())
    torch.testing.assert_close(losses["edge"], (edge * bce_px).sum() / edge.numel())  # mean over ALL pixels
    torch.testing.assert_close(losses["ce"], ce)
    torch.testing.assert_close(losses["total"], ce + bce_px.mean() + EDGE_WEIGHT * losses["edge"])
    losses["total"].backward()
    assert out["mask_logits"].grad.abs().sum() > 0 and out["logits"].grad.abs().sum() > 0


def test_no_edges_no_edge_loss_and_finite_at_saturation():
    out = _outputs()
    out["mask_logits"] = out["mask_logits"].detach() * 1e4  # saturated: probability BCE would give inf/NaN
    losses = compute_losses(out, torch.ones(2, 1, 16, 16), torch.zeros(2, 1, 16, 16), torch.tensor([1, 1]))
    assert losses["edge"].item() == 0.0
    assert all(torch.isfinite(v) for v in losses.values())
