"""The one comparator (runtime/detect/compare.py) against statistics computed here, pixel by pixel in plain
Python, and its judgement against the precision table's tolerances. numpy only."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from maskclip_runtime.contract.precision_table import PRECISIONS, Tolerances
from maskclip_runtime.detect.compare import IOU_MIN_REFERENCE_AREA, compare, gate_failures

THRESHOLD = 0.5


def _outputs(seed: int, n: int = 6, size: int = 8) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    reference = {
        "fake_prob": rng.random(n).astype(np.float32),
        "mask": rng.random((n, size, size)).astype(np.float32),
        "logits": rng.standard_normal((n, 2)).astype(np.float32),
    }
    candidate = {name: value + rng.normal(0, 0.05, value.shape).astype(np.float32) for name, value in reference.items()}
    candidate["mask"][0] = 0.0  # an image whose candidate mask is empty
    reference["mask"][1] = 0.0  # one whose reference is empty (IoU ill-conditioned)
    reference["mask"][1, 0, 0] = 0.9  # a single pixel: area 1/64 > 1 %, still counted
    reference["mask"][2] = 0.0
    candidate["mask"][2] = 0.0  # two empty masks
    return reference, candidate


def _by_hand(reference: dict, candidate: dict, threshold: float) -> dict:
    """The statistics the comparator should give, one pixel at a time."""
    ious, agreements, areas = [], [], []
    for ref, cand in zip(reference["mask"], candidate["mask"], strict=True):
        ref_on = {i for i, v in enumerate(ref.flat) if (v if isinstance(v, np.bool_) else v > threshold)}
        cand_on = {i for i, v in enumerate(cand.flat) if v > threshold}
        union = ref_on | cand_on
        ious.append(len(ref_on & cand_on) / len(union) if union else 1.0)
        agreements.append(1 - len(ref_on ^ cand_on) / ref.size)
        areas.append(len(ref_on) / ref.size)
    ref_prob = [float(p) for p in reference["fake_prob"]]
    prob = [float(p) for p in candidate["fake_prob"]]
    flips = sum((r > threshold) != (p > threshold) for r, p in zip(ref_prob, prob, strict=True))
    conditioned = [iou for iou, area in zip(ious, areas, strict=True) if area >= IOU_MIN_REFERENCE_AREA]
    return {
        "max_prob_diff": max(abs(p - r) for r, p in zip(ref_prob, prob, strict=True)),
        "flips": flips,
        "flip_rate": flips / len(ref_prob),
        "mask_iou_mean": sum(ious) / len(ious),
        "mask_iou_min": min(ious),
        "mask_iou_worst": min(conditioned, default=1.0),
        "mask_iou_worst_images": len(conditioned),
        "mask_pixel_agreement_min": min(agreements),
        "reference_mask_area_min": min(areas),
        "ious": ious,
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_statistics_match_a_pixel_by_pixel_count(seed):
    reference, candidate = _outputs(seed)
    names = [f"img{i}" for i in range(6)]
    stats = compare(reference, candidate, names, THRESHOLD)
    expected = _by_hand(reference, candidate, THRESHOLD)
    ious = expected.pop("ious")
    for key, value in expected.items():
        assert stats[key] == pytest.approx(value, abs=1e-9), key
    assert [row["image"] for row in stats["per_image"]] == names
    assert [row["mask_iou"] for row in stats["per_image"]] == pytest.approx(ious)
    assert stats["per_image"][2]["mask_iou"] == 1.0  # two empty masks agree
    logits = np.abs(candidate["logits"].astype(np.float64) - reference["logits"])
    assert stats["outputs"]["logits"]["max_abs"] == pytest.approx(float(logits.max()))
    assert stats["outputs"]["logits"]["max_rel"] == pytest.approx(
        float(logits.max() / np.abs(reference["logits"]).max())
    )
    assert stats["outputs"]["mask"]["finite"]


def test_a_thresholded_reference_gives_the_same_agreement_figures():
    """The self-check's canaries store PyTorch's mask thresholded: the same IoU and agreement, no value error."""
    reference, candidate = _outputs(3)
    binary = {**reference, "mask": reference["mask"] > THRESHOLD}
    names = list("abcdef")
    full, thresholded = compare(reference, candidate, names, THRESHOLD), compare(binary, candidate, names, THRESHOLD)
    for key in ("mask_iou_mean", "mask_iou_worst", "mask_pixel_agreement_min", "reference_mask_area_min", "flips"):
        assert thresholded[key] == full[key], key
    assert "mask" in full["outputs"] and "mask" not in thresholded["outputs"]


def test_the_reference_area_that_conditions_the_worst_iou_is_a_parameter():
    reference, candidate = _outputs(4)
    names = list("abcdef")
    everything = compare(reference, candidate, names, THRESHOLD, iou_min_reference_area=0.0)
    assert everything["mask_iou_worst_images"] == 6 and everything["mask_iou_worst"] == everything["mask_iou_min"]
    assert compare(reference, candidate, names, THRESHOLD, iou_min_reference_area=1.1)["mask_iou_worst"] == 1.0


def test_non_finite_candidates_fail():
    reference, candidate = _outputs(5)
    candidate["logits"][0, 0] = np.nan
    stats = compare(reference, candidate, list("abcdef"), THRESHOLD)
    assert any("logits" in f for f in gate_failures(stats, PRECISIONS["int8"].gate))


LIMITS = {  # tolerance field -> (statistic it bounds, sign: +1 an upper limit, -1 a lower one)
    "max_prob_diff": ("max_prob_diff", 1),
    "max_flip_rate": ("flip_rate", 1),
    "min_mask_iou": ("mask_iou_mean", -1),
    "min_worst_mask_iou": ("mask_iou_worst", -1),
    "min_pixel_agreement": ("mask_pixel_agreement_min", -1),
}
UNGATED = Tolerances(max_prob_diff=None, max_flip_rate=None, min_mask_iou=None)


@pytest.mark.parametrize("field", sorted(LIMITS))
def test_each_limit_fails_just_past_the_statistic_and_passes_at_it(field):
    stats = compare(*_outputs(6), list("abcdef"), THRESHOLD)
    statistic, sign = LIMITS[field]
    value = stats[statistic]
    assert gate_failures(stats, UNGATED) == []
    assert gate_failures(stats, dataclasses.replace(UNGATED, **{field: value})) == []
    assert len(gate_failures(stats, dataclasses.replace(UNGATED, **{field: value - sign * 1e-6}))) == 1


def test_mask_value_limit_bounds_the_mask_error():
    stats = compare(*_outputs(7), list("abcdef"), THRESHOLD)
    error = stats["outputs"]["mask"]["max_abs"]
    assert gate_failures(stats, dataclasses.replace(UNGATED, max_mask_diff=error)) == []
    assert len(gate_failures(stats, dataclasses.replace(UNGATED, max_mask_diff=error * 0.99))) == 1
