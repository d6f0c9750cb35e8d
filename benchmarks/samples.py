"""The images a benchmark runs on: photo-sized JPEGs for end-to-end timing, the gate's photos for int8 calibration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def sample_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """Photo-sized JPEGs (smooth gradients + noise, 640x480) for end-to-end timing."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:480, 0:640].astype(np.float32)
    paths = []
    for i in range(count):
        base = np.stack([xs / 640, ys / 480, (xs + ys) / 1120], axis=-1) * 255
        pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"sample_{i}.jpg"
        Image.fromarray(np.roll(pixels, i * 37, axis=1)).save(path, quality=90)
        paths.append(path)
    return paths


def calibration_images(workdir: Path) -> list[Path]:
    """The export gate's bundled sample photos (and edited copies) as PNG files, for int8 calibration."""
    from maskclip_export.verify import default_verification_images

    folder = workdir / "calib"
    if not folder.is_dir():
        folder.mkdir(parents=True)
        for name, pixels in default_verification_images():
            Image.fromarray(pixels).save(folder / f"{name}.png")
    return sorted(folder.glob("*.png"))
