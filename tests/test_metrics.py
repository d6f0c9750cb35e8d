"""Metrics against hand-worked cases, an independent numpy implementation and scikit-learn."""

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from maskclip_core.metrics import MetricAccumulator, detection_scores, format_table, pixel_f1_iou, roc_auc


def test_pixel_hand_worked():
    gt = np.zeros((4, 4))
    gt[:2, :2] = 1  # 4 positive pixels
    pred = np.zeros((4, 4))
    pred[:2, :3] = 0.9  # 6 predicted: TP 4, FP 2, FN 0
    f1, iou = pixel_f1_iou(pred, gt)
    assert iou == pytest.approx(4 / 6, abs=1e-7)
    assert f1 == pytest.approx(2 * (4 / 6) * 1 / (4 / 6 + 1), abs=1e-7)


def test_pixel_threshold_is_strict():
    gt = np.ones((2, 2))
    assert pixel_f1_iou(np.full((2, 2), 0.5), gt) == (0.0, 0.0)


@pytest.mark.parametrize(
    ("pred", "gt", "f1", "iou"),
    [
        (0.0, 1.0, 0.0, 0.0),  # empty prediction
        (1.0, 0.0, 0.0, 0.0),  # empty ground truth, everything predicted
        (0.0, 0.0, 0.0, 0.0),  # both empty: 0 by the eps formula, as IMDLBenCo scores it
        (1.0, 1.0, 1.0, 1.0),  # full masks
    ],
)
def test_pixel_edge_cases(pred, gt, f1, iou):
    got_f1, got_iou = pixel_f1_iou(np.full((8, 8), pred), np.full((8, 8), gt))
    assert got_f1 == pytest.approx(f1, abs=1e-6)
    assert got_iou == pytest.approx(iou, abs=1e-6)


def _reference(prob, gt):
    """Independent formulation: confusion counts from a flattened 2x2 histogram."""
    counts = np.bincount(2 * (gt.ravel() > 0.5) + (prob.ravel() > 0.5), minlength=4)
    tn, fp, fn, tp = counts.astype(np.float64)
    p, r = tp / (tp + fp + 1e-8), tp / (tp + fn + 1e-8)
    return 2 * p * r / (p + r + 1e-8), tp / (tp + fp + fn + 1e-8)


def test_pixel_random_vs_reference():
    rng = np.random.default_rng(0)
    for _ in range(50):
        prob = rng.random((16, 16))
        gt = (rng.random((16, 16)) < rng.random()).astype(np.uint8)
        np.testing.assert_allclose(pixel_f1_iou(prob, gt), _reference(prob, gt), atol=1e-12)


def test_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(1)
    for _ in range(20):
        labels = rng.integers(0, 2, 200)
        scores = np.round(rng.random(200) + 0.3 * labels, 1)  # rounding makes many ties
        assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert math.isnan(roc_auc(np.ones(5), np.arange(5)))


def test_detection_scores():
    labels = np.array([0, 0, 1, 1, 1])
    prob = np.array([0.2, 0.7, 0.9, 0.4, 0.6])  # TP 2, FP 1, FN 1, TN 1
    d = detection_scores(labels, prob)
    assert d["acc"] == pytest.approx(3 / 5)
    assert d["f1"] == pytest.approx(4 / 6)
    assert d["auc"] == pytest.approx(roc_auc_score(labels, prob))


def test_accumulator_means_per_image_and_avg():
    acc = MetricAccumulator()
    gt = np.zeros((4, 4))
    gt[0, 0] = 1
    acc.update("a", 1, 0.9, "partial", gt, gt)  # perfect: F1 1
    acc.update("a", 1, 0.9, "partial", np.zeros((4, 4)), gt)  # empty: F1 0
    acc.update("a", 0, 0.1, "real")
    acc.update("b", 1, 0.2, "full")  # full fakes count for detection only
    acc.update("b", 0, 0.8, "real")
    s = acc.summary()
    assert s["a"]["f1"] == pytest.approx(0.5, abs=1e-6)  # mean of per-image, not pooled (pooled would be 2/3)
    assert s["a"]["n_partial"] == 2 and s["b"]["n_partial"] == 0
    assert math.isnan(s["b"]["iou"])
    assert s["AVG"]["acc"] == pytest.approx((1.0 + 0.0) / 2)
    assert s["AVG"]["f1"] == pytest.approx(s["a"]["f1"])  # generators without partial fakes are skipped
    assert "AVG" in format_table(s)
