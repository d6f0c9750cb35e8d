"""Issue 24, say what the model is: a demonstration model's answers say so in every view of them."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from maskclip_runtime import cli
from maskclip_runtime.detect.detector import DEMO_DIR, Detector
from maskclip_runtime.present.overlay import explained_overlay
from maskclip_runtime.present.report import report_html

pytest.importorskip("onnxruntime")
EXAMPLES = sorted((DEMO_DIR / "examples").glob("*.jpg"))


def run(*args) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli.main, [*map(str, args), "--backend", "onnxruntime", "--device", "cpu"])
    return result.exit_code, result.stdout, result.stderr


def test_the_demo_card_and_its_records(tmp_path):
    with Detector(backend="onnxruntime", device="cpu") as detector:
        card = detector.artifact.manifest.card
        assert card.demo and "synthetic" in card.trained_on and not card.native_crops
    code, stdout, _ = run(*EXAMPLES, "-q")
    records = [json.loads(line) for line in stdout.splitlines()]
    assert code == 0 and records and all(r["demo"] is True for r in records)


def test_a_model_without_a_demo_card_is_not_called_one(tmp_path):
    from standin_artifact import build_standin_artifact

    artifact = build_standin_artifact(tmp_path / "a", "fused")
    code, stdout, _ = run(EXAMPLES[0], "--model", artifact, "-q")
    assert code == 0 and json.loads(stdout)["demo"] is False


def test_report_banner_only_for_demo_answers():
    record = {"path": "x.jpg", "verdict": "fake", "fake_prob": 0.8, "width": 1, "height": 1, "ms": 1.0}
    assert 'id="demo-banner"' in report_html([{**record, "demo": True}])
    assert 'id="demo-banner"' not in report_html([{**record, "demo": False}])


def test_overlay_legend_says_demo():
    with Detector(backend="onnxruntime", device="cpu") as detector:
        photo = Image.open(EXAMPLES[0]).convert("RGB")
        detection = detector.detect(photo)
    assert detection.demo
    prob = np.asarray(detection.mask)
    demo = np.asarray(explained_overlay(photo, prob, detection))
    plain = np.asarray(explained_overlay(photo, prob, dataclasses.replace(detection, demo=False)))
    height = photo.height if max(photo.size) <= 1600 else None
    # The demo note is a line of its own: the legend grows by it, and the photo block is the same.
    assert demo.shape[1:] == plain.shape[1:] and demo.shape[0] > plain.shape[0]
    if height is not None:
        assert np.array_equal(demo[:height], plain[:height])  # the photo block is the same; the legend differs


def test_tiles_with_a_model_not_trained_on_native_crops_warns_in_one_line():
    code, _, stderr = run(EXAMPLES[0], "--tiles")
    warnings = [line for line in stderr.splitlines() if "warning: --tiles" in line]
    assert code == 0 and len(warnings) == 1
    code, _, stderr = run(EXAMPLES[0], "--tiles", "-q")
    assert code == 0 and stderr == ""


def test_the_demo_manifest_holds_the_card_export_writes():
    from maskclip_runtime.contract.artifact import load_artifact
    from maskclip_runtime.contract.manifest import DEMO_CARD

    assert load_artifact(DEMO_DIR).manifest.card == DEMO_CARD


@pytest.mark.torch
def test_export_of_the_demo_model_writes_its_card(tmp_path):
    from maskclip_export import cli as export_cli
    from maskclip_runtime.contract.artifact import load_artifact
    from maskclip_runtime.contract.manifest import DEMO_CARD

    result = CliRunner().invoke(export_cli.main, ["--out", str(tmp_path / "art"), "--no-verify", "--quiet"])
    assert result.exit_code == 0, result.output
    assert load_artifact(tmp_path / "art").manifest.card == DEMO_CARD
