"""The verification gate: does a deployed graph compute what the PyTorch model computes?

Polygraphy-style: a reference and a candidate are both plain callables (image batch -> named
outputs), run on the same preprocessed images, compared output by output with explicit statistics,
then judged against per-precision tolerances. Any backend fits: ONNX Runtime sessions here, TensorRT
engines in the TensorRT export (wrap its runners with `chain_predictor`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from maskclip_runtime.backends.base import Runner
from maskclip_runtime.contract.chain import run_chain
from maskclip_runtime.contract.manifest import BatchSpec
from maskclip_runtime.contract.precision_table import Tolerances, precision_row
from maskclip_runtime.errors import InputError
from maskclip_runtime.kernel.inputs import image_files
from maskclip_runtime.kernel.preprocess import PreprocessSpec, load_image, preprocess_batch

Predictor = Callable[[np.ndarray], dict[str, np.ndarray]]  # image batch [B,3,S,S] -> named outputs

# 64 images: one flip is 1.6 %, under the int8 flip limit of 2 %.
MIN_VERIFICATION_IMAGES = 64
# scikit-image's bundled samples (no download): photos, scans, textures, greyscale.
SAMPLE_IMAGES = (
    "astronaut", "coffee", "chelsea", "rocket", "camera", "clock", "coins", "colorwheel",
    "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "brick", "grass", "gravel",
)  # fmt: skip
# Worst-image mask IoU is judged only where the reference mask covers at least this share of the
# pixels: below it IoU is ill-conditioned (a reference of a few pixels gives IoU 0 for one pixel of
# difference); such images are bounded by their pixel agreement instead.
IOU_MIN_REFERENCE_AREA = 0.01


class VerificationError(InputError, RuntimeError):
    """The gate cannot run (no images, unreadable images); distinct from a gate that ran and failed."""


# --- images ---------------------------------------------------------------------------------------
def _as_rgb8(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return np.ascontiguousarray(array[..., :3].astype(np.uint8))


def _edit_region(image: np.ndarray, index: int) -> np.ndarray:
    """A synthetic local edit: a box blurred (even index) or re-rendered at low resolution (odd); its
    place and size move with the index so the edits do not all sit in one spot."""
    pil = Image.fromarray(image)
    w, h = pil.size
    left, top = (w * (1 + index % 3)) // 8, (h * (1 + (index // 3) % 3)) // 8
    box = (left, top, left + max(1, w // 3), top + max(1, h // 3))
    region = pil.crop(box)
    if index % 2 == 0:
        region = region.filter(ImageFilter.GaussianBlur(radius=max(2, w // 100)))
    else:
        small = (max(1, region.width // 6), max(1, region.height // 6))
        region = region.resize(small, Image.Resampling.BILINEAR).resize(region.size, Image.Resampling.BICUBIC)
    pil.paste(region, box)
    return np.asarray(pil)


def _crop(image: np.ndarray, index: int) -> np.ndarray:
    """An off-centre crop of 45-75 % of each side (aspect ratio changes with it)."""
    h, w = image.shape[:2]
    fh, fw = 0.45 + 0.1 * (index % 4), 0.75 - 0.1 * (index % 3)
    ch, cw = max(8, int(h * fh)), max(8, int(w * fw))
    top, left = (h - ch) * (index % 3) // 2, (w - cw) * ((index + 1) % 3) // 2
    return np.ascontiguousarray(image[top : top + ch, left : left + cw])


def _rescale(image: np.ndarray, factor: float) -> np.ndarray:
    h, w = image.shape[:2]
    size = (max(8, round(w * factor)), max(8, round(h * factor)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))


def default_verification_images() -> list[tuple[str, np.ndarray]]:
    """The gate's default images, (name, HxWx3 uint8), 64 of them, made from scikit-image's bundled samples
    (no download): each photo as it is, with a synthetic local edit, cropped, and rescaled (to 0.4-1.6x,
    so both down- and up-sampling reach the model) with an edit elsewhere."""
    import skimage.data  # export-side dependency, imported only when the defaults are used

    photos = [(name, _as_rgb8(getattr(skimage.data, name)())) for name in SAMPLE_IMAGES]
    images = list(photos)
    images += [(f"{name}-edited", _edit_region(photo, i)) for i, (name, photo) in enumerate(photos)]
    images += [(f"{name}-crop", _crop(photo, i)) for i, (name, photo) in enumerate(photos)]
    factors = (0.4, 0.6, 1.25, 1.6)
    images += [
        (f"{name}-x{factors[i % 4]}-edited", _edit_region(_rescale(photo, factors[i % 4]), i + 1))
        for i, (name, photo) in enumerate(photos)
    ]
    return images


def load_images(pattern: str, limit: int | None = None) -> list[tuple[str, Image.Image]]:
    """Images named by a folder or glob, loaded through the shared loader; raises if there are none."""
    paths = [Path(p) for p in image_files(pattern)[:limit]]
    if not paths:
        raise VerificationError(f"no images found at {pattern!r}")
    return [(p.name, load_image(p)) for p in paths]


def verification_images(pattern: str | None = None) -> list[tuple[str, np.ndarray]]:
    """The gate's images as (name, HxWx3 uint8): those at `pattern`, else the default set."""
    if not pattern:
        return default_verification_images()
    return [(name, np.asarray(image.convert("RGB"))) for name, image in load_images(pattern)]


