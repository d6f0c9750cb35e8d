"""The one comparison of two runs' per-image outputs (Polygraphy's Comparator: run, then compare).

Four callers, one comparison: the export gate (export/verify.py: a graph against PyTorch), the
engine gate (the same, for TensorRT engines), the Triton check (a graph with preprocessing baked in
against the original) and the on-device self-check (detect/selfcheck.py: this backend against the
canaries' stored PyTorch outputs). `compare` gives the error statistics, `gate_failures` judges them
against tolerances from the precision table (contract/precision_table.py). Pure numpy.

Outputs are named arrays over the same N images: fake_prob [N] and mask [N, ...] (probabilities),
and any others (logits) compared elementwise. A reference mask may be boolean: already thresholded,
as the self-check canaries store it; it then enters the IoU and agreement figures but no value error.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..contract.precision_table import Tolerances

# Worst-image mask IoU is judged only where the reference mask covers at least this share of the
# pixels: below it IoU is ill-conditioned (a reference of a few pixels gives IoU 0 for one pixel of
# difference); such images are bounded by their pixel agreement instead.
IOU_MIN_REFERENCE_AREA = 0.01


def _above(mask: np.ndarray, threshold: float) -> np.ndarray:
    """[N, pixels] bool: the mask thresholded (a boolean mask is taken as already thresholded)."""
    flat = np.asarray(mask).reshape(len(mask), -1)
    return flat if flat.dtype == bool else flat > threshold


def mask_iou(reference: np.ndarray, candidate: np.ndarray, threshold: float) -> np.ndarray:
    """Per-image IoU of the thresholded masks [N,...]; two empty masks agree perfectly (IoU 1)."""
    ref, cand = _above(reference, threshold), _above(candidate, threshold)
    inter = np.logical_and(ref, cand).sum(axis=1)
    union = np.logical_or(ref, cand).sum(axis=1)
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def mask_agreement(reference: np.ndarray, candidate: np.ndarray, threshold: float) -> np.ndarray:
    """Per-image fraction of pixels on the same side of the threshold (well-conditioned where IoU is not:
    a reference mask of a few pixels gives IoU 0 for one pixel of difference)."""
    return (_above(reference, threshold) == _above(candidate, threshold)).mean(axis=1)


def output_errors(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """max abs error, and max rel error = max abs error / max |reference| (stable near zeros)."""
    diff = np.abs(candidate.astype(np.float64) - reference.astype(np.float64))
    scale = float(np.abs(reference).max()) if reference.size else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    return {
        "max_abs": max_abs,
        "mean_abs": float(diff.mean()) if diff.size else 0.0,
        "max_rel": max_abs / scale if scale > 0 else max_abs,
        "finite": bool(np.isfinite(candidate).all()),
    }


def compare(
    reference: dict,
    candidate: dict,
    names: Sequence[str],
    threshold: float,
    iou_min_reference_area: float = IOU_MIN_REFERENCE_AREA,
) -> dict:
    """Statistics of candidate vs reference outputs over the same images (JSON-ready); the worst-image IoU
    counts the images whose reference mask covers at least `iou_min_reference_area` of the pixels."""
    valued = [name for name in reference if name in candidate and reference[name].dtype != bool]
    ref_prob = np.asarray(reference["fake_prob"], np.float64).reshape(-1)
    prob = np.asarray(candidate["fake_prob"], np.float64).reshape(-1)
    flips = (ref_prob > threshold) != (prob > threshold)
    ious = mask_iou(reference["mask"], candidate["mask"], threshold)
    areas = _above(reference["mask"], threshold).mean(axis=1)
    agreement = mask_agreement(reference["mask"], candidate["mask"], threshold)
    conditioned = areas >= iou_min_reference_area
    return {
        "images": len(ref_prob),
        "outputs": {name: output_errors(reference[name], candidate[name]) for name in valued},
        "max_prob_diff": float(np.abs(prob - ref_prob).max()),
        "flips": int(flips.sum()),
        "flip_rate": float(flips.mean()),
        "mask_iou_mean": float(ious.mean()),
        "mask_iou_min": float(ious.min()),
        # The worst IoU over the images where IoU is well-conditioned (1.0 when there are none).
        "mask_iou_worst": float(ious[conditioned].min()) if conditioned.any() else 1.0,
        "mask_iou_worst_images": int(conditioned.sum()),
        "mask_pixel_agreement_min": float(agreement.min()),
        "reference_mask_area_min": float(areas.min()),
        "per_image": [
            {
                "image": name,
                "reference_fake_prob": float(r),
                "fake_prob": float(p),
                "flip": bool(f),
                "prob_diff": float(abs(p - r)),
                "mask_iou": float(iou),
                "mask_pixel_agreement": float(agree),
                "reference_mask_area": float(area),
            }
            for name, r, p, f, iou, agree, area in zip(
                names, ref_prob, prob, flips, ious, agreement, areas, strict=True
            )
        ],
    }


def gate_failures(stats: dict, tolerances: Tolerances) -> list[str]:
    """Human-readable reasons the statistics fail the tolerances (empty: passed); a None limit is not gated."""
    failures = [f"{name}: non-finite values" for name, err in stats["outputs"].items() if not err["finite"]]
    if tolerances.max_prob_diff is not None and not stats["max_prob_diff"] <= tolerances.max_prob_diff:
        failures.append(f"max |fake_prob| diff {stats['max_prob_diff']:.3g} > {tolerances.max_prob_diff:g}")
    if tolerances.max_flip_rate is not None and not stats["flip_rate"] <= tolerances.max_flip_rate:
        rate, limit = stats["flip_rate"], tolerances.max_flip_rate
        failures.append(f"{stats['flips']}/{stats['images']} decision flips ({rate:.2%} > {limit:.2%})")
    if tolerances.max_mask_diff is not None:
        mask_diff = stats["outputs"]["mask"]["max_abs"]  # KeyError: a thresholded reference cannot bound it
        if not mask_diff <= tolerances.max_mask_diff:
            failures.append(f"max |mask| diff {mask_diff:.3g} > {tolerances.max_mask_diff:g}")
    if tolerances.min_mask_iou is not None and not stats["mask_iou_mean"] >= tolerances.min_mask_iou:
        failures.append(f"mean mask IoU {stats['mask_iou_mean']:.4f} < {tolerances.min_mask_iou}")
    if tolerances.min_worst_mask_iou is not None and not stats["mask_iou_worst"] >= tolerances.min_worst_mask_iou:
        failures.append(f"worst-image mask IoU {stats['mask_iou_worst']:.4f} < {tolerances.min_worst_mask_iou}")
    agreement = stats["mask_pixel_agreement_min"]
    if tolerances.min_pixel_agreement is not None and not agreement >= tolerances.min_pixel_agreement:
        failures.append(f"worst-image mask pixel agreement {agreement:.4f} < {tolerances.min_pixel_agreement}")
    return failures
