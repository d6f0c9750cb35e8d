"""Synthetic "diffusion edits": an OpenSDID-format proxy data set made offline from real photos.

THIS IS A PROXY, NOT OpenSDID. It exists so that training, evaluation, export and the embedded
demo model can be exercised and measured without the real benchmark (35 GB, not reachable here).
Numbers on it say that the pipeline learns and localises a generator fingerprint; they say
nothing about performance on real diffusion edits.

How a fake is made (loosely what Stable Diffusion inpainting does with its VAE):
1. A real photo crop is encoded into a low-resolution "latent" (area downsampling by the
   generator's factor f), quantised and perturbed with noise.
2. A generator-specific "decoder" upsamples it again (bicubic, bilinear, or nearest + blur) and
   leaves a periodic pattern on the latent grid, as transposed convolutions do.
3. Partial edits blend the re-rendered image into a random region (blobs, ellipses, polygons)
   with a 1-pixel feathered border; full-synthesis fakes keep the whole re-rendered image.
4. Every image, real ones included, is JPEG-compressed at a random quality (75-95), so JPEG
   traces alone give nothing away.

Layouts written, per split (train/, test/), beside OUT/synth.json (settings):
- "parquet", OpenSDID's own format (its columns; HF image structs {bytes, path}):
  OUT/<split>/<generator>.parquet with keys real/<generator>/real/000123.jpg,
  partial/<generator>/fake/000124.jpg, full/<generator>/fake/000125.jpg (mask: PNG for partial fakes)
- "folder", the plain layout of maskclip_core.data.folders, which the file-based commands take too
  (export's --calib, maskclip-run, maskclip-serve): OUT/<split>/real/<generator>/000123.jpg,
  OUT/<split>/fake/<generator>/000124.jpg and OUT/<split>/masks/<generator>/000124.png. The folder
  reader rebuilds the same keys, labels and bytes as the parquet rows.
With both in one split folder, the data readers take the folder layout (open_samples checks it first).
Each generator's file holds its own real images, so per-generator detection scores have both
classes. Only 15 photos ship offline, so train and test share source photos but never an image:
each split draws its own crops, regions and noise from its own random stream. Output is
byte-identical for a given seed.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from maskclip_runtime.kernel.atomic import atomic_path, write_bytes_atomic, write_text_atomic


@dataclass(frozen=True)
class SynthGenerator:
    """A latent bottleneck and an upsampling decoder with its own trace."""

    factor: int  # latent downsampling
    levels: int  # latent quantisation levels per channel
    latent_noise: float  # std of noise added to the latent (0-255 scale)
    upsample: str  # bicubic | bilinear | nearest+blur
    pattern: str  # checker | stripes | grid: periodic decoder trace on the latent grid
    amplitude: float  # of the pattern, 0-255 scale


GENERATORS: dict[str, SynthGenerator] = {
    "sd15-like": SynthGenerator(8, 32, 2.0, "bicubic", "checker", 18.0),
    "sdxl-like": SynthGenerator(4, 48, 1.5, "bilinear", "grid", 16.0),
    "flux-like": SynthGenerator(8, 24, 3.0, "nearest+blur", "stripes", 16.0),
}

# Photos that ship inside scikit-image and scikit-learn (no download). Grey ones become RGB.
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "camera",
    "retina",
    "coins",
    "moon",
    "brick",
    "grass",
    "gravel",
    "sklearn:china.jpg",
    "sklearn:flower.jpg",
)

_UPSAMPLE = {"bicubic": cv2.INTER_CUBIC, "bilinear": cv2.INTER_LINEAR, "nearest+blur": cv2.INTER_NEAREST}
# Shares of each generator's images: real, partial edit, full synthesis.
COMPOSITION = (("real", 0.5), ("partial", 0.375), ("full", 0.125))


def load_photo(name: str) -> np.ndarray:
    """A bundled photo by name -> HxWx3 uint8."""
    if name.startswith("sklearn:"):
        from sklearn.datasets import load_sample_image

        image = load_sample_image(name.split(":", 1)[1])
    else:
        import skimage.data

        image = getattr(skimage.data, name)()
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3].astype(np.uint8))


def random_crop(photo: np.ndarray, rng: np.random.Generator, min_size: int, max_size: int) -> np.ndarray:
    """Random square crop (35-100% of the short side), flip, resized to a side in [min_size, max_size].

    Square, so that the model's square resize scales the generator's periodic trace evenly.
    """
    h, w = photo.shape[:2]
    side = round(rng.uniform(0.35, 1.0) * min(h, w))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = photo[y : y + side, x : x + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    size = int(rng.integers(min_size, max_size + 1))
    return np.ascontiguousarray(cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA))


def render(image: np.ndarray, gen: SynthGenerator, rng: np.random.Generator) -> np.ndarray:
    """Encode to the latent and decode again: HxWx3 uint8 -> HxWx3 uint8 with the generator's traces."""
    h, w = image.shape[:2]
    f = gen.factor
    latent = cv2.resize(image.astype(np.float32), (max(1, w // f), max(1, h // f)), interpolation=cv2.INTER_AREA)
    step = 256.0 / gen.levels
    latent = np.round(latent / step) * step + rng.normal(0.0, gen.latent_noise, latent.shape).astype(np.float32)
    out = cv2.resize(latent, (w, h), interpolation=_UPSAMPLE[gen.upsample])
    if gen.upsample == "nearest+blur":
        out = cv2.GaussianBlur(out, (0, 0), f / 3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = 2 * np.pi / f
    if gen.pattern == "checker":
        trace = np.cos(phase * xx) * np.cos(phase * yy)
    elif gen.pattern == "grid":
        trace = np.maximum(np.cos(phase * xx), np.cos(phase * yy))
    else:
        trace = np.cos(phase * (xx + yy))
    out = out + gen.amplitude * trace[..., None] * np.float32([1.0, -0.5, 0.75])  # colour-dependent trace
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def random_region(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Union of 1-3 random ellipses / polygons covering roughly 8-45% of the image -> HxW uint8 {0,1}."""
    for _ in range(20):
        mask = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            cx, cy = rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h
            rx, ry = rng.uniform(0.1, 0.35) * w, rng.uniform(0.1, 0.35) * h
            if rng.random() < 0.5:
                angle = float(rng.uniform(0, 180))
                cv2.ellipse(mask, (round(cx), round(cy)), (round(rx), round(ry)), angle, 0, 360, 1, -1)
            else:
                n = int(rng.integers(3, 9))
                angles = np.sort(rng.uniform(0, 2 * np.pi, n))
                radii = rng.uniform(0.5, 1.0, n)
                pts = np.stack([cx + rx * radii * np.cos(angles), cy + ry * radii * np.sin(angles)], 1)
                cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
        if 0.08 <= mask.mean() <= 0.45:
            return mask
    return mask


def encode(image: np.ndarray, fmt: str, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, quality=quality) if fmt == "JPEG" else Image.fromarray(image).save(
        buf, format=fmt
    )
    return buf.getvalue()


def make_example(
    photo: np.ndarray, kind: str, gen: SynthGenerator, rng: np.random.Generator, min_size: int, max_size: int
) -> tuple[bytes, bytes | None]:
    """One (JPEG image bytes, PNG mask bytes or None) of the given kind."""
    image = random_crop(photo, rng, min_size, max_size)
    mask_png = None
    if kind == "partial":
        mask = random_region(*image.shape[:2], rng)
        soft = cv2.GaussianBlur(mask.astype(np.float32), (3, 3), 0)[..., None]  # 1-pixel feather
        blended = soft * render(image, gen, rng) + (1.0 - soft) * image
        image = np.clip(np.round(blended), 0, 255).astype(np.uint8)
        mask_png = encode(mask * 255, "PNG")
    elif kind == "full":
        image = render(image, gen, rng)
    return encode(image, "JPEG", int(rng.integers(75, 96))), mask_png


SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        ("mask", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        ("label", pa.int64()),
    ]
)


LAYOUTS = {"parquet": ("parquet",), "folder": ("folder",), "both": ("parquet", "folder")}


@dataclass(frozen=True)
class Example:
    key: str  # <kind>/<generator>/<real|fake>/<name>
    image: bytes  # JPEG
    mask: bytes | None  # PNG, partial fakes only
    label: int


def generator_examples(
    split_id: int, gen_id: int, name: str, photos: list[np.ndarray], count: int, seed: int, min_size: int, max_size: int
):
    """The `count` examples of one generator in one split; each from its own stream (seed, split, generator, index)."""
    kinds = [kind for kind, share in COMPOSITION for _ in range(round(share * count))]
    for index, kind in enumerate(kinds):
        rng = np.random.default_rng((seed, split_id, gen_id, index))
        photo = photos[int(rng.integers(len(photos)))]
        image, mask = make_example(photo, kind, GENERATORS[name], rng, min_size, max_size)
        key = f"{kind}/{name}/{'real' if kind == 'real' else 'fake'}/{index:06d}.jpg"
        yield Example(key, image, mask, 0 if kind == "real" else 1)


def write_parquet(path: Path, examples: list[Example]) -> None:
    """One generator's examples as OpenSDID rows (image and mask structs carry their file names)."""
    rows = {"key": [], "image": [], "mask": [], "label": []}
    for example in examples:
        file_name = example.key.rsplit("/", 1)[1]
        rows["key"].append(example.key)
        rows["image"].append({"bytes": example.image, "path": file_name})
        rows["mask"].append(None if example.mask is None else {"bytes": example.mask, "path": file_name[:-4] + ".png"})
        rows["label"].append(example.label)
    with atomic_path(path) as temp:
        pq.write_table(pa.table(rows, schema=SCHEMA), temp, row_group_size=128)


def write_folders(root: Path, examples: list[Example]) -> None:
    """Examples as files: root/<real|fake>/<generator>/<name>.jpg, root/masks/<generator>/<name>.png."""
    for example in examples:
        _kind, generator, folder, file_name = example.key.split("/")
        files = [(root / folder / generator / file_name, example.image)]
        if example.mask is not None:
            files.append((root / "masks" / generator / Path(file_name).with_suffix(".png"), example.mask))
        for path, data in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(path, data)


def write_split(
    out: Path,
    split: str,
    photos: list[np.ndarray],
    count: int,
    seed: int,
    generators: list[str],
    min_size: int,
    max_size: int,
    progress=None,
    layout: str = "parquet",
) -> None:
    """`count` images per generator into OUT/<split>/, as parquet files, folders or both (LAYOUTS)."""
    (out / split).mkdir(parents=True, exist_ok=True)
    split_id = {"train": 0, "test": 1}.get(split, 2)
    for gen_id, name in enumerate(generators):
        examples = []
        for example in generator_examples(split_id, gen_id, name, photos, count, seed, min_size, max_size):
            examples.append(example)
            if progress is not None:
                progress.update(1)
        if "parquet" in LAYOUTS[layout]:
            write_parquet(out / split / f"{name}.parquet", examples)
        if "folder" in LAYOUTS[layout]:
            write_folders(out / split, examples)


def synthesize(
    out: str | Path,
    seed: int = 0,
    train_count: int = 600,
    test_count: int = 200,
    generators: list[str] | None = None,
    min_size: int = 128,
    max_size: int = 192,
    progress=None,
    layout: str = "parquet",
) -> Path:
    """Write the proxy data set (train/ and test/ splits in `layout`, see LAYOUTS, + synth.json); returns its folder.

    The library keeps parquet as its default (what the demo model was trained on, in that order);
    `maskclip-synth` writes both layouts unless told otherwise.
    """
    out = Path(out)
    generators = list(generators or GENERATORS)
    unknown = [g for g in generators if g not in GENERATORS]
    if unknown:
        raise ValueError(f"unknown synthetic generator(s) {', '.join(unknown)}; known: {', '.join(GENERATORS)}")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    photos = [load_photo(n) for n in PHOTOS]
    for split, count in (("train", train_count), ("test", test_count)):
        if count > 0:
            write_split(out, split, photos, count, seed, generators, min_size, max_size, progress, layout)
    settings = {
        "proxy": "synthetic edits, NOT OpenSDID (see maskclip_core/data/synth.py)",
        "seed": seed,
        "train_count_per_generator": train_count,
        "test_count_per_generator": test_count,
        "sizes": [min_size, max_size],
        "layout": layout,
        "composition": dict(COMPOSITION),
        "photos": list(PHOTOS),
        "generators": {g: asdict(GENERATORS[g]) for g in generators},
    }
    write_text_atomic(out / "synth.json", json.dumps(settings, indent=2) + "\n")
    return out
