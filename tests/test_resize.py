"""The runtime's resizes against OpenCV itself, and the resize a spec names is the one every path uses."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from standin_artifact import SIZE, build_standin_artifact, read_manifest, sample_photos, write_manifest

from maskclip_core.checkpoint import read_checkpoint_config
from maskclip_core.config import MaskCLIPConfig, get_config
from maskclip_core.demo import DEMO_CHECKPOINT
from maskclip_runtime.contract.artifact import load_artifact
from maskclip_runtime.detect.detector import Detector
from maskclip_runtime.kernel.preprocess import (
    LEGACY_RESIZE,
    PreprocessSpec,
    cv2_linear,
    cv2_nearest,
    resize_and_normalize,
    resize_mask,
)

DEMO_ARTIFACT = Path(__file__).resolve().parents[1] / "runtime" / "demo"


def _sizes(rng: np.random.Generator, count: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(source h, w), (target h, w): random sizes and aspect ratios, plus the cases with special paths."""
    fixed = [
        ((1, 1), (512, 512)),
        ((1, 9), (512, 512)),
        ((9, 1), (3, 7)),
        ((1024, 1024), (512, 512)),  # exactly 2x: OpenCV switches to its area kernel
        ((512, 512), (512, 512)),
        ((1411, 1058), (512, 512)),
        ((300, 40), (512, 512)),
        ((256, 384), (512, 512)),
        ((5, 700), (11, 3)),
    ]
    drawn = [(tuple(rng.integers(1, 1600, 2)), tuple(rng.integers(1, 600, 2))) for _ in range(count)]
    return fixed + [((int(a), int(b)), (int(c), int(d))) for (a, b), (c, d) in drawn]


@pytest.mark.parametrize("channels", [3, 1])
def test_cv2_linear_within_one_grey_level_of_opencv(channels):
    rng = np.random.default_rng(0)
    worst, differing, total = 0, 0, 0
    for (h, w), (th, tw) in _sizes(rng, 60):
        shape = (h, w, channels) if channels == 3 else (h, w)
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        expected = cv2.resize(image, (tw, th), interpolation=cv2.INTER_LINEAR).astype(np.int16)
        got = cv2_linear(image, tw, th)
        assert got.shape == expected.shape and got.dtype == np.uint8
        diff = np.abs(got.astype(np.int16) - expected)
        worst, differing, total = (
            max(worst, int(diff.max())),
            differing + int(np.count_nonzero(diff)),
            total + diff.size,
        )
    assert worst <= 1
    assert differing / total < 1e-3  # it is the same fixed-point arithmetic, not an approximation


def test_cv2_nearest_is_identical_to_opencv():
    rng = np.random.default_rng(1)
    for (h, w), (th, tw) in _sizes(rng, 60):
        mask = (rng.random((h, w)) < 0.3).astype(np.uint8)
        np.testing.assert_array_equal(
            cv2_nearest(mask, tw, th), cv2.resize(mask, (tw, th), interpolation=cv2.INTER_NEAREST)
        )


def test_specs_resize_images_and_masks_with_their_named_method():
    photo = sample_photos()["astronaut"]  # 512 x 512 with fine detail
    spec = PreprocessSpec(size=200, resize="cv2-linear")
    expected = cv2.resize(np.asarray(photo), (200, 200), interpolation=cv2.INTER_LINEAR)
    expected = (expected / np.float32(255) - np.float32(spec.mean)) / np.float32(spec.std)
    np.testing.assert_allclose(resize_and_normalize(photo, spec), expected.transpose(2, 0, 1), atol=1e-5)
    legacy = PreprocessSpec(size=200, resize="pil-bilinear-aa")
    smoothed = np.asarray(photo.resize((200, 200), Image.Resampling.BILINEAR)) / np.float32(255)
    smoothed = (smoothed - np.float32(legacy.mean)) / np.float32(legacy.std)
    np.testing.assert_allclose(resize_and_normalize(photo, legacy), smoothed.transpose(2, 0, 1), atol=1e-5)
    # Shrinking a detailed photo: the two named methods really differ (PIL antialiases).
    assert np.abs(resize_and_normalize(photo, spec) - resize_and_normalize(photo, legacy)).max() > 0.1

    mask = (np.random.default_rng(2).random((97, 131)) < 0.5).astype(np.uint8)
    np.testing.assert_array_equal(
        resize_mask(mask, spec), cv2.resize(mask, (200, 200), interpolation=cv2.INTER_NEAREST)
    )
    np.testing.assert_array_equal(
        resize_mask(mask, legacy), np.asarray(Image.fromarray(mask).resize((200, 200), Image.Resampling.NEAREST))
    )


def test_registered_configs_use_the_authors_resize():
    assert get_config("opensdi-vitl14").preprocess_spec().resize == "cv2-linear"
    assert get_config("tiny").preprocess_spec().resize == "cv2-linear"
    with pytest.raises(ValueError):
        PreprocessSpec.from_dict({**PreprocessSpec().to_dict(), "resize": "cv2-cubic"})
    with pytest.raises(ValueError):
        MaskCLIPConfig.from_dict({**get_config("tiny").to_dict(), "resize": "bilinear"}).validate()


def test_records_without_the_field_mean_the_old_pillow_resize():
    """Manifests and checkpoint configs written before the resize was named (the demo's among them)."""
    old_preprocess = {
        "size": 128,
        "resample": "bilinear",
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
        "channel_order": "RGB",
        "layout": "NCHW",
        "dtype": "float32",
        "scale": 1 / 255,
    }
    assert PreprocessSpec.from_dict(old_preprocess) == PreprocessSpec(size=128, resize="pil-bilinear-aa")
    old_config = {k: v for k, v in get_config("tiny").to_dict().items() if k != "resize"}
    assert MaskCLIPConfig.from_dict(old_config).resize == LEGACY_RESIZE == "pil-bilinear-aa"
    # The shipped demo loads, and its artifact resizes as its checkpoint was evaluated.
    assert load_artifact(DEMO_ARTIFACT).preprocess == read_checkpoint_config(DEMO_CHECKPOINT).preprocess_spec()


def test_runtime_honours_the_manifest_resize(tmp_path):
    """The stand-in mask is sigmoid(4 * channel mean) of the model input: it shows the resize used."""
    folder = build_standin_artifact(tmp_path / "art", "fused")
    photo = sample_photos()["coffee"]  # 400 x 600, shrunk to SIZE
    spec = PreprocessSpec(size=SIZE)
    by_method = {}
    for method, resized in (
        ("pil-bilinear-aa", np.asarray(photo.resize((SIZE, SIZE), Image.Resampling.BILINEAR))),
        ("cv2-linear", cv2.resize(np.asarray(photo), (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)),
    ):
        manifest = read_manifest(folder)
        manifest["preprocess"]["resize"] = method
        write_manifest(folder, manifest)
        x = (resized / np.float32(255) - np.float32(spec.mean)) / np.float32(spec.std)
        expected = 1.0 / (1.0 + np.exp(-4.0 * x.mean(axis=2)))
        by_method[method] = Detector(folder, backend="onnxruntime", device="cpu").detect([photo])[0].model_mask
        np.testing.assert_allclose(by_method[method], expected, atol=1e-5)
    assert np.abs(by_method["cv2-linear"] - by_method["pil-bilinear-aa"]).max() > 1e-3
