"""One pipeline for every front end: decode -> prepare -> detect -> record, then the front end's sinks.

    source (a file path or an Upload) --decode--> Item (upright RGB, sha256, PreparedImage, or its error)
    Items --detect--> Detections (one forward pass per batch; tiles when asked)
    Item + Detection --record--> the one record (present/outputs.detection_record), its PNGs written by an
    image sink (present/image_sinks: files for maskclip-run, data URIs for maskclip-serve)

maskclip-run streams a list of paths through `scan` (threads decode the next batch and write the last
one's PNGs while the model runs) and hands each record to its tables; maskclip-serve decodes uploads with
`decode`, batches requests in its micro-batcher and makes each answer with `record`; a distributed worker
that holds a Detector answers a batch of decoded Items with `answer`. A failed image is a record
({"path", "error"}) everywhere, never an exception that ends the run.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from ..detect.detector import Detection, Detector, PreparedImage, prepare_image
from ..detect.tiling import detect_tiled
from ..errors import UsageError, message_of
from ..kernel.hashing import file_sha256
from ..kernel.inputs import is_uri, read_uri
from ..kernel.preprocess import (
    DECODE_MARGIN,
    DEFAULT_MAX_PIXELS,
    ImageLoadError,
    ImageTooLarge,
    PreprocessSpec,
    UnknownImageFormat,
    decode_bytes,
    decode_image,
)
from ..present.outputs import detection_record


@dataclass(frozen=True)
class Upload:
    """An image that arrives as bytes (an HTTP upload); `name` is its record's path."""

    name: str
    data: bytes


Source = str | Upload


class ImageSink(Protocol):
    """Writes an image's mask and overlay, returns what the record's mask and overlay fields say."""

    @property
    def wants_full_size(self) -> bool: ...

    def write(self, path: str, image: Image.Image | None, detection: Detection) -> tuple[str | None, str | None]: ...


@dataclass(frozen=True)
class Plan:
    """What a run asks of every image: which get a mask, tiles, whether the full-size photo is kept, the pixel limit."""

    masks_for: str = "fake"
    tiles: bool = False
    full_size: bool = False  # the photo is needed at its own size (an overlay is drawn on it)
    max_pixels: int = DEFAULT_MAX_PIXELS

    def reduce_to(self, spec: PreprocessSpec) -> int | None:
        """See decode_image: None when the full-size photo is needed (overlays, tiles)."""
        return None if self.full_size or self.tiles else DECODE_MARGIN * spec.size


@dataclass
class Item:
    """One input after decoding: hashed and prepared, or failed (error set, the rest None)."""

    path: str
    sha256: str | None = None
    image: Image.Image | None = None  # kept only when the plan needs the full-size photo
    prepared: PreparedImage | None = None
    ms: float = 0.0  # decoding and hashing (preparing is in prepared.ms)
    error: str | None = None
    unknown_format: bool = False  # the bytes are no image format at all (the server answers 415)
    too_large: bool = False  # over the pixel limit (the server answers 413)


def decode(source: Source, spec: PreprocessSpec, plan: Plan) -> Item:
    """Decode, hash and prepare one input; whatever fails fails this Item only. Thread-safe, needs no Detector."""
    name = source.name if isinstance(source, Upload) else source
    start = time.perf_counter()
    try:
        if is_uri(name) and not isinstance(source, Upload):  # s3://, gs://, hdfs://, file://: read through pyarrow
            source = Upload(name, read_uri(name))
        if isinstance(source, Upload):
            decoded = decode_bytes(source.data, name, plan.max_pixels, plan.reduce_to(spec))
            sha256 = hashlib.sha256(source.data).hexdigest()
        else:
            decoded = decode_image(source, plan.max_pixels, plan.reduce_to(spec))
            sha256 = file_sha256(source)
        prepared = prepare_image(decoded.image, spec, (decoded.width, decoded.height))
    except (ImageLoadError, UsageError) as exc:  # UsageError: a URI whose file system cannot be reached
        too_large = isinstance(exc, ImageTooLarge)
        return Item(name, error=str(exc), unknown_format=isinstance(exc, UnknownImageFormat), too_large=too_large)
    except OSError as exc:  # reading a URI
        return Item(name, error=f"{name}: {message_of(exc)}")
    except Exception as exc:  # noqa: BLE001 - whatever fails here fails this image only
        return Item(name, error=f"{name}: {type(exc).__name__}: {exc}")
    image = None if plan.reduce_to(spec) else decoded.image
    return Item(name, sha256, image, prepared, ms=(time.perf_counter() - start) * 1e3 - prepared.ms)


