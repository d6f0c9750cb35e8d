"""maskclip-export's command line: bad input fails in one line, non-zero, with nothing half-written."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
from click.testing import CliRunner

from maskclip_core.checkpoint import save_checkpoint
from maskclip_export.cli import main
from maskclip_runtime.errors import EXIT_USAGE

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tiny_model, tmp_path_factory):
    return save_checkpoint(tiny_model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


def _run(*args):
    return CliRunner().invoke(main, ["--quiet", *map(str, args)])


def _assert_refused(result, status=EXIT_USAGE):
    """Refused with `status`, in one error line, without a traceback (what the line says is for people)."""
    assert result.exit_code == status, result.output
    errors = [line for line in result.output.splitlines() if "error:" in line.lower()]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output


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
        main,
        [
            "--quiet",
            "--checkpoint",
            str(checkpoint),
            "--out",
            str(out),
            "--precision",
            "int8-cpu",
            "--calib",
            str(calib),
        ],
    )
    assert result.exit_code == 0, result.output
    model_id = json.loads((out / "manifest.json").read_text())["model"]["model_id"]
    assert result.stdout.splitlines() == [f"wrote {out} (int8-cpu, fused, {model_id})"]
    report = json.loads((out / "manifest.json").read_text())["verification"]
    fake = sum(image["fake_prob"] > report["threshold"] for image in report["per_image"])
    summary = re.search(r"gate on (\d+) images: (\d+) real, (\d+) fake by the artifact, (\d+) flips", result.stderr)
    assert summary and [int(n) for n in summary.groups()] == [
        report["images"],
        report["images"] - fake,
        fake,
        report["flips"],
    ]
    assert "WARNING" not in result.stderr and "percentile" not in result.stderr, result.stderr


def test_missing_checkpoint(tmp_path):
    _assert_refused(_run("--checkpoint", tmp_path / "nope.safetensors", "--out", tmp_path / "a"))
    _nothing_written(tmp_path)


def test_checkpoint_of_another_config(checkpoint, tmp_path):
    result = _run("--checkpoint", checkpoint, "--config", "opensdi-vitl14", "--out", tmp_path / "a")
    _assert_refused(result)
    _nothing_written(tmp_path)


def test_unknown_config(tmp_path):
    _assert_refused(_run("--config", "huge", "--out", tmp_path / "a"))
    _nothing_written(tmp_path)


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    _assert_refused(_run("--config", "tiny", "--out", blocker / "sub" / "art"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_output_folder_with_foreign_files_is_not_replaced(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    _assert_refused(_run("--config", "tiny", "--out", out))
    assert (out / "thesis.tex").read_text() == "precious"


def test_empty_calibration_folder(tmp_path):
    calib = tmp_path / "calib"
    calib.mkdir()
    result = _run("--config", "tiny", "--out", tmp_path / "a", "--precision", "int8", "--calib", calib)
    _assert_refused(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib"]


@pytest.mark.parametrize(
    "flags",
    [
        ["--precision", "int8"],
        ["--precision", "int8-cpu"],
        ["--precision", "int8-cpu", "--calib", "x", "--trt"],
        ["--precision", "fp16", "--calib", "x"],
        ["--opset", "11"],
        ["--batch", "0"],
        ["--no-verify", "--verify-images", "x"],
    ],
)
def test_invalid_combinations_rejected_up_front(flags, tmp_path):
    _assert_refused(_run("--config", "tiny", "--out", tmp_path / "a", *flags))
    _nothing_written(tmp_path)


def test_verification_images_folder_without_images(tmp_path):
    empty = tmp_path / "imgs"
    empty.mkdir()
    _assert_refused(_run("--config", "tiny", "--out", tmp_path / "a", "--verify-images", empty))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]


# ---- --out never deletes data the export does not own (issue 11)


def _fake_artifact(folder, *extra):
    """A folder that holds a maskclip artifact's manifest listing model.onnx, plus `extra` files of the user's."""
    from maskclip_runtime.contract.manifest import FORMAT

    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"graph")
    manifest = {"format": FORMAT, "files": {"model.onnx": "0" * 64}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    for name in extra:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("precious")
    return folder


def _tree(folder):
    return sorted((p.relative_to(folder).as_posix(), p.read_bytes()) for p in folder.rglob("*") if p.is_file())


def test_a_web_app_folder_with_its_own_manifest_is_not_replaced(tmp_path):
    app = tmp_path / "webapp"
    (app / "src").mkdir(parents=True)
    (app / "manifest.json").write_text('{"name": "My App", "start_url": "/"}')
    (app / "index.html").write_text("<html></html>")
    (app / "src" / "app.js").write_text("console.log(1)")
    before = _tree(app)
    _assert_refused(_run("--config", "tiny", "--out", app))
    assert _tree(app) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["webapp"]


def test_an_artifact_folder_holding_other_files_is_not_replaced(tmp_path):
    out = _fake_artifact(tmp_path / "art", "notes.txt", "runs/2026.csv")
    before = _tree(out)
    _assert_refused(_run("--config", "tiny", "--out", out))
    assert _tree(out) == before


@pytest.mark.parametrize("target", [".", "..", "sub/..", "~"])
def test_the_current_folder_its_parents_and_home_are_refused_before_any_work(tmp_path, monkeypatch, target):
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)  # empty: nothing to protect but the folder itself
    monkeypatch.chdir(work / "sub")
    monkeypatch.setenv("HOME", str(work))
    _assert_refused(_run("--config", "tiny", "--out", target.replace("~", str(work))))
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["work", "work/sub"]


def test_a_failed_report_folder_of_the_users_is_refused_up_front(tmp_path):
    (tmp_path / "art.failed").mkdir()
    (tmp_path / "art.failed" / "mine.txt").write_text("precious")
    _assert_refused(_run("--config", "tiny", "--out", tmp_path / "art"))
    assert (tmp_path / "art.failed" / "mine.txt").read_text() == "precious"


def test_staging_left_by_a_killed_export_is_removed_and_a_half_installed_artifact_restored(tmp_path):
    from maskclip_export.exporter import remove_stale_staging

    dead = subprocess.Popen(["true"])
    dead.wait()
    out = tmp_path / "art"
    killed = tmp_path / f".art.partial-{dead.pid}-0123abcd"
    running = tmp_path / f".art.partial-{os.getpid()}-4567cdef"
    moved_aside = tmp_path / f".art.old-{dead.pid}-89abcdef"
    for folder in (killed, running):
        folder.mkdir()
        (folder / "model.onnx").write_bytes(b"half")
    _fake_artifact(moved_aside / "art")
    notes = []
    remove_stale_staging(out, notes.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == [running.name, "art"]
    assert (out / "manifest.json").is_file() and len(notes) == 3


def test_an_undecodable_calibration_image_is_skipped_with_a_warning(tmp_path):
    from PIL import Image

    from maskclip_export.exporter import ExportError, calibration_images
    from maskclip_runtime.kernel.preprocess import PreprocessSpec

    good, bad = tmp_path / "good.png", tmp_path / "bad.jpg"
    Image.new("RGB", (40, 30), (10, 200, 30)).save(good)
    exif = b"Exif\0\0II*\0\x08\0\0\0\x02\0\x12\x01\x03\0\x01\0\0\0\x06\0\0\0\x28\x01\x02\0\x04\0\0\0ab\0\0\0\0\0\0"
    Image.new("RGB", (40, 30)).save(bad, exif=exif)  # orientation 6 + a numeric tag stored as text
    warnings = []
    images = calibration_images([good, bad], PreprocessSpec(size=32), warnings.append)
    assert images.shape == (1, 3, 32, 32)
    assert len(warnings) == 1 and str(bad) in warnings[0]
    with pytest.raises(ExportError, match="none of the 1 calibration images"):
        calibration_images([bad], PreprocessSpec(size=32), warnings.append)


def test_calibration_and_verification_folders_are_searched_recursively(tmp_path):
    """--calib DIR and --verify-images DIR list images like every other command: recursively, sorted."""
    from PIL import Image

    from maskclip_export.exporter import ExportError, calibration_paths
    from maskclip_export.verify import load_images

    for name in ("b.png", "a/z.jpg", "a/deeper/c.webp", ".hidden/d.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / name, format="PNG")
    (tmp_path / "notes.txt").write_text("not an image")
    found = [p.relative_to(tmp_path).as_posix() for p in calibration_paths(str(tmp_path), 10)]
    assert found == ["b.png", "a/z.jpg", "a/deeper/c.webp"]
    assert [p.name for p in calibration_paths(str(tmp_path), 2)] == ["b.png", "z.jpg"]
    assert [name for name, _ in load_images(str(tmp_path))] == ["b.png", "z.jpg", "c.webp"]
    with pytest.raises(ExportError):
        calibration_paths(str(tmp_path / "notes.txt"), 10)


# ---- the precision table and the model identity (issue 17)


def test_a_precision_outside_the_table_is_a_usage_error(tmp_path):
    from maskclip_runtime.contract.precision_table import PRECISIONS

    assert _run("--config", "tiny", "--out", tmp_path / "a", "--precision", "bf8").exit_code == 2
    _nothing_written(tmp_path)
    # Every row is a choice of the option, and nothing else is.
    (option,) = [param for param in main.params if param.name == "precision"]
    assert list(option.type.choices) == list(PRECISIONS)


def test_same_weights_get_one_digest_from_checkpoint_file_and_from_memory(checkpoint, tiny_model):
    from maskclip_core.checkpoint import load_checkpoint, weights_digest

    assert weights_digest(load_checkpoint(checkpoint)) == weights_digest(tiny_model)


def test_fp32_and_fp16_artifacts_of_one_checkpoint_are_different_models(checkpoint, tiny_model, tmp_path):
    from maskclip_core.checkpoint import weights_digest
    from maskclip_runtime.contract.artifact import load_artifact

    ids = {}
    for precision in ("fp32", "fp16"):
        out = tmp_path / precision
        result = _run("--checkpoint", checkpoint, "--out", out, "--precision", precision, "--no-verify")
        assert result.exit_code == 0, result.output
        identity = load_artifact(out).manifest.identity
        assert identity.weights_sha256 == weights_digest(tiny_model)  # the tensors', not the file's bytes
        ids[precision] = identity.model_id
    assert ids["fp32"] != ids["fp16"]