def verification_batch(spec: PreprocessSpec, pattern: str | None = None) -> tuple[list[str], np.ndarray]:
    """(image names, preprocessed float32 [N,3,S,S]) for the gate."""
    images = verification_images(pattern)
    return [name for name, _ in images], preprocess_batch([image for _, image in images], spec)


# --- running --------------------------------------------------------------------------------------
def chain_predictor(runners: Sequence[Runner]) -> Predictor:
    """Run graphs in order, each fed by name from "image" and the previous graphs' outputs."""

    def predict(images: np.ndarray) -> dict[str, np.ndarray]:
        tensors = run_chain(runners, {"image": images})
        del tensors["image"]
        return tensors

    return predict


def batch_chunks(images: np.ndarray, batch: BatchSpec) -> Iterator[tuple[np.ndarray, int]]:
    """(chunk, real count): chunks the graph accepts, up to the max (dynamic) or exactly N (static, the
    last one padded by repeating its last image)."""
    for start in range(0, len(images), batch.size):
        chunk = images[start : start + batch.size]
        count = len(chunk)
        if not batch.dynamic and count < batch.size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch.size - count, axis=0)])
        yield np.ascontiguousarray(chunk), count


def run_batched(predict: Predictor, images: np.ndarray, batch: BatchSpec) -> dict[str, np.ndarray]:
    """Run a predictor over all images in graph-sized chunks; padding is dropped from the outputs."""
    outputs: dict[str, list[np.ndarray]] = {}
    for chunk, count in batch_chunks(images, batch):
        for name, value in predict(chunk).items():
            outputs.setdefault(name, []).append(np.asarray(value, dtype=np.float32)[:count])
    return {name: np.concatenate(parts) for name, parts in outputs.items()}


# --- comparing ------------------------------------------------------------------------------------
def mask_iou(reference: np.ndarray, candidate: np.ndarray, threshold: float) -> np.ndarray:
    """Per-image IoU of the thresholded masks [N,...]; two empty masks agree perfectly (IoU 1)."""
    ref = reference.reshape(len(reference), -1) > threshold
    cand = candidate.reshape(len(candidate), -1) > threshold
    inter = np.logical_and(ref, cand).sum(axis=1)
    union = np.logical_or(ref, cand).sum(axis=1)
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def mask_agreement(reference: np.ndarray, candidate: np.ndarray, threshold: float) -> np.ndarray:
    """Per-image fraction of pixels on the same side of the threshold (well-conditioned where IoU is not:
    a reference mask of a few pixels gives IoU 0 for one pixel of difference)."""
    ref = reference.reshape(len(reference), -1) > threshold
    cand = candidate.reshape(len(candidate), -1) > threshold
    return (ref == cand).mean(axis=1)


