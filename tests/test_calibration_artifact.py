"""A calibration record in an artifact: attach, export, refuse when tampered, and the same verdicts in
the runtime (maskclip-run) as in evaluation (maskclip-eval's code path)."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from maskclip_core import cli as core_cli
from maskclip_core.data import load_sample, open_samples
from maskclip_core.data.synth import synthesize
from maskclip_core.evaluate import ArtifactPredictor, collect
from maskclip_runtime import cli as runtime_cli
from maskclip_runtime.contract.artifact import ArtifactError, load_artifact
from maskclip_runtime.contract.verdict_calibration import (
    Calibration,
    OperatingPoint,
    read_calibration,
    write_calibration,
)
from maskclip_runtime.detect.detector import Detector

pytest.importorskip("onnxruntime")
DEMO = Path(runtime_cli.DEMO_DIR)
DEMO_ID = load_artifact(DEMO).model_id


def _record(model_id: str | None = DEMO_ID, low: float = 0.3, high: float = 0.7) -> Calibration:
    points = [OperatingPoint("fpr-1%", 0.01, high, 0.01, 0.6), OperatingPoint("fpr-5%", 0.05, low, 0.05, 0.8)]
    return Calibration.create(0.6, points, "fpr-1%", "fpr-5%", {"model": "test", "model_id": model_id})


@pytest.fixture
def demo_copy(tmp_path):
    return Path(shutil.copytree(DEMO, tmp_path / "demo", ignore=shutil.ignore_patterns("examples")))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A folder layout (real/) of lossless PNGs decoded from synthetic proxy images of all kinds."""
    root = tmp_path_factory.mktemp("photos")
    data = synthesize(root / "synth", seed=5, train_count=0, test_count=12, generators=["sd15-like"], min_size=96)
    (root / "set" / "real").mkdir(parents=True)
    for i, sample in enumerate(open_samples(data, "test")):
        Image.fromarray(load_sample(sample)[0]).save(root / "set" / "real" / f"{i:03d}.png")
    return root / "set"


def _attach(artifact: Path, record: Calibration, tmp_path: Path, *extra: str):
    path = tmp_path / "record.json"
    write_calibration(record, path)
    return CliRunner().invoke(core_cli.calibrate, ["--attach", str(artifact), "--record", str(path), *extra])


def test_attached_record_round_trips(demo_copy, tmp_path):
    files_before = json.loads((demo_copy / "manifest.json").read_text())["files"]
    record = _record()
    result = _attach(demo_copy, record, tmp_path)
    assert result.exit_code == 0, result.output
    manifest = json.loads((demo_copy / "manifest.json").read_text())
    assert manifest["calibration"]["sha256"] == record.sha256 and manifest["files"] == files_before
    assert load_artifact(demo_copy).calibration == record
    assert not list(demo_copy.glob(".*.tmp"))


def test_tampered_record_in_a_manifest_is_refused_in_one_line(demo_copy, tmp_path, photos):
    assert _attach(demo_copy, _record(), tmp_path).exit_code == 0
    manifest = json.loads((demo_copy / "manifest.json").read_text())
    manifest["calibration"]["operating_points"][0]["threshold"] = 0.99
    (demo_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="sha256"):
        load_artifact(demo_copy)
    result = CliRunner().invoke(runtime_cli.main, [str(photos), "--model", str(demo_copy), "-q"])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1


def test_tampered_record_file_is_not_attached(demo_copy, tmp_path):
    path = tmp_path / "record.json"
    write_calibration(_record(), path)
    doc = json.loads(path.read_text())
    doc["temperature"] = 3.0
    path.write_text(json.dumps(doc))
    result = CliRunner().invoke(core_cli.calibrate, ["--attach", str(demo_copy), "--record", str(path)])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "calibration" not in json.loads((demo_copy / "manifest.json").read_text())


def test_record_of_another_model_needs_force(demo_copy, tmp_path):
    assert _attach(demo_copy, _record("tiny-000000000000"), tmp_path).exit_code == 2
    assert load_artifact(demo_copy).calibration is None
    assert _attach(demo_copy, _record("tiny-000000000000"), tmp_path, "--force").exit_code == 0