def detect(detector: Detector, items: Sequence[Item], plan: Plan) -> list[tuple[Item, Detection | None]]:
    """Run the decoded Items of one batch; an inference failure fails this batch's Items, not the run."""
    decodable = [item for item in items if item.error is None]
    try:
        detections = detector.detect_prepared([item.prepared for item in decodable], plan.masks_for)
        answers = dict(zip(map(id, decodable), detections, strict=True))
        if plan.tiles:  # native-resolution masks, for the images that get a mask at all
            for item in decodable:
                if answers[id(item)].mask_computed:
                    answers[id(item)] = detect_tiled(detector, item.image, answers[id(item)])
    except Exception as exc:  # ONNX Runtime / TensorRT raise their own exception classes
        reason = message_of(exc)
        for item in decodable:
            item.error = f"{item.path}: inference failed: {reason}"
        answers = {}
    return [(item, answers.get(id(item))) for item in items]


def record(detector: Detector, item: Item, detection: Detection | None, images: ImageSink) -> dict:
    """The Item's record, its mask and overlay written by `images` (only when its mask was computed);
    an Item without a Detection gets its error record."""
    if detection is None:
        return {"path": item.path, "error": item.error}
    start = time.perf_counter()
    mask, overlay = None, None
    if detection.mask_computed:  # masks_for fake: an image judged real has no mask to write
        try:
            mask, overlay = images.write(item.path, item.image, detection)
        except OSError as exc:
            return {"path": item.path, "error": f"{item.path}: cannot write outputs: {exc}"}
    ms = item.ms + detection.ms + (time.perf_counter() - start) * 1e3
    return detection_record(item.path, item.sha256, detection, detector, ms, mask, overlay)


def answer(detector: Detector, items: Sequence[Item], plan: Plan, images: ImageSink) -> list[dict]:
    """The per-batch step: decoded Items -> their records, in order (what a worker holding a Detector runs)."""
    return [record(detector, item, detection, images) for item, detection in detect(detector, items, plan)]


def scan(detector: Detector, sources: Sequence[Source], plan: Plan, images: ImageSink) -> Iterator[dict]:
    """Yield one record per source, in input order.

    A small thread pool keeps the model busy: while batch k is inferred, workers decode batch k+1
    and write the PNGs of batch k-1 (Pillow and zlib release the GIL for both).
    """
    size = detector.batch_size
    spec = detector.artifact.preprocess
    chunks = [sources[i : i + size] for i in range(0, len(sources), size)]
    workers = max(2, min(4, os.cpu_count() or 2))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="maskclip-io") as pool:
        decoding: list[Future] = [pool.submit(decode, s, spec, plan) for s in chunks[0]] if chunks else []
        writing: list[Future] = []
        for index in range(len(chunks)):
            items = [f.result() for f in decoding]
            following = chunks[index + 1] if index + 1 < len(chunks) else []
            decoding = [pool.submit(decode, s, spec, plan) for s in following]
            answers = detect(detector, items, plan)
            yield from (f.result() for f in writing)
            writing = [pool.submit(record, detector, item, detection, images) for item, detection in answers]
        yield from (f.result() for f in writing)
