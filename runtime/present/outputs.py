"""Result files: mask PNGs (binary at the threshold, or the probability map), overlays, JSON lines and CSV.

PNGs are written to a hidden temporary file in the destination folder and moved over the final
name with os.replace, so a reader (or a crash) never sees half a PNG. They record which image they
were made for, so a later run never overwrites another image's mask of the same name.

The JSON lines and CSV tables are written record by record, each with one os.write as soon as the
image is answered: a kill (SIGTERM, SIGHUP, SIGKILL, the OOM killer) loses at most the images in
flight, and --resume reads what is there, dropping a torn last line. Each table is locked (flock)
for the run, so a second run writing the same file is refused instead of interleaving with it. A
failed write (a full disk) is undone in both tables, so they always hold the same records.

A file name that is not valid UTF-8 is written with each undecodable byte as the JSON escape
\\udcXX (Python's surrogateescape: os.fsencode(record["path"]) gives the original bytes back); the CSV
holds the same escape as text.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import stat
import sys
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, PngImagePlugin

from ..contract.verdict_calibration import VERDICTS
from ..errors import InputError, NotFinished
from ..kernel.atomic import atomic_path
from .overlay import DEFAULT_OVERLAY_SIZE, explained_overlay, fit_within, heat_overlay

try:
    import fcntl
except ImportError:  # Windows: tables are written the same way, without the lock
    fcntl = None

_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)

if TYPE_CHECKING:
    from ..detect.detector import Detection, Detector

# zlib level 1: about 4x faster than Pillow's default 6 for ~10% larger files; at 6, PNG encoding
# of overlays, not the model, limited end-to-end throughput.
PNG_COMPRESS_LEVEL = 1

RECORD_FIELDS = (
    "path",
    "sha256",
    "width",
    "height",
    "fake_prob",
    "calibrated_prob",
    "verdict",
    "operating_point",
    "threshold",
    "uncertain_below",
    "mask_fraction",
    "mask_computed",
    "mask_policy",
    "mask",
    "overlay",
    "backend",
    "model_id",
    "precision",
    "self_check",
    "demo",
    "ms",
    "error",
)

# What an answered record read back (--resume) must hold, with the types it was written with: a record
# edited or written by something else is answered again rather than trusted (or crashing the run).
_NUMBER = (int, float)
ANSWER_TYPES = {
    "path": str,
    "verdict": str,
    "fake_prob": _NUMBER,
    "threshold": _NUMBER,
    "width": int,
    "height": int,
    "ms": _NUMBER,
}


def answer_problem(record: dict) -> str | None:
    """Why an answered record read back cannot be kept (a missing field, a value of the wrong kind), or None."""
    for field, kind in ANSWER_TYPES.items():
        if field not in record:
            return f"no {field!r}"
        value = record[field]
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"{field!r} is {type(value).__name__}, not {'a number' if kind is _NUMBER else kind.__name__}"
    if record["verdict"] not in VERDICTS:
        return f"unknown verdict {record['verdict'][:40]!r}"
    return None


# PNG text key holding source_tag() of the image a mask or overlay was made for.
SOURCE_KEY = "maskclip-source"


def detection_record(
    path: str,
    sha256: str | None,
    detection: Detection,
    detector: Detector,
    ms: float,
    mask: str | None = None,
    overlay: str | None = None,
) -> dict:
    """The one result record: a maskclip-run JSON line, a CSV row and maskclip-serve's answer.

    mask / overlay say where those images are: a file path (maskclip-run) or a data URI (the server).
    """
    return {
        "path": path,
        "sha256": sha256,
        "width": detection.width,
        "height": detection.height,
        "fake_prob": round(detection.fake_prob, 6),
        "calibrated_prob": None if detection.calibrated_prob is None else round(detection.calibrated_prob, 6),
        "verdict": detection.verdict,
        "operating_point": detection.operating_point,
        "threshold": detection.verdict_threshold,
        "uncertain_below": detection.band[0] if detection.band else None,
        "mask_fraction": None if detection.mask_fraction is None else round(detection.mask_fraction, 6),
        "mask_computed": detection.mask_computed,
        "mask_policy": detection.mask_policy,
        "mask": mask,
        "overlay": overlay,
        "backend": detector.backend,
        "model_id": detector.model_id,
        "precision": detector.artifact.precision,
        "self_check": detector.self_check.status,
        "demo": detection.demo,  # a demonstration model's answer (the artifact's card): not evidence
        "ms": round(ms, 2),
    }


def source_tag(image_path: str) -> str:
    """A stable id of an input file (its real path's hash), whatever the spelling or encoding of its name."""
    return hashlib.sha1(os.fsencode(os.path.realpath(image_path))).hexdigest()


def made_for_another_image(png_path: str | os.PathLike, image_path: str) -> bool:
    """True when png_path exists and is not our output for image_path (another image's, or not ours at all)."""
    try:
        with Image.open(png_path) as png:
            return png.text.get(SOURCE_KEY) != source_tag(image_path)
    except FileNotFoundError:
        return False
    except Exception:  # noqa: BLE001 - unreadable: whatever it is, it is not ours to overwrite
        return True


# PNG text key of an overlay with a legend: "WxH", the photo's block in its top-left corner (for thumbnails).
PHOTO_SIZE_KEY = "maskclip-photo-size"


def _png_info(image_path: str | None, photo_size: tuple[int, int] | None = None) -> PngImagePlugin.PngInfo | None:
    if image_path is None and photo_size is None:
        return None
    info = PngImagePlugin.PngInfo()
    if image_path is not None:
        info.add_text(SOURCE_KEY, source_tag(image_path))
    if photo_size is not None:
        info.add_text(PHOTO_SIZE_KEY, "{}x{}".format(*photo_size))
    return info


def overlay_photo_size(png: Image.Image) -> tuple[int, int]:
    """The size of the photo block at the top left of an overlay PNG (the whole PNG when it has no legend)."""
    width, _, height = png.text.get(PHOTO_SIZE_KEY, "").partition("x") if hasattr(png, "text") else ("", "", "")
    return (int(width), int(height)) if width.isdigit() and height.isdigit() else png.size


def mask_image(prob: np.ndarray, threshold: float | None = None) -> Image.Image:
    """Probability map [H,W] in 0..1 -> 8-bit greyscale image (0 = real, 255 = certainly generated).

    threshold: the binary mask instead, 255 where prob > threshold (the pixels mask_fraction counts)."""
    prob = np.asarray(prob, dtype=np.float32)
    levels = np.empty(prob.shape, np.uint8)
    # In strips: a 108-megapixel mask is 430 MB in float32, and each whole-size temporary another.
    for top in range(0, len(prob), 1024):
        strip = prob[top : top + 1024]
        if threshold is None:
            levels[top : top + 1024] = np.clip(np.rint(strip * 255.0), 0, 255)
        else:
            levels[top : top + 1024] = np.where(strip > threshold, 255, 0)
    return Image.fromarray(levels, "L")


def save_mask_png(
    prob: np.ndarray, path: str | os.PathLike, source: str | None = None, threshold: float | None = None
) -> None:
    """The mask_image as a PNG; source: the image's path, recorded in the PNG (see made_for_another_image)."""
    with atomic_path(path) as temp:
        image = mask_image(prob, threshold)
        image.save(temp, format="PNG", compress_level=PNG_COMPRESS_LEVEL, pnginfo=_png_info(source))


def save_overlay_png(
    image: Image.Image,
    prob: np.ndarray,
    path: str | os.PathLike,
    source: str | None = None,
    detection: Detection | None = None,
    max_side: int | None = DEFAULT_OVERLAY_SIZE,
) -> None:
    """The overlay as a PNG: with detection, explained_overlay (legend, capped at max_side), else the
    bare heat_overlay at the photo's size. source: as for save_mask_png."""
    with atomic_path(path) as temp:
        if detection is None:
            overlay, photo_size = heat_overlay(image, prob), None
        else:
            overlay, photo_size = explained_overlay(image, prob, detection, max_side), fit_within(image.size, max_side)
        overlay.save(temp, format="PNG", compress_level=PNG_COMPRESS_LEVEL, pnginfo=_png_info(source, photo_size))


class ResultsUnwritable(NotFinished):
    """A results table cannot be written (full disk, lost permission); the message names the file."""


class TableBusy(InputError):
    """Another process holds the lock on a results table."""


def json_line(record: dict) -> bytes:
    # backslashreplace turns the lone surrogates of an undecodable file name into JSON escapes (\\udcXX).
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace")


def csv_row(record: dict | None) -> bytes:
    """One CSV line in RECORD_FIELDS order (absent values as empty cells); None gives the header."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=RECORD_FIELDS, extrasaction="ignore")
    if record is None:
        writer.writeheader()
    else:
        writer.writerow({k: "" if record.get(k) is None else record[k] for k in RECORD_FIELDS})
    return text.getvalue().encode("utf-8", "backslashreplace")


def parse_json_lines(data: bytes) -> list[dict]:
    """Records of a JSON lines table; a torn last line (no newline) and foreign lines are skipped."""
    records = []
    for line in data.split(b"\n")[:-1]:  # the piece after the last newline is torn or empty
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(record, dict) and isinstance(record.get("path"), str):
            records.append(record)
    return records


def read_json_lines(path: str | os.PathLike) -> list[dict]:
    try:
        return parse_json_lines(Path(path).read_bytes())
    except FileNotFoundError:
        return []


class LockedTable:
    """A results file opened for appending under an exclusive flock, held until close().

    Only a regular file is opened (prepare_output_file's rule, checked again here on the open file, and a
    symlink is not followed): a FIFO or device node that appeared since the check is refused."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, _OPEN_FLAGS | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK, 0o666)
        except OSError as exc:
            raise InputError(f"{self.path}: cannot open it as a results table ({exc.strerror or exc})") from None
        if not stat.S_ISREG(os.fstat(self._fd).st_mode):
            os.close(self._fd)
            raise InputError(f"{self.path}: not a regular file; give a regular file or a new name")
        try:
            _lock(self._fd)
        except BlockingIOError:
            os.close(self._fd)
            raise TableBusy(
                f"{self.path}: another maskclip-run is writing it; wait for it or choose another file"
            ) from None

    def read(self) -> bytes:
        os.lseek(self._fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(self._fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)

    def reset(self, content: bytes) -> None:
        """Make the file hold exactly `content`: atomically (a locked temporary file renamed over it),
        so a crash here leaves the old content or the new, never a mix."""
        if os.fstat(self._fd).st_size == 0 and not content:
            return
        fd = None
        try:
            with atomic_path(self.path) as temp:
                fd = os.open(temp, _OPEN_FLAGS)
                _lock(fd)  # nobody else can know this file yet: it is ours before it has the name
                os.chmod(temp, stat.S_IMODE(os.fstat(self._fd).st_mode))
                _write_all(fd, content)
        except BaseException:
            if fd is not None:
                os.close(fd)
            raise
        os.close(self._fd)
        self._fd = fd

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def append(self, data: bytes) -> None:
        _write_all(self._fd, data)

    def truncate(self, size: int) -> None:
        os.ftruncate(self._fd, size)

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            os.fsync(self._fd)
        finally:
            os.close(self._fd)
            self._fd = -1


def _lock(fd: int) -> None:
    """Exclusive advisory lock for the life of fd; BlockingIOError when another process holds it."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class ResultTables:
    """The JSON lines output (a file, or stdout for "-") and the optional CSV, kept in step record by record."""

    def __init__(self, json_target: str, csv_path: str | None):
        self.json = None if json_target == "-" else LockedTable(json_target)
        try:
            self.csv = LockedTable(csv_path) if csv_path else None
        except BaseException:
            if self.json:
                self.json.close()
            raise

    def previous_records(self) -> list[dict]:
        """What the JSON file holds from an earlier run (read under our lock)."""
        return parse_json_lines(self.json.read()) if self.json else []

    def start(self, kept: Iterable[dict]) -> None:
        """Begin the tables with the records `kept` from an earlier run (none: start empty)."""
        kept = list(kept)
        if self.json:
            _guarded(self.json, self.json.reset, b"".join(map(json_line, kept)))
        if self.csv:
            _guarded(self.csv, self.csv.reset, b"".join(map(csv_row, [None, *kept])))

    def write(self, record: dict) -> None:
        """Append one record to every table, or to none: a failed write is undone where it got through."""
        if self.json is None:
            sys.stdout.write(json_line(record).decode("utf-8"))
            sys.stdout.flush()  # a consumer piping our output sees each image as it finishes
        lines = {self.json: json_line(record), self.csv: self.csv and csv_row(record)}
        lines.pop(None, None)
        sizes = {table: table.size() for table in lines}
        for table, line in lines.items():
            try:
                table.append(line)
            except OSError as exc:
                for written, size in sizes.items():
                    with suppress(OSError):
                        written.truncate(size)
                raise ResultsUnwritable(f"cannot write results to {table.path}: {exc.strerror or exc}") from None

    def close(self) -> None:
        for table in (self.json, self.csv):
            if table:
                _guarded(table, table.close)


def _guarded(table: LockedTable, action, *args) -> None:
    try:
        action(*args)
    except OSError as exc:
        raise ResultsUnwritable(f"cannot write results to {table.path}: {exc.strerror or exc}") from None
