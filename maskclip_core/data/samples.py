"""One record per image, whatever the source (OpenSDID parquet, Hugging Face, folders).

Key convention (OpenSDID's, also written by `maskclip-synth` and built by the folder reader):
`<kind>/<generator>/<real|fake>/<name>`, e.g. `partial/sd15/fake/000651821.jpg`, where kind is
`partial` (inpainted region, has a mask), `full` (text-to-image, whole image generated) or `real`.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from maskclip_runtime.errors import InputError
from maskclip_runtime.kernel.preprocess import ImageLoadError, load_image, to_rgb8


class DataError(InputError, ValueError):
    """Unusable data (missing path, bad column, undecodable image, mask of the wrong size); names the file."""


def parse_key(key: str, label: int, has_mask: bool, default_generator: str) -> tuple[str, str]:
    """Key -> (generator, kind). `partial/sd15/fake/x.jpg` -> ("sd15", "partial").

    Kind follows EVALUATION.md: a fake whose key contains `partial` is a partial edit; otherwise a
    fake with a mask is partial and one without is fully generated. Keys with fewer than four
    parts take the generator from the source (parquet file stem, split or folder name).
    """
    parts = key.replace("\\", "/").split("/")
    generator = parts[1] if len(parts) >= 4 and parts[1] else default_generator
    if label == 0:
        return generator, "real"
    return generator, "partial" if ("partial" in key or has_mask) else "full"


@dataclass(frozen=True)
class Sample:
    """A lazily decoded image with its label and ground-truth mask source."""

    key: str
    label: int  # 0 real, 1 fake
    generator: str
    kind: str  # real | partial | full
    source: str  # file the bytes come from, for error messages
    load: Callable[[], tuple[bytes | str, bytes | str | None]]  # -> (image bytes/path, mask bytes/path/None)

    @property
    def is_partial_fake(self) -> bool:
        return self.kind == "partial"


def decode_image(data: bytes | str, where: str) -> Image.Image:
    """Encoded bytes or a path -> upright RGB PIL image; DataError naming `where` when undecodable."""
    if isinstance(data, str):
        try:
            return load_image(data)
        except ImageLoadError as exc:
            raise DataError(str(exc)) from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return to_rgb8(ImageOps.exif_transpose(img))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{where}: cannot decode image ({exc.__class__.__name__}: {exc})") from None


def load_sample(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Sample -> (image HxWx3 uint8, ground-truth mask HxW uint8 in {0,1}) per MODEL.md's rules.

    real -> zeros; partial fake -> its mask, white = edited (mean RGB > 127.5); full fake -> ones.
    """
    where = f"{sample.source} [{sample.key}]"
    image_data, mask_data = sample.load()
    image = np.asarray(decode_image(image_data, where))
    h, w = image.shape[:2]
    if sample.kind == "real":
        return image, np.zeros((h, w), np.uint8)
    if sample.kind == "full":
        return image, np.ones((h, w), np.uint8)
    if mask_data is None:
        raise DataError(f"{where}: partial fake without a mask")
    mask = np.asarray(decode_image(mask_data, f"{where} mask"), dtype=np.float32)
    if mask.shape[:2] != (h, w):
        raise DataError(f"{where}: mask is {mask.shape[1]}x{mask.shape[0]} but image is {w}x{h}")
    return image, (mask.mean(axis=2) > 127.5).astype(np.uint8)
