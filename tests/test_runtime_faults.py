"""Faults a long batch meets in the field: hostile image bytes (fuzzed decode path) and a maskclip-run
killed mid-run (SIGTERM, SIGHUP, SIGKILL), after which --resume answers every image exactly once."""

from __future__ import annotations

import io
import json
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from maskclip_runtime.detect.detector import DEMO_DIR
from maskclip_runtime.kernel.preprocess import ImageLoadError, decode_image

EXAMPLES = sorted((DEMO_DIR / "examples").glob("*.jpg"))
ORIENTATION = 0x0112


def _exif(*entries: tuple[int, int, int, bytes]) -> bytes:
    """A little-endian EXIF block from raw IFD entries (tag, type, count, value)."""
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        ifd += struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\0")
    return b"Exif\0\0II*\0" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)


def _seed_files() -> dict[str, bytes]:
    """The bundled JPEGs, the same pixels as PNG, TIFF and WebP with EXIF, and two JPEGs whose EXIF
    stores numeric tags as text (exif_transpose raised struct.error / TypeError on them)."""
    seeds = {path.name: path.read_bytes() for path in EXAMPLES}
    rotate = _exif((ORIENTATION, 3, 1, struct.pack("<H", 6)), (0x010F, 2, 4, b"cam\0"))
    for path in EXAMPLES:
        with Image.open(path) as image:
            image.load()
            for fmt in ("PNG", "TIFF", "WEBP", "JPEG"):
                data = io.BytesIO()
                image.save(data, format=fmt, exif=rotate)
                seeds[f"{path.stem}.exif.{fmt.lower()}"] = data.getvalue()
    for tag in (0x0128, 0x011A):  # ResolutionUnit, XResolution stored as ASCII
        data = io.BytesIO()
        Image.open(EXAMPLES[0]).save(
            data, format="JPEG", exif=_exif((ORIENTATION, 3, 1, b"\x06\0"), (tag, 2, 4, b"ab\0"))
        )
        seeds[f"text_tag_{tag:x}.jpg"] = data.getvalue()
    return seeds


def test_decode_path_fuzz_every_outcome_is_an_image_or_one_image_error(tmp_path):
    """Seeded random byte mutations (1..8 bytes each) of valid files: decoding may succeed or fail,
    but only ever as ImageLoadError naming the file, never another exception that would stop a batch."""
    seeds = _seed_files()
    rng = random.Random(11)
    mutants = [(name, data) for name, data in seeds.items()]  # the unmutated seeds first
    for _ in range(1500):
        name, data = rng.choice(sorted(seeds.items()))
        data = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        mutants.append((name, bytes(data)))
    failures, escaped = 0, []
    for index, (name, data) in enumerate(mutants):
        path = tmp_path / f"{index}-{name}"
        path.write_bytes(data)
        for reduce_to in (None, 16):
            try:
                decoded = decode_image(path, reduce_to=reduce_to)
            except ImageLoadError as exc:
                failures += 1
                assert str(path) in str(exc)
            except Exception as exc:  # noqa: BLE001 - what the test is looking for
                escaped.append(f"{name}: {type(exc).__name__}: {exc}")
            else:
                assert decoded.image.mode == "RGB" and min(decoded.image.size) >= 1
        path.unlink()
    assert escaped == []
    assert 0 < failures < 2 * len(mutants)  # the mutations do break files, and not all of them


def _run_command() -> list[str]:
    script = Path(sys.executable).with_name("maskclip-run")
    return [str(script)] if script.exists() else [sys.executable, "-c", "from maskclip_runtime.cli import main; main()"]


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL], ids=lambda s: s.name)
def test_a_killed_run_resumes_with_every_image_answered_exactly_once(tmp_path, signum):
    photos = tmp_path / "photos"
    photos.mkdir()
    for copy in range(50):
        for example in EXAMPLES:
            shutil.copy(example, photos / f"{example.stem}-{copy:03d}.jpg")
    expected = sorted(str(p) for p in photos.iterdir())
    out, table, masks = tmp_path / "out.jsonl", tmp_path / "out.csv", tmp_path / "masks"
    flags = [str(photos), "--json", str(out), "--csv", str(table), "--masks", str(masks), "--batch", "2", "-q"]
    run = subprocess.Popen([*_run_command(), *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(_lines(out)) < 20 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    run.send_signal(signum)
    _, stderr = run.communicate(timeout=60)
    answered = len(_lines(out))
    assert 20 <= answered < len(expected), "the run must be killed mid-way"
    if signum != signal.SIGKILL:
        assert run.returncode == 128 + signum and "rerun with --resume" in stderr.decode()
    done = subprocess.run([*_run_command(), *flags, "--resume"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in _lines(out)]
    assert sorted(r["path"] for r in records) == expected  # each image exactly once
    assert all("error" not in r and Path(r["mask"]).is_file() for r in records)
    with open(table, newline="", encoding="utf-8") as f:
        assert [row.split(",")[0] for row in f.read().splitlines()[1:]] == [r["path"] for r in records]
    if signum != signal.SIGKILL:  # a SIGKILL can land inside a PNG write, leaving its hidden temporary file
        assert list(tmp_path.glob("**/.*.tmp")) == []
