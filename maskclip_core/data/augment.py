"""The authors' training augmentations, driven by an explicit numpy Generator.

Their train.py (albumentations 1.3.0), in this order:
    RandomScale(scale_limit=0.2, p=1), HorizontalFlip(p=0.5), VerticalFlip(p=0.5),
    RandomBrightnessContrast(brightness_limit=(-0.1, 0.1), contrast_limit=0.1, p=1),
    ImageCompression(quality_lower=70, quality_upper=100, p=0.2), RandomRotate90(p=0.5),
    GaussianBlur(blur_limit=(3, 7), p=0.2)
Each step below computes what that transform computes, with the same distributions (see the
comments: RandomRotate90 may draw k = 0, GaussianBlur's kernel draw favours 5 and 7). Written
with OpenCV instead of the library so that every draw comes from one seeded generator: the same
(seed, epoch, index) gives the same sample on any rank, worker or resumed run, which exact resume
and the DDP equivalence test rely on. Geometric steps act on image and mask alike; photometric
ones on the image only.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

SCALE_LIMIT = 0.2
BRIGHTNESS_LIMIT = 0.1
CONTRAST_LIMIT = 0.1
JPEG_P, JPEG_QUALITY = 0.2, (70, 100)
ROTATE_P = 0.5
BLUR_P, BLUR_LIMIT = 0.2, (3, 7)


def random_scale_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """albumentations' scale(): int() truncates (never below one pixel here, where it would fail)."""
    return max(1, int(height * scale)), max(1, int(width * scale))


def blur_kernel(rng: np.random.Generator) -> int:
    """GaussianBlur's draw: randrange(3, 8), an even size rounded up to the next odd one.

    So kernels 3, 5, 7 with probabilities 0.2, 0.4, 0.4 (not uniform over the odd sizes).
    """
    low, high = BLUR_LIMIT
    k = int(rng.integers(low, high + 1))
    return k if k % 2 else (k + 1) % (high + 1)


def brightness_contrast(image: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """albumentations' uint8 path (brightness_by_max): a float32 table v * alpha + beta * 255, clipped, truncated."""
    table = np.arange(256, dtype=np.float32) * np.float32(alpha) + np.float32(beta * 255.0)
    return np.clip(table, 0, 255).astype(np.uint8)[image]


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode as albumentations' ImageCompression does: cv2.imencode on the array as given.

    OpenCV takes the RGB array for BGR, so its colour conversion sees red and blue swapped; the
    round trip returns the original channel order. Kept as is: that is what the authors trained on.
    """
    ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(image), (int(cv2.IMWRITE_JPEG_QUALITY), quality))
    if not ok:
        raise ValueError(f"OpenCV could not JPEG-encode a {image.shape} image")
    return cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)


@dataclass(frozen=True)
class AugmentParams:
    """One draw of every random choice (albumentations' get_params), applied by `apply_augment`."""

    scale: float  # random scale factor, 0.8..1.2
    hflip: bool
    vflip: bool
    alpha: float  # contrast factor, 0.9..1.1
    beta: float  # brightness shift in units of 255, -0.1..0.1
    jpeg_quality: int | None  # None: no JPEG round trip
    rotate_k: int | None  # None: RandomRotate90 not applied; 0..3 quarter turns when it is
    blur_kernel: int | None  # None: no blur


def draw_augment(rng: np.random.Generator) -> AugmentParams:
    """The draws in the authors' order, each transform's probability as they set it."""
    scale = rng.uniform(1.0 - SCALE_LIMIT, 1.0 + SCALE_LIMIT)  # p=1
    hflip = bool(rng.random() < 0.5)
    vflip = bool(rng.random() < 0.5)
    alpha = 1.0 + rng.uniform(-CONTRAST_LIMIT, CONTRAST_LIMIT)  # p=1
    beta = rng.uniform(-BRIGHTNESS_LIMIT, BRIGHTNESS_LIMIT)
    quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1)) if rng.random() < JPEG_P else None
    rotate_k = int(rng.integers(0, 4)) if rng.random() < ROTATE_P else None  # k = 0: rotates with p 0.375
    kernel = blur_kernel(rng) if rng.random() < BLUR_P else None
    return AugmentParams(scale, hflip, vflip, alpha, beta, quality, rotate_k, kernel)


def apply_augment(image: np.ndarray, mask: np.ndarray, params: AugmentParams) -> tuple[np.ndarray, np.ndarray]:
    """image HxWx3 uint8, mask HxW uint8 -> augmented pair at a new native size h'xw'."""
    h, w = mask.shape
    height, width = random_scale_size(h, w, params.scale)
    if (height, width) != (h, w):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    if params.hflip:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if params.vflip:
        image, mask = image[::-1], mask[::-1]
    image = brightness_contrast(image, params.alpha, params.beta)
    if params.jpeg_quality is not None:
        image = jpeg(image, params.jpeg_quality)
    if params.rotate_k:
        image, mask = np.rot90(image, params.rotate_k), np.rot90(mask, params.rotate_k)
    if params.blur_kernel is not None:
        k = params.blur_kernel
        image = cv2.GaussianBlur(np.ascontiguousarray(image), (k, k), 0)
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """image HxWx3 uint8, mask HxW uint8 -> augmented pair at a new native size h'xw'."""
    return apply_augment(image, mask, draw_augment(rng))
