"""maskclip-eval --tiles: tiled masks scored at each image's own size, checked against an independent
computation over the runtime's Detector and tiling, and the plain policy left as it was."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from maskclip_core.cli import evaluate as eval_command
from maskclip_core.data import open_samples
from maskclip_core.data.samples import load_sample
from maskclip_core.data.synth import synthesize
from maskclip_runtime.detect.detector import DEMO_DIR, Detector
from maskclip_runtime.detect.tiling import detect_tiled
from maskclip_runtime.errors import EXIT_USAGE

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # Twice the demo model's 128 px input, so every partial fake is tiled.
    return synthesize(tmp_path_factory.mktemp("synth"), seed=5, train_count=0, test_count=9, min_size=256, max_size=256)


def f1(prob: np.ndarray, truth: np.ndarray, threshold: float) -> float:
    predicted, truth = prob > threshold, truth > 0
    true_positive = np.count_nonzero(predicted & truth)
    wrong = np.count_nonzero(predicted ^ truth)
    return 2 * true_positive / (2 * true_positive + wrong) if true_positive + wrong else 0.0


def test_tiled_pixel_scores_match_an_independent_computation(data, tmp_path):
    out = tmp_path / "tiles.json"
    result = CliRunner().invoke(eval_command, ["--data", str(data), "--split", "test", "--tiles", "--json", str(out)])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(out.read_text())
    assert doc["masks_scored_at"].startswith("native")

    expected: dict[str, list[float]] = {}
    with Detector(DEMO_DIR, device="cpu", self_check=False) as detector:
        for sample in open_samples(data, "test"):
            if not sample.is_partial_fake:
                continue
            image, truth = load_sample(sample)
            photo = Image.fromarray(image)
            (detection,) = detector.detect([photo])
            tiled = detect_tiled(detector, photo, detection)
            assert tiled.mask.shape == truth.shape and tiled.mask_policy != "resize"
            expected.setdefault(sample.generator, []).append(f1(tiled.mask, truth, detector.threshold))
    assert expected
    for generator, scores in expected.items():
        assert doc["metrics"][generator]["f1"] == pytest.approx(np.mean(scores), abs=1e-6)
        assert doc["metrics"][generator]["n_partial"] == len(scores)

    plain = tmp_path / "plain.json"
    args = [
        "--data",
        str(data),
        "--split",
        "test",
        "--artifact",
        str(DEMO_DIR),
        "--workers",
        "0",
        "--json",
        str(plain),
    ]
    assert CliRunner().invoke(eval_command, args).exit_code == 0
    plain_doc = json.loads(plain.read_text())
    assert plain_doc["masks_scored_at"] == "model input (128 px)"
    for generator, row in plain_doc["metrics"].items():  # the verdicts are the global view's either way
        assert (row["acc"], row["auc"]) == (doc["metrics"][generator]["acc"], doc["metrics"][generator]["auc"])


@pytest.mark.parametrize("extra", [["--checkpoint", "model.safetensors"], ["--robustness"]])
def test_tiles_refuses_what_it_cannot_score(data, extra):
    result = CliRunner().invoke(eval_command, ["--data", str(data), "--tiles", *extra])
    assert result.exit_code == EXIT_USAGE and "Traceback" not in result.output
