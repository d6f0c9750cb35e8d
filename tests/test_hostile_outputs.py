"""Issue 24, maskclip-run's outputs: what a hostile path or an edited results table can send them."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from console_scripts import run_cli
from PIL import Image

from maskclip_runtime.detect.detector import Detector, DetectorClosed
from maskclip_runtime.errors import EXIT_USAGE
from maskclip_runtime.present.report import report_html


@pytest.fixture
def artifact(standin_split):
    return standin_split


@pytest.fixture
def photo_dir(sample_photo_dir):
    return sample_photo_dir


@pytest.mark.parametrize("flag", ["--report", "--json", "--csv"])
def test_outputs_never_replace_a_symlink_or_fifo(artifact, photo_dir, tmp_path, flag):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    link = tmp_path / "link.html"
    link.symlink_to(target)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (link, fifo):
        code, stdout, stderr = run_cli(photo_dir, "--model", artifact, flag, path, "--quiet")
        assert code == EXIT_USAGE, (path, stderr)
        assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
    assert link.is_symlink() and target.read_text() == "keep me"
    assert fifo.is_fifo()


def test_json_and_report_create_missing_parents(artifact, photo_dir, tmp_path):
    out, report = tmp_path / "a" / "b" / "out.jsonl", tmp_path / "c" / "report.html"
    code, _, stderr = run_cli(photo_dir, "--model", artifact, "--json", out, "--report", report, "--quiet")
    assert code == 0, stderr
    assert len(out.read_text().splitlines()) == len(list(photo_dir.glob("*.jpg")))
    assert report.read_text().startswith("<!DOCTYPE html>")


SCRIPT = "<script>alert(1)</script>"


def test_report_escapes_every_value_read_back(tmp_path):
    record = {
        "path": f"/x/{SCRIPT}.jpg",
        "verdict": f'fake"><img src=x onerror=alert(1)>{SCRIPT}',
        "fake_prob": SCRIPT,
        "calibrated_prob": SCRIPT,
        "mask_fraction": SCRIPT,
        "ms": SCRIPT,
        "model_id": SCRIPT,
        "width": 1,
        "height": 1,
    }
    page = report_html([record, {"path": SCRIPT, "error": SCRIPT}])
    assert "<script>alert" not in page and "<img src=x" not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 5


def test_resume_answers_again_records_that_are_broken_or_hostile(artifact, photo_dir, tmp_path):
    out, report = tmp_path / "out.jsonl", tmp_path / "report.html"
    code, _, _ = run_cli(photo_dir, "--model", artifact, "--json", out, "--quiet")
    assert code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    del records[0]["fake_prob"]
    records[1]["verdict"] = SCRIPT
    records[2]["ms"] = SCRIPT
    out.write_text("".join(json.dumps(r) + "\n" for r in records))
    code, _, stderr = run_cli(photo_dir, "--model", artifact, "--json", out, "--report", report, "--resume")
    assert code == 0, stderr
    assert "internal error" not in stderr and f"resuming: 1 of {len(records)}" in stderr, stderr
    page = report.read_text()
    assert "<script>alert" not in page
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(answers) == len(records) and all(isinstance(r["fake_prob"], float) for r in answers)
    assert {r["verdict"] for r in answers} <= {"real", "fake"}
    assert sorted(Path(r["path"]).name for r in answers) == sorted(p.name for p in photo_dir.glob("*.jpg"))


def test_a_nul_separated_list_without_0_is_one_clear_error(artifact, photo_dir):
    listing = "".join(f"{p}\0" for p in sorted(photo_dir.glob("*.jpg")))
    code, stdout, stderr = run_cli("-", "--model", artifact, stdin=listing)
    assert code == EXIT_USAGE and "-0" in stderr and "internal error" not in stderr and stdout == ""
    code, stdout, _ = run_cli("-", "--model", artifact, "-0", "-q", stdin=listing)
    assert code == 0 and len(stdout.splitlines()) == len(list(photo_dir.glob("*.jpg")))


def test_masks_written_into_the_input_folder_are_not_read_back(artifact, photo_dir, tmp_path):
    photos = tmp_path / "photos"
    shutil.copytree(photo_dir, photos)
    count = len(list(photos.glob("*.jpg")))
    for _ in range(2):  # the second run lists the folder holding the first run's masks and overlays
        code, stdout, stderr = run_cli(photos, "--model", artifact, "--masks", photos / "masks",
                                       "--overlays", photos / "overlays", "-q")  # fmt: skip
        assert code == 0, stderr
        assert len(stdout.splitlines()) == count


def test_detect_after_close_is_a_clear_error(artifact):
    detector = Detector(artifact, backend="onnxruntime", device="cpu")
    detector.close()
    with pytest.raises(DetectorClosed, match="closed"):
        detector.detect(Image.new("RGB", (64, 64)))


def test_a_multi_frame_image_is_judged_on_its_first_frame_and_says_so(artifact, tmp_path):
    frames = [Image.new("RGB", (64, 64), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    animation = tmp_path / "moving.gif"
    frames[0].save(animation, save_all=True, append_images=frames[1:], duration=100)
    code, stdout, stderr = run_cli(animation, "--model", artifact)
    assert code == 0 and len(stdout.splitlines()) == 1
    assert "moving.gif: 3 frames; judged on the first frame only" in stderr


def test_a_results_table_opens_only_a_regular_file(tmp_path):
    """A FIFO or symlink put in place after the up-front check is refused when the table is opened."""
    from maskclip_runtime.errors import InputError
    from maskclip_runtime.present.outputs import LockedTable

    fifo, link = tmp_path / "fifo", tmp_path / "link"
    os.mkfifo(fifo)
    link.symlink_to(tmp_path / "target")
    for path in (fifo, link):
        with pytest.raises(InputError):
            LockedTable(path)
    assert not (tmp_path / "target").exists()
