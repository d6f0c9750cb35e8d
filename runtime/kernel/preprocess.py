"""The ONE preprocessing implementation, shared by training, evaluation, export checks and the runtime.

A train/deploy mismatch (pad vs resize, PIL vs OpenCV resampling) is the classic way a forgery
localiser loses most of its F1 in deployment, so every path goes through `resize_and_normalize`
(images) and `resize_mask` (ground truth), and the resize is named in the spec that travels with
checkpoints and artifacts. No torch here: the runtime must not import it.

Resize methods (RESIZE_METHODS):
- "cv2-linear": OpenCV's INTER_LINEAR (half-pixel centres, two taps, no antialiasing; 11-bit
  fixed-point weights), masks with INTER_NEAREST. The authors' pipeline: albumentations 1.3.0
  `Resize(512, 512)` calls exactly these. Written in numpy, so the runtime needs no OpenCV.
- "pil-bilinear-aa": Pillow BILINEAR (antialiased: the filter widens when shrinking, which smooths
  away fine high-frequency traces), masks with Pillow NEAREST. What this project used before the
  resize was recorded, hence the meaning of a spec without a "resize" field.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import InputError

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


class ImageLoadError(InputError, ValueError):
    """An input file that is not a usable image; the message names the file."""


class UnknownImageFormat(ImageLoadError):
    """The bytes are in no format Pillow reads (an HTTP server answers 415 rather than 400)."""


# OpenCV's INTER_LINEAR weights for 8-bit images are integers scaled by 2**11 (INTER_RESIZE_COEF_BITS).
_CV_COEF_SCALE = 2048


def _cv_linear_taps(src: int, dst: int, clamp_weights: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One axis of OpenCV's INTER_LINEAR: (first source index, second source index, [2,dst] int weights).

    Half-pixel centres, computed as cv::resize does: the position in double, cast to float, then
    floor and fraction in float; weights rounded half-to-even to 11 bits. Columns clamp a position
    outside the image to the edge pixel with weights (1, 0); rows keep the unclamped fraction and
    clamp only the row indices (both taps then read the edge row), as OpenCV's row loop does.
    """
    position = ((np.arange(dst, dtype=np.float64) + 0.5) * (1.0 / (dst / src)) - 0.5).astype(np.float32)
    first = np.floor(position).astype(np.int64)
    fraction = position - first.astype(np.float32)
    if clamp_weights:
        outside = (first < 0) | (first >= src - 1)
        fraction[outside] = 0.0
        first = np.clip(first, 0, src - 1)
    second = np.clip(first + 1, 0, src - 1)
    first = np.clip(first, 0, src - 1)
    weights = np.rint(np.stack([np.float32(1.0) - fraction, fraction]) * np.float32(_CV_COEF_SCALE))
    return first, second, weights.astype(np.int32)


