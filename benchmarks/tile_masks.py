"""Pixel F1 of small edits in large photos: masks from --tiles against the plain resize.

python -m maskclip_bench.tile_masks [--model ARTIFACT] [--side 2048] [--edit 64,256] [--photos 2] [--seed 0]

For every (mosaic, generator, edit size): a --side px mosaic of 512 px crops of the bundled photos
at their own resolution, one round edit of that diameter re-rendered by the proxy generator
(maskclip_core/data/synth.py, the recipe of the demo model's training data) and blended in with a
1 px feather, JPEG quality 90. The artifact answers it twice, plain (the whole image squashed to the
model size, mask resized back) and tiled: pixel F1 of (mask > threshold) against the edit, the share
of edits hit at all (any predicted pixel inside) and the share of untouched pixels flagged (FP), per
edit size. A proxy: the figures compare the mask policies on the synthetic fingerprint, and say
nothing about real diffusion edits.
"""

from __future__ import annotations

import io
import time

import click
import cv2
import numpy as np
from PIL import Image

from maskclip_core.data.synth import GENERATORS, PHOTOS, load_photo, render
from maskclip_runtime.command import command
from maskclip_runtime.detect.detector import DEMO_DIR, Detector
from maskclip_runtime.detect.tiling import detect_tiled


def mosaic(photos: list[np.ndarray], side: int, rng: np.random.Generator, cell: int = 512) -> np.ndarray:
    """A side x side photo of cell x cell crops of the bundled photos at their own resolution (they are
    only about 512 px: upscaling one would make it smooth, which the proxy generators' traces resemble)."""
    canvas = np.zeros((side, side, 3), np.uint8)
    for top in range(0, side, cell):
        for left in range(0, side, cell):
            photo = photos[rng.integers(len(photos))]
            scale = cell / min(photo.shape[:2])
            if scale > 1:  # the few photos under the cell size: the least enlargement that fits
                photo = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
            y = int(rng.integers(0, photo.shape[0] - cell + 1))
            x = int(rng.integers(0, photo.shape[1] - cell + 1))
            crop = photo[y : y + cell, x : x + cell]
            canvas[top : top + cell, left : left + cell] = crop[: side - top, : side - left]
    return canvas


def edited_photo(image: np.ndarray, diameter: int, generator: str, rng: np.random.Generator):
    """(RGB PIL image, bool edit mask): one round edit re-rendered by the generator, 1 px feather, JPEG 90."""
    side = image.shape[0]
    mask = np.zeros(image.shape[:2], np.uint8)
    centre = rng.integers(diameter, side - diameter, 2)
    cv2.circle(mask, (int(centre[0]), int(centre[1])), diameter // 2, 1, -1)
    soft = cv2.GaussianBlur(mask.astype(np.float32), (3, 3), 0)[..., None]
    blended = np.clip(np.round(soft * render(image, GENERATORS[generator], rng) + (1 - soft) * image), 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(blended.astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), mask.astype(bool)


def pixel_f1(predicted: np.ndarray, truth: np.ndarray) -> float:
    true_positive = np.count_nonzero(predicted & truth)
    wrong = np.count_nonzero(predicted ^ truth)
    return 2 * true_positive / (2 * true_positive + wrong) if true_positive or wrong else 1.0


@command("maskclip_bench.tile_masks")
@click.option("--model", type=click.Path(exists=True), default=str(DEMO_DIR), show_default=True)
@click.option("--side", type=int, default=2048, show_default=True, help="Photo side in pixels.")
@click.option("--edit", "edits", default="64,256", show_default=True, help="Edit diameters in pixels.")
@click.option("--photos", type=click.IntRange(min=1), default=2, show_default=True, help="Mosaics per generator.")
@click.option("--seed", type=int, default=0, show_default=True)
def main(model: str, side: int, edits: str, photos: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    diameters = [int(d) for d in edits.split(",")]
    sources = [load_photo(name) for name in PHOTOS]
    with Detector(model, device="cpu", self_check=False) as detector:
        tile = detector.artifact.preprocess.size
        click.echo(f"model {detector.model_id} (input {tile} px), photos {side} px, threshold {detector.threshold}")
        header = ("edit px", "images", "F1 plain", "F1 tiles", "hit plain", "hit tiles", "FP plain", "FP tiles")
        click.echo("{:>8} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11}".format(*header, "s/img tiles"))
        for diameter in diameters:
            scores = {"plain": [], "tiles": []}
            hits = {"plain": [], "tiles": []}
            false_alarms = {"plain": [], "tiles": []}
            seconds = []
            for _ in range(photos):
                canvas = mosaic(sources, side, rng)
                for generator in GENERATORS:
                    image, truth = edited_photo(canvas, diameter, generator, rng)
                    (plain,) = detector.detect([image])
                    began = time.perf_counter()
                    tiled = detect_tiled(detector, image, plain)
                    predicted_tiles = tiled.mask > tiled.threshold
                    seconds.append(time.perf_counter() - began)
                    for policy, predicted in (("plain", plain.mask > plain.threshold), ("tiles", predicted_tiles)):
                        scores[policy].append(pixel_f1(predicted, truth))
                        hits[policy].append(bool((predicted & truth).any()))
                        false_alarms[policy].append(np.count_nonzero(predicted & ~truth) / np.count_nonzero(~truth))
            click.echo(
                f"{diameter:>8} {len(seconds):>6} {np.mean(scores['plain']):>9.3f} {np.mean(scores['tiles']):>9.3f} "
                f"{np.mean(hits['plain']):>9.2f} {np.mean(hits['tiles']):>9.2f} "
                f"{100 * np.mean(false_alarms['plain']):>8.2f}% {100 * np.mean(false_alarms['tiles']):>8.2f}% "
                f"{np.mean(seconds):>11.2f}"
            )


if __name__ == "__main__":
    main()
