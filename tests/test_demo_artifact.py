"""The shipped demo artifact (runtime/demo) stays in sync with the demo checkpoint it was exported from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from maskclip_core.checkpoint import load_checkpoint, weights_digest
from maskclip_core.demo import DEMO_CHECKPOINT
from maskclip_runtime import Detector
from maskclip_runtime.contract.artifact import load_artifact
from maskclip_runtime.contract.manifest import ModelIdentity
from maskclip_runtime.detect.detector import DEMO_DIR
from maskclip_runtime.kernel.preprocess import load_image, preprocess_batch


def test_demo_artifact_was_exported_from_the_demo_checkpoint():
    model = load_checkpoint(DEMO_CHECKPOINT)
    manifest = load_artifact(DEMO_DIR).manifest  # a format version 1 manifest: its id named the weights only
    assert manifest.model_id == ModelIdentity("tiny", weights_digest(model), "fp32", "fused").model_id
    assert manifest.gate_passed is True


def test_demo_artifact_computes_what_the_checkpoint_computes():
    model = load_checkpoint(DEMO_CHECKPOINT)
    images = [load_image(p) for p in sorted((DEMO_DIR / "examples").glob("*.jpg"))]
    assert len(images) == 3
    detections = Detector(DEMO_DIR).detect(images)
    x = torch.from_numpy(preprocess_batch(images, model.preprocess_spec()))
    with torch.no_grad():
        ref = model(x)
    got = np.array([d.fake_prob for d in detections])
    np.testing.assert_allclose(got, ref["fake_prob"].numpy(), atol=1e-4)
    # the examples are labelled by their file names; the demo gets these three right
    verdicts = {
        Path(p).stem: d.verdict for p, d in zip(sorted((DEMO_DIR / "examples").glob("*.jpg")), detections, strict=True)
    }
    assert verdicts == {"fully_generated": "fake", "partially_edited": "fake", "real_photo": "real"}


def test_detector_without_a_model_runs_the_demo_artifact():
    example = sorted((DEMO_DIR / "examples").glob("*.jpg"))[0]
    default = Detector()
    assert default.model_id == load_artifact(DEMO_DIR).model_id
    expected = Detector(DEMO_DIR / "manifest.json").detect([load_image(example)])[0]
    assert default.detect(example).fake_prob == expected.fake_prob