def cv2_linear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 HxW or HxWxC -> height x width, as cv2.resize(..., INTER_LINEAR) computes it.

    Horizontal pass in exact integers; vertical pass as OpenCV's SIMD kernel: each row sum shifted
    right by 4, multiplied by its 16-bit weight keeping the high 16 bits, summed, then (s + 2) >> 2.
    """
    h, w = image.shape[:2]
    x0, x1, alpha = _cv_linear_taps(w, width, clamp_weights=True)
    y0, y1, beta = _cv_linear_taps(h, height, clamp_weights=False)
    extra = (1,) * (image.ndim - 2)  # broadcast the weights over channels
    a0, a1 = alpha[0].reshape(-1, *extra), alpha[1].reshape(-1, *extra)

    def weighted_rows(rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """One vertical tap: [height, width(, C)] int32, in place to spare temporaries."""
        picked = np.take(image, rows, axis=0)  # rows first: a large photo is never widened to int32
        out = np.take(picked, x0, axis=1).astype(np.int32)
        out *= a0
        right = np.take(picked, x1, axis=1).astype(np.int32)
        right *= a1
        out += right
        out >>= 4
        out *= weights.reshape(-1, 1, *extra)
        out >>= 16
        return out

    out = weighted_rows(y0, beta[0])
    out += weighted_rows(y1, beta[1])
    out += 2
    out >>= 2
    return np.clip(out, 0, 255, out=out).astype(np.uint8)


def cv2_nearest(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """HxW(xC) array -> height x width, exactly as cv2.resize(..., INTER_NEAREST): floor(i * src / dst)."""
    h, w = image.shape[:2]
    cols = np.minimum(np.floor(np.arange(width) * (1.0 / (width / w))).astype(np.int64), w - 1)
    rows = np.minimum(np.floor(np.arange(height) * (1.0 / (height / h))).astype(np.int64), h - 1)
    return image[rows[:, None], cols[None, :]]


def _pil_resize(resample: Image.Resampling) -> Callable[[np.ndarray, int, int], np.ndarray]:
    def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
        return np.asarray(Image.fromarray(image).resize((width, height), resample))

    return resize


@dataclass(frozen=True)
class ResizeMethod:
    """A named image resize with the mask resize that goes with it (both uint8 array -> array)."""

    name: str
    image: Callable[[np.ndarray, int, int], np.ndarray]
    mask: Callable[[np.ndarray, int, int], np.ndarray]


RESIZE_METHODS = {
    m.name: m
    for m in (
        ResizeMethod("cv2-linear", cv2_linear, cv2_nearest),
        ResizeMethod("pil-bilinear-aa", _pil_resize(Image.Resampling.BILINEAR), _pil_resize(Image.Resampling.NEAREST)),
    )
}
LEGACY_RESIZE = "pil-bilinear-aa"  # what a spec, config or manifest without a "resize" field was made with


@dataclass(frozen=True)
class PreprocessSpec:
    """How an RGB uint8 image becomes the model input; recorded in every artifact's manifest."""

    size: int = 512
    resize: str = LEGACY_RESIZE  # a RESIZE_METHODS name; the model configs name theirs explicitly
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    channel_order: str = "RGB"
    layout: str = "NCHW"
    dtype: str = "float32"
    scale: float = field(default=1.0 / 255.0)

    def __post_init__(self):
        if self.resize not in RESIZE_METHODS:
            raise ValueError(f"unknown resize {self.resize!r}; known: {', '.join(RESIZE_METHODS)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessSpec:
        d = dict(d)
        d["mean"] = tuple(d["mean"])
        d["std"] = tuple(d["std"])
        # Manifests written before the resize was named carry Pillow's filter name instead.
        legacy = d.pop("resample", "bilinear")
        if "resize" not in d and legacy != "bilinear":
            raise ValueError(f"unsupported resample {legacy!r} (only Pillow 'bilinear' was ever written)")
        return cls(**d)


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
    return _decode(path, str(path), max_pixels, reduce_to)


def decode_bytes(
    data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS, reduce_to: int | None = None
) -> DecodedImage:
    """decode_image for bytes already in memory (an HTTP upload); `name` stands for the file in messages."""
    if not data:
        raise ImageLoadError(f"{name}: empty file")
    return _decode(io.BytesIO(data), name, max_pixels, reduce_to)


def _decode(source: Path | io.BytesIO, name: str, max_pixels: int, reduce_to: int | None) -> DecodedImage:
    try:
        with warnings.catch_warnings():
            # Our explicit limit below replaces Pillow's warning zone; a corrupt file's UserWarning
            # (e.g. "Corrupt EXIF data") says nothing the result or the error does not.
            warnings.simplefilter("ignore")
            with Image.open(source) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageLoadError(
                        f"{name}: refused, {width}x{height} is more than the {max_pixels:,}-pixel "
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
        raise ImageLoadError(f"{name}: refused by Pillow's decompression-bomb limit ({exc})") from None
    except Image.UnidentifiedImageError:
        raise UnknownImageFormat(f"{name}: not a readable image (unknown format)") from None
    except MemoryError:
        raise ImageLoadError(f"{name}: not enough memory to decode this image") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is this image's error (see decode_image)
        raise ImageLoadError(f"{name}: cannot decode image ({type(exc).__name__}: {exc})") from None
    if min(rgb.size) < 1:
        raise ImageLoadError(f"{name}: image has no pixels")
    return DecodedImage(rgb, width, height)


def resize_rgb8(image: Image.Image | np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """RGB uint8 image (PIL or HxWx3 array) -> uint8 [size, size, 3] with spec.resize: the resize half of
    resize_and_normalize, what a client of a graph with the normalisation baked in (maskclip-triton
    --raw-input) sends."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 array, got {image.shape} {image.dtype}")
    else:
        image = np.asarray(image if image.mode == "RGB" else to_rgb8(image))
    if image.shape[:2] != (spec.size, spec.size):
        image = RESIZE_METHODS[spec.resize].image(np.ascontiguousarray(image), spec.size, spec.size)
    return image


def resize_and_normalize(image: Image.Image | np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """RGB uint8 image (PIL or HxWx3 array) -> float32 [3, size, size], CLIP-normalised.

    Plain resize to a square (no padding, no aspect preservation) with spec.resize, in uint8 (as
    the authors resize before normalising).
    """
    x = resize_rgb8(image, spec).astype(np.float32) * np.float32(spec.scale)  # [S,S,3] in 0..1
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))  # [3,S,S]


def resize_mask(mask: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Ground-truth mask HxW uint8 -> size x size uint8 with the nearest resize of spec.resize (a writable copy)."""
    if mask.shape != (spec.size, spec.size):
        mask = RESIZE_METHODS[spec.resize].mask(np.ascontiguousarray(mask), spec.size, spec.size)
    return np.array(mask, dtype=np.uint8)


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