def test_runtime_calibrated_output_equals_the_evaluations(demo_copy, tmp_path, photos):
    # thresholds inside the data's calibrated range, so that all three verdicts can occur
    raw = np.sort(collect(ArtifactPredictor(DEMO, "onnxruntime", "cpu"), open_samples(photos)).scores()[1])
    calibrated = _record().calibrate(raw)
    record = _record(low=float(np.quantile(calibrated, 0.3)), high=float(np.quantile(calibrated, 0.7)))
    assert _attach(demo_copy, record, tmp_path).exit_code == 0

    predictor = ArtifactPredictor(demo_copy, "onnxruntime", "cpu")
    samples = open_samples(photos)
    labels, prob = collect(predictor, samples).scores()
    eval_calibrated = predictor.detector.calibration.calibrate(prob)
    eval_verdicts = predictor.detector.calibration.verdicts(eval_calibrated)
    by_name = {Path(s.load()[0]).name: i for i, s in enumerate(samples)}

    out = tmp_path / "records.jsonl"
    result = CliRunner().invoke(runtime_cli.main, [str(photos / "real"), "--model", str(demo_copy), "--json", str(out)])
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == len(samples)
    for r in records:
        i = by_name[Path(r["path"]).name]
        assert r["calibrated_prob"] == pytest.approx(eval_calibrated[i], abs=1e-6)
        assert r["fake_prob"] == pytest.approx(prob[i], abs=1e-6)
        assert r["verdict"] == eval_verdicts[i]
        assert (r["operating_point"], r["threshold"], r["uncertain_below"]) == ("fpr-1%", *record.band[::-1])
    assert {r["verdict"] for r in records} == {"real", "uncertain", "fake"}


def test_without_a_record_verdicts_use_the_plain_threshold(photos):
    detector = Detector(DEMO, backend="onnxruntime", device="cpu")
    images = [Image.open(p).convert("RGB") for p in sorted((photos / "real").iterdir())[:4]]
    for d in detector.detect(images):
        assert d.calibrated_prob is None and d.band is None and d.operating_point == "threshold"
        assert d.verdict == ("fake" if d.fake_prob > 0.5 else "real")


def test_explicit_threshold_replaces_the_calibrated_verdict(demo_copy, tmp_path, photos):
    assert _attach(demo_copy, _record(), tmp_path).exit_code == 0
    detector = Detector(demo_copy, backend="onnxruntime", device="cpu", threshold=0.2)
    image = Image.open(sorted((photos / "real").iterdir())[0]).convert("RGB")
    d = detector.detect([image])[0]
    assert d.calibrated_prob == pytest.approx(float(_record().calibrate(d.fake_prob)))
    assert d.band is None and d.verdict == ("fake" if d.fake_prob > 0.2 else "real")


def test_export_stores_the_record(tmp_path, one_torch_thread):
    from maskclip_export import cli as export_cli
    from maskclip_runtime.errors import EXIT_USAGE

    path = tmp_path / "record.json"
    write_calibration(_record(model_id=None), path)
    out = tmp_path / "art"
    result = CliRunner().invoke(
        export_cli.main, ["--out", str(out), "--no-verify", "--quiet", "--calibration", str(path)]
    )
    assert result.exit_code == 0, result.output
    exported = load_artifact(out)  # a record fitted on a checkpoint is accepted for the model exported from it
    assert exported.calibration == replace(_record(model_id=None), accepted_for=exported.model_id)
    write_calibration(_record(model_id="tiny-000000000000"), path)
    refused = CliRunner().invoke(
        export_cli.main, ["--out", str(tmp_path / "b"), "--no-verify", "--calibration", str(path)]
    )
    assert refused.exit_code == EXIT_USAGE and not (tmp_path / "b").exists()


def test_calibrate_fits_writes_and_eval_measures_the_record(tmp_path, one_torch_thread):
    data = synthesize(tmp_path / "s", seed=6, train_count=0, test_count=24, generators=["sdxl-like"], min_size=128)
    common = ["--data", str(data), "--split", "test", "--device", "cpu", "--workers", "0"]
    out = tmp_path / "cal" / core_cli.RECORD_NAME
    fitted = CliRunner().invoke(core_cli.calibrate, [*common, "--out", str(out.parent)])
    assert fitted.exit_code == 0, fitted.output
    record = read_calibration(out)
    assert record.fitted_on["images"] == 12 and [op.target_fpr for op in record.operating_points] == [0.01, 0.05]
    check = json.loads((tmp_path / "cal" / core_cli.CHECK_NAME).read_text())
    assert check["record_sha256"] == record.sha256 and check["images"] == 12
    assert (tmp_path / "cal" / core_cli.RELIABILITY_NAME).read_bytes()[:4] == b"\x89PNG"
    summary = re.search(
        r"fitted on (\d+) images, checked on (\d+): (\d+) real, (\d+) uncertain, (\d+) fake .*labelled (\d+) real, "
        r"(\d+) fake",
        fitted.stderr,
    )
    fit_n, check_n, real, uncertain, fake, labelled_real, labelled_fake = map(int, summary.groups())
    assert (fit_n, check_n) == (12, 12) and real + uncertain + fake == labelled_real + labelled_fake == 12

    report = tmp_path / "eval" / "r.json"
    evaluated = CliRunner().invoke(core_cli.evaluate, [*common, "--calibration", str(out), "--json", str(report)])
    assert evaluated.exit_code == 0, evaluated.output
    measured = json.loads(report.read_text())["calibration"]
    assert set(measured["before"]) == set(measured["after"]) == {"ece", "brier", "auc", "tpr@fpr-1%", "tpr@fpr-5%"}
    assert measured["after"]["auc"] == pytest.approx(measured["before"]["auc"])
    assert (tmp_path / "eval" / "r-reliability.png").is_file()
