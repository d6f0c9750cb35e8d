"""Overlays a person can read (runtime/present/overlay.py): the colour map, the blend, the outline, the legend
strip and the size cap; and the binary masks at the threshold."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from maskclip_runtime.detect.detector import Detection
from maskclip_runtime.present.outputs import mask_image, overlay_photo_size, save_overlay_png, source_tag
from maskclip_runtime.present.overlay import (
    CALM_BELOW,
    MAX_OPACITY,
    VERDICT_COLOURS,
    VIRIDIS,
    explained_overlay,
    fit_within,
    heat_overlay,
)


def _detection(verdict: str, prob: np.ndarray, fake_prob: float = 0.9) -> Detection:
    height, width = prob.shape
    return Detection(fake_prob, verdict, 0.5, width, height, 1.0, prob.astype(np.float32))


def _relative_luminance(rgb: np.ndarray) -> np.ndarray:
    srgb = rgb / 255.0
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    return linear @ np.array([0.2126, 0.7152, 0.0722])


def test_colour_map_is_viridis_and_brightens_steadily():
    assert VIRIDIS.shape == (256, 3) and VIRIDIS.dtype == np.uint8
    assert tuple(VIRIDIS[0]) == (0x44, 0x01, 0x54) and tuple(VIRIDIS[-1]) == (0xFD, 0xE7, 0x25)
    # Perceptually ordered: four levels up is always a lighter colour (single 8-bit steps may tie or
    # dip by a rounding error; a rainbow map such as jet fails this by far).
    luminance = _relative_luminance(VIRIDIS.astype(np.float64))
    assert (luminance[4:] > luminance[:-4]).all()


def test_heat_overlay_blends_the_colour_map_only_where_the_probability_is_meaningful():
    photo = Image.new("RGB", (5, 1), (200, 60, 20))  # orange: red heat would vanish on it
    prob = np.array([[0.0, 0.2, 0.5, 0.8, 1.0]], np.float32)
    pixels = np.asarray(heat_overlay(photo, prob), np.float64)[0]
    for value, pixel in zip(prob[0], pixels, strict=True):
        opacity = np.clip((value - CALM_BELOW) / (1 - CALM_BELOW), 0, 1) * MAX_OPACITY
        expected = (1 - opacity) * np.array([200, 60, 20]) + opacity * VIRIDIS[round(value * 255)]
        np.testing.assert_allclose(pixel, expected, atol=1.5)
    assert (pixels[1] == (200, 60, 20)).all()


def test_thresholded_region_is_outlined_white_inside_black_outside():
    photo = Image.new("RGB", (40, 40), (128, 128, 128))
    prob = np.zeros((40, 40), np.float32)
    prob[10:30, 10:30] = 0.9
    plain = np.asarray(heat_overlay(photo, prob))
    outlined = np.asarray(heat_overlay(photo, prob, threshold=0.5))
    assert (outlined[10, 15:25] == 255).all() and (outlined[29, 15:25] == 255).all()  # just inside
    assert (outlined[9, 15:25] == 0).all() and (outlined[30, 15:25] == 0).all()  # just outside
    np.testing.assert_array_equal(outlined[12:28, 12:28], plain[12:28, 12:28])  # the interior keeps its colour
    np.testing.assert_array_equal(outlined[:7], plain[:7])  # far outside: the photo as it was
    # A region that is the whole image has no edge to draw.
    full = np.full((40, 40), 0.9, np.float32)
    np.testing.assert_array_equal(np.asarray(heat_overlay(photo, full, 0.5)), np.asarray(heat_overlay(photo, full)))


def test_binary_mask_is_exactly_the_pixels_mask_fraction_counts():
    prob = np.random.default_rng(0).random((37, 53)).astype(np.float32)
    detection = _detection("fake", prob)
    binary = np.asarray(mask_image(detection.mask, detection.threshold))
    assert set(np.unique(binary)) == {0, 255}
    np.testing.assert_array_equal(binary == 255, prob > 0.5)
    assert detection.mask_fraction == pytest.approx((binary == 255).mean())


@pytest.mark.parametrize(
    ("size", "cap", "expected"),
    [
        ((3000, 2000), 1024, (1024, 683)),
        ((300, 200), 1024, (300, 200)),
        ((3000, 2000), None, (3000, 2000)),
        ((10, 4000), 1024, (3, 1024)),
    ],
)
def test_fit_within_caps_the_long_side_and_never_enlarges(size, cap, expected):
    assert fit_within(size, cap) == expected


@pytest.mark.parametrize("verdict", ["real", "uncertain", "fake"])
def test_explained_overlay_keeps_the_photo_block_and_shows_the_verdict_below(verdict):
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 255, (2000, 3000, 3), np.uint8))
    prob = np.zeros((2000, 3000), np.float32)
    prob[500:1500, 1000:2000] = 0.95
    overlay = explained_overlay(photo, prob, _detection(verdict, prob), max_side=1024)
    width, height = fit_within(photo.size, 1024)
    assert overlay.width == width and overlay.height > height  # the legend is below the photo, not on it
    small_photo = photo.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=2.0)
    small_prob = np.asarray(Image.fromarray(prob, "F").resize((width, height), Image.Resampling.BOX))
    expected = np.asarray(heat_overlay(small_photo, small_prob, 0.5))
    np.testing.assert_array_equal(np.asarray(overlay.crop((0, 0, width, height))), expected)
    legend = np.asarray(overlay.crop((0, height, width, overlay.height))).reshape(-1, 3)
    shown = {v for v, colour in VERDICT_COLOURS.items() if (legend == colour).all(axis=1).sum() > 200}
    assert shown == {verdict}  # the verdict's badge, and no other verdict's


def test_narrow_photo_gets_a_canvas_wide_enough_for_the_legend_and_the_png_records_its_source(tmp_path):
    photo = Image.new("RGB", (64, 64), (10, 200, 10))
    prob = np.full((64, 64), 0.1, np.float32)
    save_overlay_png(photo, prob, tmp_path / "o.png", source="x.jpg", detection=_detection("real", prob, 0.1))
    with Image.open(tmp_path / "o.png") as png:
        assert png.width > 64 and png.text["maskclip-source"] == source_tag("x.jpg")
        assert overlay_photo_size(png) == (64, 64)
        np.testing.assert_array_equal(np.asarray(png.convert("RGB"))[:64, :64], np.asarray(photo))


def test_a_probability_map_of_another_size_is_resized_to_the_photo():
    photo = Image.new("RGB", (100, 50), (128, 128, 128))
    prob = np.zeros((25, 50), np.float32)
    prob[:, 25:] = 1.0  # the right half
    overlay = np.asarray(explained_overlay(photo, prob, _detection("fake", prob)))
    assert (overlay[:50, :40] == 128).all() and (overlay[:50, 60:] != 128).any(axis=-1).all()