def output_errors(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """max abs error, and max rel error = max abs error / max |reference| (stable near zeros)."""
    diff = np.abs(candidate.astype(np.float64) - reference.astype(np.float64))
    scale = float(np.abs(reference).max())
    max_abs = float(diff.max()) if diff.size else 0.0
    return {
        "max_abs": max_abs,
        "mean_abs": float(diff.mean()) if diff.size else 0.0,
        "max_rel": max_abs / scale if scale > 0 else max_abs,
        "finite": bool(np.isfinite(candidate).all()),
    }


def compare(reference: dict, candidate: dict, names: Sequence[str], threshold: float) -> dict:
    """Statistics of candidate vs reference outputs over the same images."""
    common = [name for name in reference if name in candidate]
    ref_prob, prob = reference["fake_prob"], candidate["fake_prob"]
    flips = (ref_prob > threshold) != (prob > threshold)
    ious = mask_iou(reference["mask"], candidate["mask"], threshold)
    areas = (reference["mask"].reshape(len(ious), -1) > threshold).mean(axis=1)
    agreement = mask_agreement(reference["mask"], candidate["mask"], threshold)
    conditioned = areas >= IOU_MIN_REFERENCE_AREA
    return {
        "images": len(ref_prob),
        "outputs": {name: output_errors(reference[name], candidate[name]) for name in common},
        "max_prob_diff": float(np.abs(prob.astype(np.float64) - ref_prob).max()),
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
                "prob_diff": float(abs(float(p) - float(r))),
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
    """Human-readable reasons the statistics fail the tolerances (empty: passed)."""
    failures = [f"{name}: non-finite values" for name, err in stats["outputs"].items() if not err["finite"]]
    if tolerances.max_prob_diff is not None and not stats["max_prob_diff"] <= tolerances.max_prob_diff:
        failures.append(f"max |fake_prob| diff {stats['max_prob_diff']:.3g} > {tolerances.max_prob_diff:g}")
    if not stats["flip_rate"] <= tolerances.max_flip_rate:
        rate, limit = stats["flip_rate"], tolerances.max_flip_rate
        failures.append(f"{stats['flips']}/{stats['images']} decision flips ({rate:.2%} > {limit:.2%})")
    mask_diff = stats["outputs"]["mask"]["max_abs"]
    if tolerances.max_mask_diff is not None and not mask_diff <= tolerances.max_mask_diff:
        failures.append(f"max |mask| diff {mask_diff:.3g} > {tolerances.max_mask_diff:g}")
    if tolerances.min_mask_iou is not None and not stats["mask_iou_mean"] >= tolerances.min_mask_iou:
        failures.append(f"mean mask IoU {stats['mask_iou_mean']:.4f} < {tolerances.min_mask_iou}")
    if tolerances.min_worst_mask_iou is not None and not stats["mask_iou_worst"] >= tolerances.min_worst_mask_iou:
        failures.append(f"worst-image mask IoU {stats['mask_iou_worst']:.4f} < {tolerances.min_worst_mask_iou}")
    agreement = stats["mask_pixel_agreement_min"]
    if tolerances.min_pixel_agreement is not None and not agreement >= tolerances.min_pixel_agreement:
        failures.append(f"worst-image mask pixel agreement {agreement:.4f} < {tolerances.min_pixel_agreement}")
    return failures


def verify(
    reference: Predictor,
    candidate: Predictor,
    images: np.ndarray,
    names: Sequence[str],
    precision: str,
    threshold: float,
    batch: BatchSpec,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Run both on the images and judge the candidate; returns the JSON-ready report ("passed" inside).

    The reference runs with the same batching as the candidate, so static graphs and the model see
    identical inputs. `progress` (optional) is told when each side starts.
    """
    if len(images) == 0:
        raise VerificationError("no verification images")
    tolerances = precision_row(precision).gate
    if progress:
        progress("reference")
    ref_out = run_batched(reference, images, batch)
    if progress:
        progress("candidate")
    cand_out = run_batched(candidate, images, batch)
    missing = [name for name in ("logits", "fake_prob", "mask") if name not in cand_out]
    if missing:
        raise VerificationError(f"candidate does not produce {missing}")
    stats = compare(ref_out, cand_out, names, threshold)
    failures = gate_failures(stats, tolerances)
    return {
        "passed": not failures,
        "failures": failures,
        "precision": precision,
        "threshold": threshold,
        "tolerances": asdict(tolerances),
        "mask_iou_of_two_empty_masks": 1.0,
        "iou_min_reference_area": IOU_MIN_REFERENCE_AREA,
        **stats,
    }
