"""Robustness conditions: masks follow geometric ones exactly and ignore photometric ones; the report."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from maskclip_core import cli as core_cli
from maskclip_core.data import open_samples
from maskclip_core.data.synth import synthesize
from maskclip_core.robustness import CLEAN, CONDITIONS, stratified_subset

GEOMETRIC = [c for c in CONDITIONS if c.geometric]
PHOTOMETRIC = [c for c in CONDITIONS if not c.geometric]


def _pair(seed: int = 0, h: int = 96, w: int = 128):
    """A mask of 16-px blocks and an image that draws the same mask (plus texture in the other channels)."""
    rng = np.random.default_rng(seed)
    mask = np.kron(rng.integers(0, 2, (h // 16, w // 16)), np.ones((16, 16))).astype(np.uint8)
    image = np.stack([mask * 255, rng.integers(0, 256, (h, w)), np.full((h, w), 128)], axis=2).astype(np.uint8)
    return image, mask


def test_the_issue_conditions_are_all_there():
    names = {c.name for c in CONDITIONS}
    assert names == {
        "jpeg-95", "jpeg-75", "jpeg-50", "webp-80", "downscale-0.75", "downscale-0.5",
        "blur-1", "blur-2", "noise-3", "noise-8", "crop-0.8",
    }  # fmt: skip
    assert {c.name for c in GEOMETRIC} == {"downscale-0.75", "downscale-0.5", "crop-0.8"}


@pytest.mark.parametrize("condition", PHOTOMETRIC, ids=lambda c: c.name)
def test_photometric_conditions_change_the_image_and_leave_the_mask(condition):
    image, mask = _pair()
    out_image, out_mask = condition.apply(image.copy(), mask.copy(), np.random.default_rng(0))
    assert out_mask is mask or np.array_equal(out_mask, mask)
    assert out_image.shape == image.shape and out_image.dtype == np.uint8
    assert np.abs(out_image.astype(int) - image).mean() > 0.5


@pytest.mark.parametrize("condition", GEOMETRIC, ids=lambda c: c.name)
def test_geometric_conditions_move_image_and_mask_alike(condition):
    image, mask = _pair()
    out_image, out_mask = condition.apply(image.copy(), mask.copy(), np.random.default_rng(0))
    assert out_image.shape[:2] == out_mask.shape and set(np.unique(out_mask)) <= {0, 1}
    expected_size = {"downscale-0.75": (72, 96), "downscale-0.5": (48, 64), "crop-0.8": (77, 102)}[condition.name]
    assert out_mask.shape == expected_size
    # The drawn mask (channel 0) lands where the mask does: away from block borders they agree exactly.
    drawn = out_image[..., 0] > 127
    inner = cv2.erode(out_mask, np.ones((5, 5))) == cv2.dilate(out_mask, np.ones((5, 5)))  # 2+ px from a border
    assert inner.mean() > 0.3 and np.array_equal(drawn[inner], out_mask[inner].astype(bool))
    assert (drawn == out_mask.astype(bool)).mean() > 0.9


def test_crop_keeps_the_centre():
    image, mask = _pair(h=80, w=112)
    out_image, out_mask = next(c for c in CONDITIONS if c.name == "crop-0.8").apply(image, mask, None)
    np.testing.assert_array_equal(out_image, image[8:72, 11:101])
    np.testing.assert_array_equal(out_mask, mask[8:72, 11:101])


def test_noise_is_seeded_and_has_the_requested_sigma():
    image = np.full((200, 200, 3), 128, np.uint8)
    noise = next(c for c in CONDITIONS if c.name == "noise-8")
    a = noise.apply(image, image[..., 0], np.random.default_rng(7))[0]
    b = noise.apply(image, image[..., 0], np.random.default_rng(7))[0]
    np.testing.assert_array_equal(a, b)
    assert (a.astype(float) - 128).std() == pytest.approx(8.0, rel=0.03)


def test_stratified_subset_keeps_every_generator_and_kind(tmp_path):
    data = synthesize(tmp_path / "s", seed=2, train_count=0, test_count=16, generators=["sd15-like", "flux-like"])
    samples = open_samples(data, "test")
    subset = stratified_subset(samples, 8)
    for generator in ("sd15-like", "flux-like"):
        kinds = {s.kind for s in samples if s.generator == generator}
        assert {s.kind for s in subset if s.generator == generator} == kinds
        assert sum(s.generator == generator for s in subset) == pytest.approx(8, abs=1)
    assert stratified_subset(samples, None) == samples


@pytest.mark.parametrize("model", [[], ["--artifact", "runtime/demo", "--backend", "onnxruntime"]], ids=["demo", "art"])
def test_eval_robustness_writes_json_markdown_and_plot(tmp_path, one_torch_thread, model, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    data = synthesize(tmp_path / "s", seed=4, train_count=0, test_count=8, generators=["sd15-like"], min_size=128)
    out = tmp_path / "report" / "robustness.json"
    args = ["--data", str(data), "--split", "test", "--device", "cpu", "--workers", "0", "--robustness", *model]
    result = CliRunner().invoke(core_cli.evaluate, [*args, "--json", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert list(doc["conditions"]) == [CLEAN, *(c.name for c in CONDITIONS)]
    for entry in doc["conditions"].values():
        assert set(entry["metrics"]) == {"sd15-like", "AVG"}
        assert {"auc", "acc", "det_f1", "f1", "iou"} <= set(entry["metrics"]["AVG"])
    assert doc["images"] == 8 and "| crop-0.8 |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
