"""The ONE preprocessing implementation, shared by training, evaluation, export checks and the runtime.

A train/deploy mismatch (pad vs resize, PIL vs OpenCV resampling) is the classic way a forgery
localiser loses most of its F1 in deployment, so every path goes through `resize_and_normalize`.
No torch here: the runtime must not import it.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# OpenAI CLIP statistics; MaskCLIP normalises the input of BOTH branches with them.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Pillow's own decompression-bomb limit (about 89.5 Mpx) is kept; we only make it explicit.
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS


class ImageLoadError(ValueError):
    """An input file that is not a usable image; the message names the file."""


class UnknownImageFormat(ImageLoadError):
    """The bytes are in no format Pillow reads (an HTTP server answers 415 rather than 400)."""


@dataclass(frozen=True)
class PreprocessSpec:
    """How an RGB uint8 image becomes the model input; recorded in every artifact's manifest."""

    size: int = 512
    resample: str = "bilinear"  # PIL resampling filter name
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    channel_order: str = "RGB"
    layout: str = "NCHW"
    dtype: str = "float32"
    scale: float = field(default=1.0 / 255.0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessSpec:
        d = dict(d)
        d["mean"] = tuple(d["mean"])
        d["std"] = tuple(d["std"])
        return cls(**d)


_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def to_rgb8(img: Image.Image) -> Image.Image:
    """Any PIL mode (L, LA, P, RGBA, CMYK, I;16, I, F, ...) -> 8-bit RGB."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit grey: scale the full range to 8 bit instead of clipping at 255.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        top = 1.0 if arr.max() <= 1.0 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite on white: transparent pixels have undefined colour otherwise.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Decode a file to an upright 8-bit RGB PIL image, or raise ImageLoadError naming the file.

    EXIF orientation is applied (phones store rotated pixels), so a returned mask lines up with
    what a viewer shows. Pillow's decompression-bomb limit stays on and is reported clearly.
    """
    path = Path(path)
    if not path.exists():
        raise ImageLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ImageLoadError(f"{path}: is a folder, not an image")
    if path.stat().st_size == 0:
        raise ImageLoadError(f"{path}: empty file")
    return _decode(path, str(path))


def decode_image(data: bytes, name: str) -> Image.Image:
    """load_image for bytes already in memory (an HTTP upload); `name` stands for the file in messages."""
    if not data:
        raise ImageLoadError(f"{name}: empty file")
    return _decode(io.BytesIO(data), name)


def _decode(source: Path | io.BytesIO, name: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # DecompressionBombWarning (between 1x and 2x the limit) becomes an error here too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                img.load()
                img = ImageOps.exif_transpose(img)
                rgb = to_rgb8(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(
            f"{name}: refused, image is larger than the {MAX_IMAGE_PIXELS:,}-pixel decompression-bomb limit ({exc})"
        ) from None
    except Image.UnidentifiedImageError:
        raise UnknownImageFormat(f"{name}: not a readable image (unknown format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"{name}: cannot decode image ({exc})") from None
    if min(rgb.size) < 1:
        raise ImageLoadError(f"{name}: image has no pixels")
    return rgb


def resize_rgb8(image: Image.Image | np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """RGB uint8 image (PIL or HxWx3 array) -> uint8 [size, size, 3]: the resize half of resize_and_normalize,
    what a client of a graph with the normalisation baked in (maskclip-triton --raw-input) sends."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 array, got {image.shape} {image.dtype}")
        image = Image.fromarray(image, "RGB")
    elif image.mode != "RGB":
        image = to_rgb8(image)
    if image.size != (spec.size, spec.size):
        image = image.resize((spec.size, spec.size), _RESAMPLE[spec.resample])
    return np.asarray(image, dtype=np.uint8)


def resize_and_normalize(image: Image.Image | np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """RGB uint8 image (PIL or HxWx3 array) -> float32 [3, size, size], CLIP-normalised.

    Plain resize to a square (no padding, no aspect preservation), as the authors train.
    """
    x = resize_rgb8(image, spec).astype(np.float32) * np.float32(spec.scale)  # [S,S,3] in 0..1
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))  # [3,S,S]


def preprocess_batch(images: list[Image.Image | np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """List of RGB images -> float32 [B,3,S,S]."""
    return np.stack([resize_and_normalize(im, spec) for im in images])


def resize_probability_map(prob: np.ndarray, width: int, height: int) -> np.ndarray:
    """Probability map [h,w] float -> [height,width] float32 (bilinear), to return masks at original size."""
    img = Image.fromarray(np.asarray(prob, dtype=np.float32), mode="F")
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
