"""The verification gate: does a deployed graph compute what the PyTorch model computes?

Polygraphy-style: a reference and a candidate are both plain callables (image batch -> named
outputs), run on the same preprocessed images, compared output by output with explicit statistics,
then judged against per-precision tolerances, by the runtime's one comparator (detect/compare.py).
Any backend fits: ONNX Runtime sessions here, TensorRT engines in the TensorRT export (wrap its
runners with `chain_predictor`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from maskclip_runtime.backends.base import Runner
from maskclip_runtime.contract.chain import run_chain
from maskclip_runtime.contract.manifest import BatchSpec
from maskclip_runtime.contract.precision_table import precision_row
from maskclip_runtime.detect.compare import IOU_MIN_REFERENCE_AREA, compare, gate_failures
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
    so both down- and up-sampling reach the model) with an edit elsewhere. They are made once per process and
    shared read-only: an export with --trt, every torch row of a benchmark and every engine check ask again,
    and making them takes 1.4 s."""
    return list(_default_images())


@functools.lru_cache(maxsize=1)
def _default_images() -> tuple[tuple[str, np.ndarray], ...]:
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
    for _, pixels in images:
        pixels.setflags(write=False)
    return tuple(images)


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
    if progress:
        progress("reference")
    return judge(run_batched(reference, images, batch), candidate, images, names, precision, threshold, batch, progress)


def judge(
    reference_outputs: dict[str, np.ndarray],
    candidate: Predictor,
    images: np.ndarray,
    names: Sequence[str],
    precision: str,
    threshold: float,
    batch: BatchSpec,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """`verify` with the reference's side already run (`run_batched` on the same images and batch): the
    export computes PyTorch's outputs first, so that the model's weights can go before the candidate loads."""
    if len(images) == 0:
        raise VerificationError("no verification images")
    tolerances = precision_row(precision).gate
    if progress:
        progress("candidate")
    cand_out = run_batched(candidate, images, batch)
    missing = [name for name in ("logits", "fake_prob", "mask") if name not in cand_out]
    if missing:
        raise VerificationError(f"candidate does not produce {missing}")
    stats = compare(reference_outputs, cand_out, names, threshold)
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
