"""Issue 24, the artifact contract: an edited manifest or a foreign calibration record must not be trusted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from maskclip_runtime import cli as run_cli
from maskclip_runtime.contract.artifact import ArtifactError, attach_calibration, load_artifact
from maskclip_runtime.contract.verdict_calibration import Calibration, CalibrationError, OperatingPoint
from maskclip_runtime.detect.detector import DEMO_DIR, Detector
from maskclip_runtime.detect.selfcheck import SelfCheckFailed
from maskclip_runtime.errors import EXIT_USAGE
from maskclip_runtime.kernel.hashing import file_sha256

pytest.importorskip("onnxruntime")
DEMO_ID = load_artifact(DEMO_DIR).model_id


@pytest.fixture
def demo_copy(tmp_path):
    return Path(shutil.copytree(DEMO_DIR, tmp_path / "demo", ignore=shutil.ignore_patterns("examples")))


def edit_manifest(folder: Path, change) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def record(model_id) -> Calibration:
    points = [OperatingPoint("fpr-1%", 0.01, 0.7, 0.01, 0.6), OperatingPoint("fpr-5%", 0.05, 0.3, 0.05, 0.8)]
    return Calibration.create(0.6, points, "fpr-1%", "fpr-5%", {"model": "test", "model_id": model_id})


def test_self_check_cache_is_keyed_on_the_manifest(demo_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("MASKCLIP_CACHE_DIR", str(tmp_path / "cache"))
    with Detector(demo_copy, backend="onnxruntime", device="cpu") as detector:
        assert detector.self_check.status == "passed" and not detector.self_check.cached

    def wrong_normalisation(manifest):
        manifest["preprocess"]["std"] = [s * 10 for s in manifest["preprocess"]["std"]]

    edit_manifest(demo_copy, wrong_normalisation)
    with pytest.raises(SelfCheckFailed):  # the canaries run again, on the changed preprocessing
        Detector(demo_copy, backend="onnxruntime", device="cpu")


@pytest.mark.parametrize("fitted_id", ["tiny-000000000000", "", None])
def test_a_foreign_record_in_a_manifest_is_refused(demo_copy, fitted_id):
    def place(manifest):
        manifest["calibration"] = record(fitted_id).to_dict()

    edit_manifest(demo_copy, place)
    with pytest.raises(ArtifactError, match="calibration record was fitted on"):
        load_artifact(demo_copy)


@pytest.mark.parametrize("fitted_id", ["tiny-000000000000", "", None])
def test_attach_needs_force_for_a_record_of_another_or_no_model(demo_copy, fitted_id):
    with pytest.raises(CalibrationError, match="--force"):
        attach_calibration(demo_copy, record(fitted_id))
    assert load_artifact(demo_copy).calibration is None
    attach_calibration(demo_copy, record(fitted_id), force=True)
    attached = load_artifact(demo_copy).calibration  # accepted for this model, so the artifact loads
    assert attached.accepted_for == DEMO_ID and attached.sha256 == record(fitted_id).sha256


def test_a_record_of_this_model_attaches_without_force(demo_copy):
    attach_calibration(demo_copy, record(DEMO_ID))
    assert load_artifact(demo_copy).calibration == record(DEMO_ID)


def test_a_corrupt_onnx_graph_is_bad_input_not_a_missing_backend(demo_copy):
    graph = demo_copy / "model.onnx"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])

    def rehash(manifest):  # consistent hashes: the file itself is what is broken
        manifest["files"]["model.onnx"] = file_sha256(graph)

    edit_manifest(demo_copy, rehash)
    result = CliRunner().invoke(run_cli.main, [str(DEMO_DIR / "examples"), "--model", str(demo_copy), "-q"])
    assert result.exit_code == EXIT_USAGE, result.stderr
    assert "not a usable ONNX graph" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_record_that_failed_its_check_needs_force(demo_copy):
    points = [OperatingPoint("fpr-1%", 0.01, 0.7, 0.067, 0.6), OperatingPoint("fpr-5%", 0.05, 0.3, 0.1, 0.8)]
    check = {"passed": False, "problems": ["fpr-1%: fitted on 15 real images, needs at least 500"]}
    failed = Calibration.create(0.6, points, "fpr-1%", "fpr-5%", {"model": "t", "model_id": DEMO_ID}, check)
    with pytest.raises(CalibrationError, match="failed its check"):
        attach_calibration(demo_copy, failed)
    attach_calibration(demo_copy, failed, force=True)
    assert load_artifact(demo_copy).calibration.check == check
