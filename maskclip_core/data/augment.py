"""The paper's training augmentations (MODEL.md), driven by an explicit numpy Generator.

Written with OpenCV/Pillow instead of a transform library so that every draw comes from one
seeded generator: the same (seed, epoch, index) gives the same sample on any rank, worker or
resumed run, which exact resume and the DDP equivalence test rely on. Geometric steps act on
image and mask alike; photometric ones on the image only.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """image HxWx3 uint8, mask HxW uint8 -> augmented pair at a new native size h'xw'."""
    # Random scale +-0.2 (bilinear image, nearest mask).
    scale = rng.uniform(0.8, 1.2)
    h, w = mask.shape
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
    if rng.random() < 0.5:  # horizontal flip
        image, mask = image[:, ::-1], mask[:, ::-1]
    if rng.random() < 0.5:  # vertical flip
        image, mask = image[::-1], mask[::-1]
    if rng.random() < 0.5:  # brightness/contrast +-0.1
        alpha, beta = 1.0 + rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1) * 255.0
        image = np.clip(image.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)
    if rng.random() < 0.2:  # JPEG quality 70-100
        image = _jpeg(np.ascontiguousarray(image), int(rng.integers(70, 101)))
    if rng.random() < 0.5:  # 90-degree rotation, 1-3 quarter turns
        k = int(rng.integers(1, 4))
        image, mask = np.rot90(image, k), np.rot90(mask, k)
    if rng.random() < 0.2:  # Gaussian blur, kernel 3/5/7
        k = int(rng.choice([3, 5, 7]))
        image = cv2.GaussianBlur(np.ascontiguousarray(image), (k, k), 0)
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)
