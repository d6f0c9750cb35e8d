"""maskclip-run end to end on the stand-in artifact: outputs checked against independent computation,
every kind of bad input, exit codes, --resume and atomic writes."""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from console_scripts import run_cli
from PIL import Image, ImageFilter
from standin_artifact import build_standin_artifact, expected_standin_output, sample_photos

from maskclip_runtime import cli
from maskclip_runtime.detect.detector import Detector
from maskclip_runtime.errors import EXIT_BACKEND_UNAVAILABLE, EXIT_NOT_FINISHED, EXIT_SOME_INPUTS_FAILED, EXIT_USAGE
from maskclip_runtime.kernel.inputs import images_in_folder
from maskclip_runtime.pipeline import steps as pipeline
from maskclip_runtime.present import image_sinks

ORIENTATION = 0x0112


@pytest.fixture
def artifact(standin_split):
    return standin_split


@pytest.fixture
def photo_dir(sample_photo_dir):
    return sample_photo_dir


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def temp_files(*folders: Path) -> list[Path]:
    return [p for folder in folders for p in Path(folder).rglob("*.tmp")]


# ---- outputs checked against independent computation


def test_records_masks_overlays_and_csv_are_consistent(artifact, photo_dir, tmp_path):
    out_json, out_csv, masks, overlays = tmp_path / "r.jsonl", tmp_path / "r.csv", tmp_path / "m", tmp_path / "o"
    prob_maps = tmp_path / "p"
    code, stdout, stderr = run_cli(
        photo_dir, "--model", artifact, "--json", out_json, "--csv", out_csv, "--masks", masks, "--overlays", overlays,
        "--prob-maps", prob_maps,
    )  # fmt: skip
    assert code == 0, stderr
    assert stdout == ""  # the JSON lines went to the file
    records = json_lines(out_json.read_text())
    assert [Path(r["path"]).name for r in records] == sorted(p.name for p in photo_dir.iterdir())
    for record in records:
        path = Path(record["path"])
        with Image.open(path) as image:
            photo = image.convert("RGB")
        assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert (record["width"], record["height"]) == photo.size
        fake_prob, model_mask = expected_standin_output(photo)
        assert record["fake_prob"] == pytest.approx(fake_prob, abs=1e-5)
        assert record["verdict"] == ("fake" if record["fake_prob"] > record["threshold"] else "real")
        assert record["threshold"] == 0.5
        assert (record["backend"], record["model_id"]) == ("onnxruntime-cpu", "standin-split-fp32-split")
        assert record["ms"] > 0
        # --masks: the binary mask the verdict's mask_fraction counted; --prob-maps: the probability map.
        mask = np.asarray(Image.open(record["mask"]))
        assert mask.dtype == np.uint8 and mask.shape == (photo.height, photo.width)
        assert set(np.unique(mask)) <= {0, 255}
        assert record["mask_fraction"] == pytest.approx(float((mask == 255).mean()), abs=1e-6)
        prob = np.asarray(Image.open(prob_maps / Path(record["mask"]).name.replace("_mask", "_prob")))
        assert prob.shape == mask.shape
        assert abs(prob.mean() / 255.0 - float(np.mean(model_mask))) < 0.02
        # The same pixels on both sides of the threshold, up to the 8-bit rounding of the probability map.
        assert (mask[prob >= 129] == 255).all() and (mask[prob <= 126] == 0).all()
        with Image.open(record["overlay"]) as overlay:
            # The photo (under the cap) on top, the legend strip below it.
            assert overlay.mode == "RGB" and overlay.width >= photo.width and overlay.height > photo.height
            overlay_px = np.asarray(overlay, np.int16)[: photo.height, : photo.width]
            photo_px = np.asarray(photo, np.int16)
        # Where the mask is ~0 (and away from the outline) the photo shows through unchanged.
        calm = (prob < 30) & ~np.asarray(Image.fromarray(mask).filter(ImageFilter.MaxFilter(7)), bool)
        assert np.abs(overlay_px[calm] - photo_px[calm]).max() <= 1
    with open(out_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(records)
    for row, record in zip(rows, records, strict=True):
        for key, value in record.items():
            assert row[key] == ("" if value is None else str(value)), key
        assert row["error"] == ""
    assert temp_files(tmp_path) == []


def test_json_to_stdout_by_default_with_progress_on_stderr(artifact, photo_dir):
    code, stdout, stderr = run_cli(photo_dir, "--model", artifact)
    assert code == 0
    records = json_lines(stdout)
    assert len(records) == 4 and all(r["mask"] is None and r["overlay"] is None for r in records)
    assert "img" in stderr and "4 images, 0 failed" in stderr
    code, stdout, stderr = run_cli(photo_dir, "--model", artifact, "--quiet")
    assert code == 0 and len(json_lines(stdout)) == 4 and stderr == ""


def test_paths_from_stdin_and_threshold_flag(artifact, photo_dir):
    names = sorted(str(p) for p in photo_dir.glob("*.jpg"))[:2]
    stdin = "\n".join(names) + "\n"
    code, stdout, _ = run_cli("-", "--model", artifact, "--threshold", "0.1", "--threads", "1", "-q", stdin=stdin)
    assert code == 0
    records = json_lines(stdout)
    assert [r["path"] for r in records] == names
    assert all(r["threshold"] == 0.1 and r["verdict"] == ("fake" if r["fake_prob"] > 0.1 else "real") for r in records)


@pytest.mark.parametrize("batch", ["1", "3"])
def test_batch_flag_gives_the_same_answers(artifact, photo_dir, batch):
    _, reference, _ = run_cli(photo_dir, "--model", artifact, "--quiet", "--batch", "4")
    code, stdout, _ = run_cli(photo_dir, "--model", artifact, "--quiet", "--batch", batch)
    assert code == 0
    for a, b in zip(json_lines(stdout), json_lines(reference), strict=True):
        assert a["fake_prob"] == pytest.approx(b["fake_prob"], abs=1e-6)
        assert a["mask_fraction"] == pytest.approx(b["mask_fraction"], abs=1e-6)


# ---- inputs that must fail cleanly, one line each, the batch continuing


def _bomb_png(path: Path) -> None:
    """A PNG whose header declares 100000 x 100000 pixels; the pixel data is never there."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")
    )


def _truncated_jpeg(path: Path) -> None:
    full = path.with_suffix(".full.jpg")
    sample_photos()["coffee"].save(full, quality=90)
    path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    full.unlink()


BAD_INPUTS = {
    "missing.jpg": (lambda p: None, "no such file"),
    "empty.jpg": (lambda p: p.write_bytes(b""), "empty file"),
    "truncated.jpg": (_truncated_jpeg, "cannot decode"),
    "text.jpg": (lambda p: p.write_text("this is not a JPEG\n"), "not a readable image"),
    "bomb.png": (_bomb_png, "decompression-bomb"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_is_reported_in_one_line(artifact, tmp_path, name):
    make, message = BAD_INPUTS[name]
    path = tmp_path / name
    make(path)
    code, stdout, stderr = run_cli(path, "--model", artifact, "--masks", tmp_path / "masks")
    assert code == EXIT_SOME_INPUTS_FAILED
    (record,) = json_lines(stdout)
    assert record["path"] == str(path) and message in record["error"] and set(record) == {"path", "error"}
    assert stderr.strip().count("\n") == 0 and message in stderr and "Traceback" not in stderr
    assert list((tmp_path / "masks").iterdir()) == []


def _write_16bit_png(path: Path) -> Image.Image:
    grey = np.asarray(sample_photos()["chelsea"].convert("L"), np.uint16) * 257
    Image.fromarray(grey).save(path)
    with Image.open(path) as check:
        assert check.mode.startswith("I")  # really 16-bit on disk
    return Image.fromarray((grey // 257).astype(np.uint8)).convert("RGB")


def _write_rgba_png(path: Path) -> Image.Image:
    photo = sample_photos()["astronaut"]
    alpha = Image.linear_gradient("L").resize(photo.size)
    rgba = photo.convert("RGBA")
    rgba.putalpha(alpha)
    rgba.save(path)
    white = Image.new("RGBA", photo.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _write_cmyk_jpeg(path: Path) -> Image.Image:
    sample_photos()["rocket"].convert("CMYK").save(path, quality=95)
    with Image.open(path) as check:
        assert check.mode == "CMYK"
        return check.convert("RGB")


def _write_tiny_png(path: Path) -> Image.Image:
    Image.new("RGB", (1, 1), (250, 240, 10)).save(path)
    return Image.new("RGB", (1, 1), (250, 240, 10))


UNUSUAL_INPUTS = {
    "grey16.png": _write_16bit_png,
    "alpha.png": _write_rgba_png,
    "cmyk.jpg": _write_cmyk_jpeg,
    "one_pixel.png": _write_tiny_png,
}


@pytest.mark.parametrize("name", sorted(UNUSUAL_INPUTS))
def test_unusual_but_valid_images_are_converted(artifact, tmp_path, name):
    path = tmp_path / name
    as_rgb = UNUSUAL_INPUTS[name](path)
    code, stdout, stderr = run_cli(path, "--model", artifact, "--masks", tmp_path / "masks")
    assert code == 0, stderr
    (record,) = json_lines(stdout)
    assert (record["width"], record["height"]) == as_rgb.size
    assert Image.open(record["mask"]).size == as_rgb.size
    fake_prob, _ = expected_standin_output(as_rgb)  # the same image converted to 8-bit RGB independently
    assert record["fake_prob"] == pytest.approx(fake_prob, abs=2e-3)


def test_exif_rotated_photo_gets_an_upright_mask(artifact, tmp_path):
    stored = sample_photos()["coffee"]  # 600 x 400 as stored; orientation 6 = display rotated 90 degrees clockwise
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    path = tmp_path / "phone.jpg"
    stored.save(path, quality=95, exif=exif)
    code, stdout, stderr = run_cli(path, "--model", artifact, "--prob-maps", tmp_path / "masks")
    assert code == 0, stderr
    (record,) = json_lines(stdout)
    assert (record["width"], record["height"]) == (400, 600)  # the displayed size
    mask = np.asarray(Image.open(tmp_path / "masks" / "phone_prob.png"))
    assert mask.shape == (600, 400)
    # Reference: the raw decoded pixels rotated by numpy, not by Pillow's EXIF handling.
    with Image.open(path) as raw:
        upright = np.rot90(np.asarray(raw.convert("RGB")), k=-1)
    (expected,) = Detector(artifact).detect([Image.fromarray(np.ascontiguousarray(upright))])
    expected_png = np.rint(expected.mask * 255).astype(np.uint8)
    assert np.abs(mask.astype(int) - expected_png).max() <= 1
    assert record["fake_prob"] == pytest.approx(expected.fake_prob, abs=1e-6)


def test_batch_with_bad_files_reports_them_and_finishes_the_rest(artifact, photo_dir, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for path in photo_dir.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("hello")
    _bomb_png(folder / "bomb.png")
    (folder / "readme.txt").write_text("not an image extension: skipped in folders")
    out = tmp_path / "out.jsonl"
    code, _, stderr = run_cli(folder, "--model", artifact, "--json", out, "--masks", tmp_path / "m", "--batch", "2")
    assert code == EXIT_SOME_INPUTS_FAILED
    records = json_lines(out.read_text())
    assert [r["path"] for r in records] == images_in_folder(folder)  # input order, across batches
    failed = sorted(Path(r["path"]).name for r in records if "error" in r)
    assert failed == ["bomb.png", "empty.jpg", "notes.jpg"]
    assert all(Path(r["mask"]).is_file() for r in records if "error" not in r)
    assert sum(line.startswith("maskclip-run: ") and "/mixed/" in line for line in stderr.splitlines()) == 3
    assert "Traceback" not in stderr
    assert temp_files(tmp_path) == []


# ---- --resume


def test_resume_skips_done_images_and_retries_failed_ones(artifact, photo_dir, tmp_path):
    photos = sorted(str(p) for p in photo_dir.glob("*.jpg"))
    flaky = tmp_path / "later.jpg"  # broken in the first run, repaired before the second
    flaky.write_text("not yet")
    out, table = tmp_path / "out.jsonl", tmp_path / "out.csv"
    code, _, _ = run_cli(*photos[:2], flaky, "--model", artifact, "--json", out, "--csv", table, "--quiet")
    assert code == EXIT_SOME_INPUTS_FAILED
    first = out.read_text().splitlines()
    assert len(first) == 3 and "error" in json.loads(first[2])

    sample_photos()["chelsea"].save(flaky)
    code, stdout, stderr = run_cli(*photos, flaky, "--model", artifact, "--json", out, "--csv", table, "--resume")
    assert code == 0, stderr
    assert "resuming: 2 of 5 images already done" in stderr
    lines = out.read_text().splitlines()
    assert lines[:2] == first[:2]  # kept verbatim, not recomputed
    records = [json.loads(line) for line in lines]
    assert sorted(r["path"] for r in records) == sorted([*photos, str(flaky)])
    assert all("error" not in r for r in records)
    with open(table, newline="") as f:
        assert sorted(row["path"] for row in csv.DictReader(f)) == sorted([*photos, str(flaky)])

    code, _, stderr = run_cli(*photos, flaky, "--model", artifact, "--json", out, "--resume")
    assert code == 0 and "resuming: 5 of 5" in stderr
    assert out.read_text().splitlines() == lines
    assert temp_files(tmp_path) == []


# ---- usage errors: exit 2 (the backend missing: 4), one line, no traceback


def test_usage_errors_exit_2(artifact, photo_dir, tmp_path):
    photo = next(photo_dir.glob("*.jpg"))
    loose = tmp_path / "loose"
    loose.mkdir()
    (tmp_path / "empty_folder").mkdir()
    (loose / "model.onnx").write_bytes((artifact / "heads.onnx").read_bytes())
    cases = {
        "no inputs": ([tmp_path / "empty_folder", "--model", artifact], EXIT_USAGE),
        "missing model": ([photo, "--model", tmp_path / "nope"], EXIT_USAGE),
        "onnx without manifest": ([photo, "--model", loose / "model.onnx"], EXIT_USAGE),
        "resume to stdout": ([photo, "--model", artifact, "--resume"], EXIT_USAGE),
        "json under a file": ([photo, "--model", artifact, "--json", photo / "dir.jsonl"], EXIT_USAGE),
        "bad flag": ([photo, "--frobnicate"], EXIT_USAGE),
        "bad device": ([photo, "--device", "tpu"], EXIT_USAGE),
        "bad threshold": ([photo, "--threshold", "2"], EXIT_USAGE),
        "tensorrt without engines": ([photo, "--model", artifact, "--backend", "tensorrt"], EXIT_BACKEND_UNAVAILABLE),
    }
    for case, (args, status) in cases.items():
        code, stdout, stderr = run_cli(*args)
        assert code == status, case
        assert "Traceback" not in stderr and stdout == "", case
        assert "error" in stderr.strip().splitlines()[-1].lower(), case


def test_tampered_model_exits_2(artifact, photo_dir, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in artifact.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    (copy / "features.onnx").write_bytes((copy / "features.onnx").read_bytes() + b"\0")
    code, _, stderr = run_cli(next(photo_dir.glob("*.jpg")), "--model", copy)
    assert code == EXIT_USAGE and stderr.count("\n") == 1


def test_missing_demo_model_is_a_usage_error(photo_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "DEMO_DIR", tmp_path / "no_demo")
    code, _, stderr = run_cli(next(photo_dir.glob("*.jpg")))
    assert code == EXIT_USAGE and stderr.count("\n") == 1


@pytest.mark.skipif(not (cli.DEMO_DIR / "manifest.json").is_file(), reason="demo artifact not shipped yet")
def test_embedded_demo_model_runs(photo_dir):
    code, stdout, stderr = run_cli(next(photo_dir.glob("*.jpg")))
    assert code == 0, stderr
    assert cli.DEMO_NOTE in stderr
    (record,) = json_lines(stdout)
    assert 0.0 <= record["fake_prob"] <= 1.0


def test_console_script_in_a_subprocess(artifact, photo_dir):
    """The installed entry point: JSON on stdout, and a bad flag is one line on stderr with status 2."""
    script = Path(sys.executable).with_name("maskclip-run")
    command = (
        [str(script)] if script.exists() else [sys.executable, "-c", "from maskclip_runtime.cli import main; main()"]
    )
    photo = str(next(photo_dir.glob("*.jpg")))
    done = subprocess.run([*command, photo, "--model", str(artifact)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["path"] == photo
    done = subprocess.run([*command, photo, "--model", str(artifact), "--batch", "0"], capture_output=True, text=True)
    assert done.returncode == EXIT_USAGE and "Traceback" not in done.stderr


# ---- issue 11: bad input and faults never lose data or stop the batch


def _corrupt_exif_jpeg(path: Path, second_tag: int) -> None:
    """A JPEG whose EXIF says "rotate" (orientation 6) and stores a known numeric tag as ASCII text:
    Pillow's exif_transpose then fails re-packing the EXIF (struct.error or TypeError)."""
    entries = [(ORIENTATION, 3, 1, struct.pack("<H", 6)), (second_tag, 2, 4, b"abc\0")]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        ifd += struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\0")
    exif = b"Exif\0\0II*\0" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)
    sample_photos()["coffee"].save(path, quality=90, exif=exif)


