"""The ONE preprocessing implementation, shared by training, evaluation, export checks and the runtime.

A train/deploy mismatch (pad vs resize, PIL vs OpenCV resampling) is the classic way a forgery
localiser loses most of its F1 in deployment, so every path goes through `resize_and_normalize`.
No torch here: the runtime must not import it.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# OpenAI CLIP statistics; MaskCLIP normalises the input of BOTH branches with them.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# The largest image decoded by default: Pillow's own hard decompression-bomb limit (about 179 Mpx),
# made explicit. Pillow only warns between half of it and it, where real photos lie (a 108 Mpx phone
# shot is 12000 x 9000); maskclip-run's --max-pixels moves it either way.
DEFAULT_MAX_PIXELS = 178_956_970  # 2 x Pillow's default Image.MAX_IMAGE_PIXELS

# Only JPEGs above this size are decoded at reduced scale (decode_image's reduce_to): below it the
# full decode costs at most ~100 MB, and every smaller photo takes exactly the path the model was
# verified on.
LARGE_IMAGE_PIXELS = 24_000_000
MASK_STRIP_ROWS = 512


class ImageLoadError(ValueError):
    """An input file that is not a usable image; the message names the file."""


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


RESAMPLE_FILTERS = {
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


@dataclass(frozen=True)
class DecodedImage:
    """An upright 8-bit RGB image and the size it is displayed at (larger when decoded at reduced size)."""

    image: Image.Image
    width: int
    height: int


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode a file to an upright 8-bit RGB PIL image, or raise ImageLoadError naming the file."""
    return decode_image(path, max_pixels).image


def decode_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, reduce_to: int | None = None) -> DecodedImage:
    """Decode a file to an upright 8-bit RGB image, or raise ImageLoadError naming the file.

    EXIF orientation is applied (phones store rotated pixels), so a returned mask lines up with
    what a viewer shows. Images over `max_pixels` are refused from their header, before decoding
    (above Pillow's own limit, set Image.MAX_IMAGE_PIXELS too). reduce_to: a JPEG over
    LARGE_IMAGE_PIXELS may be decoded at 1/2, 1/4 or 1/8 scale as long as both sides stay >= reduce_to
    (done inside the decoder, so the full-size pixels never exist in memory); the returned
    width/height stay the displayed size.
    Any failure of the decoder, whatever it raises (corrupt EXIF gives struct.error or TypeError),
    is this file's ImageLoadError: one bad file must not stop a batch.
    """
    path = Path(path)
    if not path.exists():
        raise ImageLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ImageLoadError(f"{path}: is a folder, not an image")
    if path.stat().st_size == 0:
        raise ImageLoadError(f"{path}: empty file")
    try:
        with warnings.catch_warnings():
            # Our explicit limit below replaces Pillow's warning zone; a corrupt file's UserWarning
            # (e.g. "Corrupt EXIF data") says nothing the result or the error does not.
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageLoadError(
                        f"{path}: refused, {width}x{height} is more than the {max_pixels:,}-pixel "
                        f"decompression-bomb limit (raise it with --max-pixels)"
                    )
                if reduce_to and img.format == "JPEG" and width * height > LARGE_IMAGE_PIXELS:
                    img.draft(img.mode, (reduce_to, reduce_to))
                img.load()
                upright = ImageOps.exif_transpose(img)
                if upright.size != img.size:  # rotated by 90 or 270 degrees
                    width, height = height, width
                rgb = to_rgb8(upright)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"{path}: refused by Pillow's decompression-bomb limit ({exc})") from None
    except Image.UnidentifiedImageError:
        raise ImageLoadError(f"{path}: not a readable image (unknown format)") from None
    except MemoryError:
        raise ImageLoadError(f"{path}: not enough memory to decode this image") from None
    except Exception as exc:  # noqa: BLE001 - see the docstring
        raise ImageLoadError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from None
    if min(rgb.size) < 1:
        raise ImageLoadError(f"{path}: image has no pixels")
    return DecodedImage(rgb, width, height)


def resize_and_normalize(image: Image.Image | np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """RGB uint8 image (PIL or HxWx3 array) -> float32 [3, size, size], CLIP-normalised.

    Plain resize to a square (no padding, no aspect preservation), as the authors train.
    """
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 array, got {image.shape} {image.dtype}")
        image = Image.fromarray(image, "RGB")
    elif image.mode != "RGB":
        image = to_rgb8(image)
    if image.size != (spec.size, spec.size):
        image = image.resize((spec.size, spec.size), RESAMPLE_FILTERS[spec.resample])
    x = np.asarray(image, dtype=np.float32) * np.float32(spec.scale)  # [S,S,3] in 0..1
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))  # [3,S,S]


def preprocess_batch(images: list[Image.Image | np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """List of RGB images -> float32 [B,3,S,S]."""
    return np.stack([resize_and_normalize(im, spec) for im in images])


def resize_probability_map(prob: np.ndarray, width: int, height: int) -> np.ndarray:
    """Probability map [h,w] float -> [height,width] float32 (bilinear), to return masks at original size."""
    prob = np.asarray(prob, dtype=np.float32)
    if width * height <= LARGE_IMAGE_PIXELS:
        img = Image.fromarray(prob, mode="F")
        if img.size != (width, height):
            img = img.resize((width, height), Image.Resampling.BILINEAR)
        return np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
    # A large photo's mask is resized in strips of rows written into one array: the whole-image
    # resize holds Pillow's result and numpy's copy of it at once (2 x 430 MB at 108 megapixels).
    # Strips agree with it to ~1e-6 (Pillow's coefficients per box); bilinear weights keep the
    # clipped input's values in [0, 1].
    source = Image.fromarray(np.clip(prob, 0.0, 1.0), mode="F")
    mask = np.empty((height, width), np.float32)
    scale = prob.shape[0] / height
    for top in range(0, height, MASK_STRIP_ROWS):
        bottom = min(height, top + MASK_STRIP_ROWS)
        box = (0.0, top * scale, float(prob.shape[1]), bottom * scale)
        mask[top:bottom] = np.asarray(source.resize((width, bottom - top), Image.Resampling.BILINEAR, box=box))
    return mask
