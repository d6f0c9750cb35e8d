"""Result files: probability-mask PNGs, heat overlays, JSON lines and CSV, all written atomically.

Every file is written to a hidden temporary file in the destination folder and moved over the
final name with os.replace, so a reader (or a crash) never sees half a PNG or half a table.
JSON/CSV tables are committed when the run ends, also when it is interrupted, so --resume can
pick up from a partial run.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

# zlib level 1: about 4x faster than Pillow's default 6 for ~10% larger files; at 6, PNG encoding
# of overlays, not the model, limited end-to-end throughput.
PNG_COMPRESS_LEVEL = 1

RECORD_FIELDS = (
    "path",
    "sha256",
    "width",
    "height",
    "fake_prob",
    "verdict",
    "threshold",
    "mask_fraction",
    "mask_computed",
    "mask",
    "overlay",
    "backend",
    "model_id",
    "self_check",
    "ms",
    "error",
)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        yield temp
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


class AtomicTextFile:
    """A text file built in a temporary file beside its destination and moved into place by commit()."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._temp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        # os.open with 0o666 lets the umask decide permissions, as for any file the user writes.
        fd = os.open(self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        self._file = open(fd, "w", encoding="utf-8", newline="")  # noqa: SIM115 - closed by commit/discard

    def write(self, text: str) -> None:
        self._file.write(text)

    def commit(self) -> None:
        if self._file.closed:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._temp, self.path)

    def discard(self) -> None:
        self._file.close()
        self._temp.unlink(missing_ok=True)


def save_mask_png(prob: np.ndarray, path: str | os.PathLike) -> None:
    """Probability map [H,W] in 0..1 -> 8-bit greyscale PNG (0 = real, 255 = certainly generated)."""
    levels = np.clip(np.rint(np.asarray(prob, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    with atomic_path(path) as temp:
        Image.fromarray(levels, "L").save(temp, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def heat_overlay(image: Image.Image, prob: np.ndarray) -> Image.Image:
    """Blend a red-to-yellow heat map over the photo where the mask probability is high.

    Below 0.25 the photo is left untouched, so the eye goes to the suspicious regions; the colour
    runs red -> yellow and the opacity (at most 0.7) rises with the probability. The blend is done
    by Pillow on 8-bit planes: float RGB copies of a 50-megapixel photo would cost gigabytes.
    """
    prob = np.asarray(prob, dtype=np.float32)
    opacity = _to_u8(np.clip((prob - 0.25) / 0.75, 0.0, 1.0) * (0.7 * 255.0))
    green = _to_u8(np.clip((prob - 0.5) * 2.0, 0.0, 1.0) * 255.0)
    size = (prob.shape[1], prob.shape[0])
    heat = Image.merge("RGB", (Image.new("L", size, 255), Image.fromarray(green, "L"), Image.new("L", size, 0)))
    return Image.composite(heat, image.convert("RGB"), Image.fromarray(opacity, "L"))


def _to_u8(values: np.ndarray) -> np.ndarray:
    return np.rint(values).astype(np.uint8)


def save_overlay_png(image: Image.Image, prob: np.ndarray, path: str | os.PathLike) -> None:
    with atomic_path(path) as temp:
        heat_overlay(image, prob).save(temp, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


class JsonLinesOutput:
    """One JSON object per line, to a file (atomically) or to stdout ("-")."""

    def __init__(self, target: str, keep: Iterable[dict] = ()):
        self._file = None if target == "-" else AtomicTextFile(target)
        for record in keep:
            self.write(record)

    def write(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        if self._file is None:
            sys.stdout.write(line)
            sys.stdout.flush()  # a consumer piping our output sees each image as it finishes
        else:
            self._file.write(line)

    def close(self) -> None:
        if self._file is not None:
            self._file.commit()

    def discard(self) -> None:
        if self._file is not None:
            self._file.discard()


class CsvOutput:
    """The same records as a CSV table with a fixed column order; absent values are empty cells."""

    def __init__(self, path: str | os.PathLike, keep: Iterable[dict] = ()):
        self._file = AtomicTextFile(path)
        self._writer = csv.DictWriter(self._file, fieldnames=RECORD_FIELDS, extrasaction="ignore")
        self._writer.writeheader()
        for record in keep:
            self.write(record)

    def write(self, record: dict) -> None:
        self._writer.writerow({k: "" if record.get(k) is None else record[k] for k in RECORD_FIELDS})

    def close(self) -> None:
        self._file.commit()


def read_json_lines(path: str | os.PathLike) -> list[dict]:
    """Records of an earlier run; a torn or foreign line is skipped, not fatal (it is simply redone)."""
    records = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return records
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "path" in record:
            records.append(record)
    return records


def read_csv_records(path: str | os.PathLike) -> list[dict]:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []
