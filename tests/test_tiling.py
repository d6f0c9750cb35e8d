"""--tiles: native-resolution masks stitched from overlapping model-size tiles (runtime/detect/tiling.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from standin_artifact import SIZE, build_standin_artifact

from maskclip_runtime import cli
from maskclip_runtime.detect.detector import Detector
from maskclip_runtime.detect.tiling import detect_tiled, seam_weights, tile_boxes, tile_starts
from maskclip_runtime.kernel.preprocess import PreprocessSpec


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return build_standin_artifact(tmp_path_factory.mktemp("standin"), "split")


def pixelwise_standin_mask(image: Image.Image) -> np.ndarray:
    """The stand-in's mask is a per-pixel function of the input: computed here at the image's own size."""
    spec = PreprocessSpec(size=SIZE)
    x = (np.asarray(image, np.float32) / 255.0 - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return 1.0 / (1.0 + np.exp(-4.0 * x.mean(axis=2)))


@pytest.mark.parametrize(("length", "tile", "overlap"), [(100, 32, 8), (2048, 512, 128), (33, 32, 8), (515, 128, 32)])
def test_tiles_cover_the_axis_flush_with_both_ends_and_overlap_enough(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] + tile == length
    assert all(0 < b - a <= tile - overlap for a, b in zip(starts, starts[1:], strict=False))
    assert tile_starts(20, 32, 8) == [0]


def test_seam_weights_fall_towards_the_edges_but_never_to_zero():
    weights = seam_weights(32, 24, 8)
    assert weights.shape == (24, 32) and weights.min() > 0
    assert weights[12, 16] == 1.0 and weights[0, 0] < weights[4, 4] < weights[8, 8]


def test_stitched_mask_is_the_native_resolution_answer_and_the_verdict_the_global_views(artifact):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (75, 101, 3), np.uint8))
    with Detector(artifact, batch=2) as detector:
        (plain,) = detector.detect([image])
        tiled = detect_tiled(detector, image, plain)
    assert len(tile_boxes(101, 75, SIZE, 8)) == 12  # more tiles than one batch of 2: batches are chained
    assert (tiled.fake_prob, tiled.verdict) == (plain.fake_prob, plain.verdict)
    assert tiled.mask.shape == plain.mask.shape == (75, 101)
    expected = pixelwise_standin_mask(image)
    np.testing.assert_allclose(tiled.mask, expected, atol=1e-5)
    assert np.abs(plain.mask - expected).max() > 0.1  # the plain resize blurs the per-pixel answer away
    assert tiled.mask_policy.startswith("tiles") and plain.mask_policy == "resize"


def test_cli_tiles_record_their_policy_and_small_images_keep_the_global_mask(artifact, tmp_path):
    big, small = tmp_path / "big.png", tmp_path / "small.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (90, 70, 3), np.uint8)).save(big)
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (20, 30, 3), np.uint8)).save(small)
    masks = tmp_path / "masks"
    result = CliRunner().invoke(
        cli.main, [str(big), str(small), "--model", str(artifact), "--tiles", "--json", "-", "--prob-maps", str(masks)]
    )
    assert result.exit_code == 0, result.stderr
    records = {r["path"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert records[str(big)]["mask_policy"].startswith("tiles") and records[str(small)]["mask_policy"] == "resize"
    prob = np.asarray(Image.open(masks / "big_prob.png"), np.float32) / 255.0
    with Image.open(big) as image:
        np.testing.assert_allclose(prob, pixelwise_standin_mask(image.convert("RGB")), atol=1 / 255 + 1e-4)
