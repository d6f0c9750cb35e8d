"""maskclip-export's command line: bad input fails in one line, non-zero, with nothing half-written."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from maskclip_core.checkpoint import save_checkpoint
from maskclip_export.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tiny_model, tmp_path_factory):
    return save_checkpoint(tiny_model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


def _run(*args):
    return CliRunner().invoke(main, ["--quiet", *map(str, args)])


def _assert_one_line_error(result, *fragments):
    assert result.exit_code != 0, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def _nothing_written(folder):
    assert list(folder.iterdir()) == [], sorted(p.name for p in folder.iterdir())


def test_checkpoint_export_records_its_source(checkpoint, tmp_path):
    out = tmp_path / "art"
    result = _run("--checkpoint", checkpoint, "--config", "tiny", "--out", out, "--no-verify")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["source"] == str(checkpoint.resolve())
    assert manifest["model"]["config_name"] == "tiny"
    assert "verification: skipped" in result.output


def test_int8_cpu_export_prints_only_its_result(checkpoint, tmp_path):
    """ORT's quantiser logs advice and prints calibration progress; none of it reaches the output."""
    from PIL import Image

    from maskclip_export.verify import default_verification_images

    calib = tmp_path / "calib"
    calib.mkdir()
    for name, image in default_verification_images()[:3]:
        Image.fromarray(image).save(calib / f"{name}.png")
    out = tmp_path / "art"
    result = CliRunner().invoke(
        main, ["--quiet", "--checkpoint", str(checkpoint), "--out", str(out), "--int8-cpu", "--calib", str(calib)]
    )
    assert result.exit_code == 0, result.output
    model_id = json.loads((out / "manifest.json").read_text())["model"]["model_id"]
    assert result.stdout.splitlines() == [f"wrote {out} (int8-cpu, fused, {model_id})"]
    assert "WARNING" not in result.stderr and "percentile" not in result.stderr, result.stderr


def test_missing_checkpoint(tmp_path):
    _assert_one_line_error(_run("--checkpoint", tmp_path / "nope.safetensors", "--out", tmp_path / "a"), "not found")
    _nothing_written(tmp_path)


def test_checkpoint_of_another_config(checkpoint, tmp_path):
    result = _run("--checkpoint", checkpoint, "--config", "opensdi-vitl14", "--out", tmp_path / "a")
    _assert_one_line_error(result, "'tiny'", "'opensdi-vitl14'")
    _nothing_written(tmp_path)


def test_unknown_config(tmp_path):
    _assert_one_line_error(_run("--config", "huge", "--out", tmp_path / "a"), "unknown config")
    _nothing_written(tmp_path)


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    _assert_one_line_error(_run("--config", "tiny", "--out", blocker / "sub" / "art"), "cannot create output folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_output_folder_with_foreign_files_is_not_replaced(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    _assert_one_line_error(_run("--config", "tiny", "--out", out), "not empty")
    assert (out / "thesis.tex").read_text() == "precious"


def test_empty_calibration_folder(tmp_path):
    calib = tmp_path / "calib"
    calib.mkdir()
    result = _run("--config", "tiny", "--out", tmp_path / "a", "--int8", "--calib", calib)
    _assert_one_line_error(result, "no calibration images")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--int8"], "--calib"),
        (["--fp16", "--int8", "--calib", "x"], "exclusive"),
        (["--int8", "--int8-cpu", "--calib", "x"], "--int8 and --int8-cpu are exclusive"),
        (["--int8-cpu"], "--int8-cpu needs calibration images"),
        (["--int8-cpu", "--calib", "x", "--trt"], "TensorRT cannot build: use --int8 --trt"),
        (["--fp16", "--calib", "x"], "only used with --int8"),
        (["--opset", "11"], "--opset"),
        (["--batch", "0"], "batch"),
        (["--no-verify", "--verify-images", "x"], "contradict"),
    ],
)
def test_invalid_combinations_rejected_up_front(flags, message, tmp_path):
    _assert_one_line_error(_run("--config", "tiny", "--out", tmp_path / "a", *flags), message)
    _nothing_written(tmp_path)


def test_verification_images_folder_without_images(tmp_path):
    empty = tmp_path / "imgs"
    empty.mkdir()
    _assert_one_line_error(_run("--config", "tiny", "--out", tmp_path / "a", "--verify-images", empty), "no images")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]
