"""The self-check canaries an artifact carries: a few inputs at model resolution with PyTorch's outputs.

The runtime (`maskclip_runtime.detect.selfcheck`) runs them on the device that loads the artifact and compares
with the precision's gate tolerances, recorded here. Inputs are PNG at exactly the model's input size,
so no resize implementation stands between the export and the device; masks are stored thresholded
(1-bit PNG), which is what the verdict and the gate's IoU use.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from maskclip_runtime.contract.precision_table import Tolerances
from maskclip_runtime.detect.compare import IOU_MIN_REFERENCE_AREA
from maskclip_runtime.kernel.atomic import write_bytes_atomic
from maskclip_runtime.kernel.preprocess import PreprocessSpec, preprocess_batch

from .verify import Predictor

CANARY_DIR = "canary"
CANARY_COUNT = 4


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def choose_canaries(
    images: Sequence[tuple[str, np.ndarray]], size: int, count: int = CANARY_COUNT
) -> list[tuple[str, Image.Image]]:
    """`count` images resized to the model's input size: from each of `count` equal runs of the list, the
    most compact PNG at a position in its run not taken yet. The default verification list is four runs of
    the same photos (as they are / edited / cropped / rescaled), so that is one of each kind, of four
    different photos, in a few hundred KB even at 512 px."""
    resized = [(name, Image.fromarray(pixels).convert("RGB").resize((size, size))) for name, pixels in images]
    count = min(count, len(resized))
    run_length = len(resized) // count
    chosen, taken = [], set()
    for i in range(count):
        run = resized[i * run_length : (i + 1) * run_length]
        by_size = sorted(range(len(run)), key=lambda k: len(_png_bytes(run[k][1])))
        position = next((k for k in by_size if k not in taken), by_size[0])
        taken.add(position)
        chosen.append(run[position])
    return chosen


def write_canaries(
    directory: Path,
    images: Sequence[tuple[str, np.ndarray]],
    spec: PreprocessSpec,
    reference: Predictor,
    threshold: float,
    tolerances: Tolerances,
) -> dict:
    """Write the canaries and PyTorch's outputs for them into `directory`; returns the manifest's
    "self_check" block."""
    canaries = choose_canaries(images, spec.size)
    folder = directory / CANARY_DIR
    folder.mkdir(exist_ok=True)
    batch = preprocess_batch([image for _, image in canaries], spec)
    outputs = {name: np.asarray(value) for name, value in reference(batch).items()}
    masks = outputs["mask"].reshape(len(canaries), spec.size, spec.size) > threshold
    entries = []
    for i, ((name, image), prob, mask) in enumerate(zip(canaries, outputs["fake_prob"], masks, strict=True)):
        image_file, mask_file = f"{CANARY_DIR}/{i:02d}.png", f"{CANARY_DIR}/{i:02d}.mask.png"
        write_bytes_atomic(directory / image_file, _png_bytes(image))
        write_bytes_atomic(directory / mask_file, _png_bytes(Image.fromarray(mask).convert("1")))
        entries.append({"source": name, "image": image_file, "mask": mask_file, "fake_prob": float(prob)})
    return {
        "reference": "pytorch",
        "threshold": threshold,
        "tolerances": {
            "max_prob_diff": tolerances.max_prob_diff,
            "min_worst_mask_iou": tolerances.min_worst_mask_iou,
            "min_pixel_agreement": tolerances.min_pixel_agreement,
            "iou_min_reference_area": IOU_MIN_REFERENCE_AREA,
        },
        "canaries": entries,
    }