@pytest.mark.parametrize("second_tag", [0x0128, 0x011A], ids=["struct.error", "TypeError"])
def test_corrupt_exif_fails_its_image_only(artifact, photo_dir, tmp_path, second_tag):
    bad = tmp_path / "0_bad_exif.jpg"
    _corrupt_exif_jpeg(bad, second_tag)
    out = tmp_path / "out.jsonl"
    code, _, stderr = run_cli(bad, photo_dir, "--model", artifact, "--json", out, "-q")
    assert code == EXIT_SOME_INPUTS_FAILED
    records = json_lines(out.read_text())
    assert len(records) == 5 and str(bad) in records[0]["error"] and "cannot decode" in records[0]["error"]
    assert all("error" not in r for r in records[1:])
    assert stderr.count("\n") == 1 and str(bad) in stderr
    code, _, stderr = run_cli(bad, photo_dir, "--model", artifact, "--json", out, "--resume", "-q")
    assert code == EXIT_SOME_INPUTS_FAILED and len(json_lines(out.read_text())) == 5  # resume retries it and goes on


def test_undecodable_file_name_survives_json_csv_and_resume(artifact, photo_dir, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    odd = os.fsdecode(os.fsencode(folder) + b"/bad\xff name.jpg")
    shutil.copy(next(photo_dir.glob("*.jpg")), odd)
    out, table, masks = tmp_path / "out.jsonl", tmp_path / "out.csv", tmp_path / "masks"
    code, _, stderr = run_cli(folder, "--model", artifact, "--json", out, "--csv", table, "--masks", masks)
    assert code == 0, stderr
    (record,) = json_lines(out.read_bytes().decode("utf-8"))
    assert record["path"] == odd and os.path.isfile(record["mask"])
    code, _, stderr = run_cli(folder, "--model", artifact, "--json", out, "--csv", table, "--resume")
    assert code == 0 and "resuming: 1 of 1" in stderr
    assert len(json_lines(out.read_text())) == 1
    with open(table, newline="", encoding="utf-8") as f:
        assert [row["path"] for row in csv.DictReader(f)] == [str(folder / "bad\\udcff name.jpg")]


def test_a_second_run_on_the_same_json_is_refused(artifact, photo_dir, tmp_path):
    from maskclip_runtime.present.outputs import ResultTables

    out = tmp_path / "out.jsonl"
    out.write_text('{"path": "kept.jpg"}\n')
    running = ResultTables(str(out), None)  # what a run in progress holds
    try:
        code, stdout, stderr = run_cli(photo_dir, "--model", artifact, "--json", out)
        assert code == EXIT_USAGE and stderr.count("\n") == 1 and stdout == ""
        assert out.read_text() == '{"path": "kept.jpg"}\n'
    finally:
        running.close()


def test_bad_destinations_are_refused_before_any_work(artifact, photo_dir, tmp_path):
    folder = tmp_path / "a_folder"
    folder.mkdir()
    same = tmp_path / "same.out"
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    cases = {
        "json is a folder": ["--json", folder],
        "csv is a folder": ["--csv", folder],
        "json and csv are one file": ["--json", same, "--csv", tmp_path / "." / "same.out"],
        "masks under a file": ["--overlays", not_a_folder / "overlays"],
    }
    for case, flags in cases.items():
        code, stdout, stderr = run_cli(photo_dir, "--model", artifact, "--masks", tmp_path / "m", *flags)
        assert code == EXIT_USAGE, case
        assert "Traceback" not in stderr and stdout == "", case  # refused before the first image
    assert list(folder.iterdir()) == [] and not same.exists() and list((tmp_path / "m").iterdir()) == []


def test_a_full_disk_is_one_error_and_resume_finishes(artifact, photo_dir, tmp_path, monkeypatch):
    from maskclip_runtime.present import outputs

    out, table = tmp_path / "out.jsonl", tmp_path / "out.csv"
    real_write, calls = os.write, []

    def fills_up(fd, data):
        calls.append(fd)
        if len(calls) > 4:  # two records (JSON + CSV line each), then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(outputs.os, "write", fills_up)
    code, _, stderr = run_cli(photo_dir, "--model", artifact, "--json", out, "--csv", table, "--batch", "1")
    monkeypatch.setattr(outputs.os, "write", real_write)
    assert code == EXIT_NOT_FINISHED
    assert len([line for line in stderr.splitlines() if "error" in line]) == 1
    assert len(json_lines(out.read_text())) == 1  # the second record's JSON line was undone with its CSV row
    with open(table, newline="") as f:
        assert [r["path"] for r in csv.DictReader(f)] == [r["path"] for r in json_lines(out.read_text())]
    code, _, _ = run_cli(photo_dir, "--model", artifact, "--json", out, "--csv", table, "--resume", "-q")
    assert code == 0
    assert sorted(r["path"] for r in json_lines(out.read_text())) == sorted(map(str, photo_dir.glob("*.jpg")))


def test_a_full_disk_while_writing_masks_stops_the_run_once(artifact, photo_dir, tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(image_sinks, "save_mask_png", disk_full)
    code, _, stderr = run_cli(photo_dir, "--model", artifact, "--json", tmp_path / "o.jsonl", "--masks", tmp_path / "m")
    assert code == EXIT_NOT_FINISHED and stderr.count("error") == 1


def _fake_png_header(path: Path, width: int, height: int) -> None:
    """A PNG that declares width x height; the pixel data is not there (so it fails after the size check)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")
    )


def test_a_108_megapixel_photo_is_allowed_and_max_pixels_sets_the_limit(artifact, photo_dir, tmp_path):
    big = tmp_path / "phone_108mp.png"
    _fake_png_header(big, 12000, 9000)
    _, stdout, _ = run_cli(big, "--model", artifact)
    assert "decompression-bomb" not in json_lines(stdout)[0]["error"]  # past the size check (the data is fake)
    _, stdout, _ = run_cli(big, "--model", artifact, "--max-pixels", "100000000")
    assert "decompression-bomb" in json_lines(stdout)[0]["error"]
    huge = tmp_path / "huge.png"
    _fake_png_header(huge, 20000, 20000)  # 400 Mpx: over Pillow's own hard limit too
    _, stdout, _ = run_cli(huge, "--model", artifact, "--max-pixels", "500000000")
    assert "decompression-bomb" not in json_lines(stdout)[0]["error"]
    code, stdout, _ = run_cli(next(photo_dir.glob("*.jpg")), "--model", artifact, "--max-pixels", "1000")
    assert code == EXIT_SOME_INPUTS_FAILED and "decompression-bomb" in json_lines(stdout)[0]["error"]


def test_large_jpegs_are_decoded_at_reduced_size_with_answers_at_full_size(artifact, tmp_path, monkeypatch):
    from maskclip_runtime.kernel import preprocess

    photo = sample_photos()["astronaut"]  # 512 x 512
    path = tmp_path / "large.jpg"
    photo.save(path, quality=95)
    monkeypatch.setattr(preprocess, "LARGE_IMAGE_PIXELS", 100_000)  # "large" = this photo, for the test
    decoded = preprocess.decode_image(path, reduce_to=4 * 32)
    assert decoded.image.size == (128, 128) and (decoded.width, decoded.height) == (512, 512)
    code, stdout, stderr = run_cli(path, "--model", artifact, "--masks", tmp_path / "m")
    assert code == 0, stderr
    (record,) = json_lines(stdout)
    assert (record["width"], record["height"]) == (512, 512)
    assert Image.open(record["mask"]).size == (512, 512)
    with Image.open(path) as full:
        fake_prob, _ = expected_standin_output(full.convert("RGB"))
    assert record["fake_prob"] == pytest.approx(fake_prob, abs=2e-3)
    # An overlay needs the photo itself: then it is decoded at full size.
    assert preprocess.decode_image(path).image.size == (512, 512)


def test_resume_refuses_answers_made_with_another_threshold_and_matches_path_spellings(artifact, photo_dir, tmp_path):
    out = tmp_path / "out.jsonl"
    photos = sorted(photo_dir.glob("*.jpg"))
    code, _, _ = run_cli(*photos[:2], "--model", artifact, "--json", out, "-q")
    assert code == 0
    before = out.read_text()
    code, _, stderr = run_cli(*photos, "--model", artifact, "--json", out, "--resume", "--threshold", "0.3")
    assert code == EXIT_USAGE and stderr.count("\n") == 1 and out.read_text() == before
    respelled = [f"{p.parent}/./{p.name}" for p in photos]
    code, _, stderr = run_cli(*respelled, "--model", artifact, "--json", out, "--resume")
    assert code == 0 and "resuming: 2 of 4" in stderr
    records = json_lines(out.read_text())
    assert len(records) == 4 and len({os.path.realpath(r["path"]) for r in records}) == 4
    assert all(r["precision"] == "fp32" for r in records)


def test_same_name_images_from_two_folders_keep_both_masks(artifact, photo_dir, tmp_path):
    photos = sorted(photo_dir.glob("*.jpg"))
    for folder, photo in (("a", photos[0]), ("b", photos[1])):
        (tmp_path / folder).mkdir()
        shutil.copy(photo, tmp_path / folder / "shot.jpg")
    masks = tmp_path / "masks"
    records = []
    for folder in ("a", "b", "a"):  # two runs into one masks folder, then the first again
        code, stdout, _ = run_cli(tmp_path / folder / "shot.jpg", "--model", artifact, "--masks", masks)
        assert code == 0
        records += json_lines(stdout)
    assert records[0]["mask"] != records[1]["mask"] and records[2]["mask"] == records[0]["mask"]
    for record in records:
        with Image.open(record["path"]) as photo:
            assert Image.open(record["mask"]).size == photo.size  # each mask is still its own image's
    assert len(list(masks.iterdir())) == 2


def test_nul_separated_stdin_keeps_spaces(artifact, photo_dir, tmp_path):
    spaced = tmp_path / " odd name .jpg"
    shutil.copy(next(photo_dir.glob("*.jpg")), spaced)
    code, stdout, stderr = run_cli("-", "-0", "--model", artifact, "-q", stdin=f"{spaced}\0")
    assert code == 0, stderr
    assert [r["path"] for r in json_lines(stdout)] == [str(spaced)]


def test_batch_on_a_fixed_batch_artifact_is_reported(photo_dir, tmp_path):
    fixed = build_standin_artifact(tmp_path / "fixed", "fused", batch={"dynamic": False, "size": 2})
    code, _, stderr = run_cli(photo_dir, "--model", fixed, "--batch", "8")
    assert code == 0 and "--batch 8" in stderr and "exactly 2" in stderr


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_quiet_silences_what_libraries_print(artifact, photo_dir, tmp_path, monkeypatch, capfd):
    real_decode = pipeline.decode_image

    def chatty_decode(*args, **kwargs):
        os.write(2, b"TIFFReadDirectory: Warning, unknown field\n")  # how C libraries speak
        warnings.warn("Corrupt EXIF data", UserWarning, stacklevel=1)
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(pipeline, "decode_image", chatty_decode)
    missing = tmp_path / "missing.jpg"
    code, stdout, stderr = run_cli(photo_dir, missing, "--model", artifact, "-q")
    assert code == EXIT_SOME_INPUTS_FAILED and len(json_lines(stdout)) == 5
    assert stderr.splitlines() == [f"{cli.PROG}: {missing}: no such file"]  # errors still shown
    assert capfd.readouterr().err == ""
    run_cli(photo_dir, "--model", artifact)
    assert "TIFFReadDirectory" in capfd.readouterr().err  # without -q nothing is hidden


def test_resume_redoes_answers_without_the_mask_this_run_asks_for(artifact, photo_dir, tmp_path):
    out, masks = tmp_path / "out.jsonl", tmp_path / "masks"
    photos = sorted(photo_dir.glob("*.jpg"))
    code, _, _ = run_cli(*photos, "--model", artifact, "--json", out, "--masks-for", "none", "-q")
    assert code == 0 and not any(r["mask_computed"] for r in json_lines(out.read_text()))

    code, _, stderr = run_cli(*photos, "--model", artifact, "--json", out, "--masks", masks, "--resume")
    assert code == 0 and f"resuming: 0 of {len(photos)}" in stderr
    records = json_lines(out.read_text())
    assert len(records) == len(photos) and all(r["mask_computed"] and Path(r["mask"]).is_file() for r in records)

    code, _, stderr = run_cli(*photos, "--model", artifact, "--json", out, "--masks", masks, "--resume")
    assert code == 0 and f"resuming: {len(photos)} of {len(photos)}" in stderr

    size = Detector(artifact).artifact.preprocess.size
    larger = [r for r in records if max(r["width"], r["height"]) > size]
    assert larger  # the photos include some larger than the model input: those get tiled masks
    code, _, stderr = run_cli(*photos, "--model", artifact, "--json", out, "--masks", masks, "--tiles", "--resume")
    assert code == 0 and f"resuming: {len(photos) - len(larger)} of {len(photos)}" in stderr
    tiled = [r for r in json_lines(out.read_text()) if r["mask_policy"] != "resize"]
    assert sorted(r["path"] for r in tiled) == sorted(r["path"] for r in larger)
