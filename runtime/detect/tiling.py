"""Native-resolution masks: overlapping model-size tiles over the full image, stitched with blended seams.

The plain policy squashes every image to the model's input size, so a 64 px edit in a 2048 px photo
covers 4 px of a 128 px model's view and comes back blurred 16x. With tiles, the mask is made from
model-size crops of the original pixels (no resize when the image is at least the model size), each
tile's mask is weighted by a ramp that falls towards the tile's edges inside the overlap, and the
weighted masks are averaged: no visible seams, and every pixel's answer comes mostly from a tile in
whose middle it lies. The verdict still comes from the global view (the whole image at the model
size), which is what the classifier was trained on.

Tiles fit a model trained at its input size on crops of images at their native resolution (as
OpenSDI's 512 px models on 512 crops); a model trained on whole images squashed to its input size
sees tiles as zoomed-in content it never saw.

Memory: the tiles are run batch by batch (detector.batch_size tiles in flight); the stitched mask and
its weight sum are two float32 images at the original size.
"""

from __future__ import annotations

import dataclasses
import math
import time
from functools import cached_property

import numpy as np
from PIL import Image

from ..kernel.preprocess import resize_probability_map
from .detector import Detection, Detector

DEFAULT_OVERLAP = 0.25  # share of the tile side that neighbouring tiles overlap


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one axis: the first at 0, the last flush with the end, evenly spread between,
    neighbours overlapping by at least `overlap` pixels. One tile when length <= tile."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def tile_boxes(width: int, height: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(left, top, right, bottom) of every tile, row by row; a side shorter than `tile` is taken whole."""
    tile_w, tile_h = min(tile, width), min(tile, height)
    return [
        (left, top, left + tile_w, top + tile_h)
        for top in tile_starts(height, tile, overlap)
        for left in tile_starts(width, tile, overlap)
    ]


def seam_weights(width: int, height: int, overlap: int) -> np.ndarray:
    """float32 [height, width]: 1 in the middle, ramping linearly down towards each edge over `overlap`
    pixels (never to 0, so a pixel only one tile covers keeps that tile's answer)."""

    def ramp(length: int) -> np.ndarray:
        position = np.arange(length, dtype=np.float32) + 0.5
        distance = np.minimum(position, length - position)
        return np.clip(distance / max(overlap, 1), 1.0 / max(overlap, 1), 1.0)

    return np.outer(ramp(height), ramp(width))


@dataclasses.dataclass(frozen=True)
class TiledDetection(Detection):
    """A Detection whose mask was stitched from tiles at the image's own size."""

    stitched: np.ndarray | None = None  # float32 [height, width]

    @cached_property
    def mask(self) -> np.ndarray:
        return self.stitched


def mask_policy(width: int, height: int, tile: int, tiles: bool, overlap: float = DEFAULT_OVERLAP) -> str:
    """The mask_policy a record of an image this size gets: tiles only when asked and larger than one tile."""
    if not tiles or max(width, height) <= tile:
        return "resize"
    return f"tiles {tile}px overlap {round(overlap * tile)}px + global verdict"


def detect_tiled(
    detector: Detector, image: Image.Image, detection: Detection, overlap: float = DEFAULT_OVERLAP
) -> Detection:
    """Replace detection's mask (from the global view of `image`) by one stitched from tiles of `image`.

    The verdict and probabilities stay the global view's. An image no larger than the model input keeps
    the global mask: one tile would be the global view itself.
    """
    tile = detector.artifact.preprocess.size
    overlap_px = round(overlap * tile)
    width, height = image.size
    if max(width, height) <= tile:
        return detection
    began = time.perf_counter()
    total = np.zeros((height, width), np.float32)
    weight_sum = np.zeros((height, width), np.float32)
    boxes = tile_boxes(width, height, tile, overlap_px)
    for start in range(0, len(boxes), detector.batch_size):
        chunk = boxes[start : start + detector.batch_size]
        tensors = np.stack([detector.prepare(image.crop(box)).tensor for box in chunk])
        _, masks = detector.forward(tensors)
        for (left, top, right, bottom), mask in zip(chunk, masks, strict=True):
            weights = seam_weights(right - left, bottom - top, overlap_px)
            total[top:bottom, left:right] += resize_probability_map(mask, right - left, bottom - top) * weights
            weight_sum[top:bottom, left:right] += weights
    total /= weight_sum
    if (width, height) != (detection.width, detection.height):  # decoded at reduced size: not expected here
        total = resize_probability_map(total, detection.width, detection.height)
    fields = {f.name: getattr(detection, f.name) for f in dataclasses.fields(Detection)}
    fields["ms"] = detection.ms + (time.perf_counter() - began) * 1e3
    fields["mask_policy"] = mask_policy(width, height, tile, tiles=True, overlap=overlap)
    return TiledDetection(**fields, stitched=total)
