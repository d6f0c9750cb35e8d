"""Calibration: temperature fit, operating points, metrics, and the record's integrity (no model needed)."""

import json
import math

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, roc_auc_score

from maskclip_core.calibrate import (
    brier_score,
    calibration_check,
    calibration_metrics,
    calibration_report,
    expected_calibration_error,
    fit_calibration,
    fit_temperature,
    split_holdout,
    threshold_at_fpr,
    tpr_at_fpr,
)
from maskclip_runtime.contract.verdict_calibration import (
    Calibration,
    CalibrationError,
    OperatingPoint,
    read_calibration,
    sigmoid,
    write_calibration,
)


def _labelled_logits(temperature: float, n: int, seed: int):
    """Logits z whose true fake probability is sigmoid(z / temperature): a model off by exactly T."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 4.0, n)
    labels = (rng.random(n) < sigmoid(z / temperature)).astype(int)
    return labels, sigmoid(z).astype(np.float32)  # what a float32 softmax head hands out


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.5])
def test_temperature_scaling_recovers_a_known_temperature(temperature):
    labels, prob = _labelled_logits(temperature, 40_000, seed=1)
    assert fit_temperature(labels, prob) == pytest.approx(temperature, rel=0.05)


def test_calibration_lowers_ece_and_keeps_the_ranking():
    labels, prob = _labelled_logits(2.5, 20_000, seed=2)
    record = fit_calibration(labels, prob, {"model": "synthetic"})
    before, after = calibration_metrics(labels, prob), calibration_metrics(labels, record.calibrate(prob))
    assert after["ece"] < 0.02 < before["ece"]
    assert after["brier"] < before["brier"]
    assert after["auc"] == pytest.approx(before["auc"], abs=1e-9)  # a monotone map cannot change the ranking


@pytest.mark.parametrize("target", [0.01, 0.05])
def test_threshold_hits_the_requested_fpr_on_held_out_reals(target):
    rng = np.random.default_rng(3)
    fit_reals, fresh_reals = rng.beta(2, 5, 4_000), rng.beta(2, 5, 40_000)
    threshold = threshold_at_fpr(fit_reals, target)
    assert np.mean(fit_reals > threshold) <= target  # never above the target where it was chosen
    sigma = math.sqrt(target * (1 - target) * (1 / len(fit_reals) + 1 / len(fresh_reals)))
    assert abs(np.mean(fresh_reals > threshold) - target) < 3 * sigma + 1 / len(fit_reals)


def test_tpr_at_fpr_and_metrics_match_independent_computations():
    labels, prob = _labelled_logits(1.0, 5_000, seed=4)
    prob = prob.astype(np.float64)
    assert brier_score(labels, prob) == pytest.approx(brier_score_loss(labels, prob))
    assert calibration_metrics(labels, prob)["auc"] == pytest.approx(roc_auc_score(labels, prob))
    # TPR at 5 % FPR read off the ROC curve: the best TPR among thresholds with FPR <= 5 %
    reals, fakes = np.sort(prob[labels == 0]), prob[labels == 1]
    best = max(np.mean(fakes > t) for t in reals if np.mean(reals > t) <= 0.05)
    assert tpr_at_fpr(labels, prob, 0.05) == pytest.approx(best)


def test_ece_of_a_hand_computed_example():
    # bins of width 1/15: 0.1 (bin 1, fraction fake 0.5), 0.9 (bin 13, fraction fake 1.0)
    labels, prob = [0, 1, 1, 1], [0.1, 0.1, 0.9, 0.9]
    assert expected_calibration_error(labels, prob) == pytest.approx(0.5 * 0.4 + 0.5 * 0.1)


def test_record_band_verdicts_and_report():
    labels, prob = _labelled_logits(1.5, 10_000, seed=5)
    record = fit_calibration(labels, prob, {"model": "synthetic"}, target_fprs=(0.05, 0.01))
    assert [op.name for op in record.operating_points] == ["fpr-1%", "fpr-5%"]
    low, high = record.band
    assert (record.real_point, record.fake_point) == ("fpr-5%", "fpr-1%") and low < high
    assert list(record.verdicts([0.0, low, (low + high) / 2, high, 1.0])) == [
        "real",
        "real",
        "uncertain",
        "uncertain",
        "fake",
    ]
    report = calibration_report(labels, prob, record)
    assert report["operating_points"]["fpr-1%"]["fpr"] <= 0.01
    shares = report["verdict_shares"]["real images"]
    assert sum(shares.values()) == pytest.approx(1.0) and shares["fake"] <= 0.01


def test_record_round_trips_and_a_tampered_record_is_refused(tmp_path):
    record = Calibration.create(
        0.8,
        [OperatingPoint("fpr-1%", 0.01, 0.9, 0.01, 0.7), OperatingPoint("fpr-5%", 0.05, 0.6, 0.05, 0.8)],
        "fpr-1%",
        "fpr-5%",
        {"model": "x"},
    )
    path = tmp_path / "record.json"
    write_calibration(record, path)
    assert read_calibration(path) == record
    doc = json.loads(path.read_text())
    doc["operating_points"][0]["threshold"] = 0.5
    path.write_text(json.dumps(doc))
    with pytest.raises(CalibrationError, match="sha256"):
        read_calibration(path)


@pytest.mark.parametrize(
    "change",
    [{"temperature": -1.0}, {"temperature": float("nan")}, {"fake_point": "fpr-9%"}],
)
def test_unusable_records_are_refused(change):
    points = [OperatingPoint("fpr-1%", 0.01, 0.9, 0.01, 0.7), OperatingPoint("fpr-5%", 0.05, 0.6, 0.05, 0.8)]
    fields = {"temperature": 1.0, "fake_point": "fpr-1%", "real_point": "fpr-5%", **change}
    with pytest.raises(CalibrationError):
        Calibration.create(fields["temperature"], points, fields["fake_point"], fields["real_point"], {})


def test_holdout_split_is_disjoint_stratified_and_seeded():
    from maskclip_core.data import Sample

    samples = [Sample(f"k{i}", i % 2, f"g{i % 3}", "real", "src", lambda: (b"", None)) for i in range(60)]
    fit, check = split_holdout(samples, 0.5, seed=0)
    assert len(fit) + len(check) == 60 and not {s.key for s in fit} & {s.key for s in check}
    for group in {(s.generator, s.label) for s in samples}:
        assert sum((s.generator, s.label) == group for s in fit) == 5
    assert [s.key for s in split_holdout(samples, 0.5, seed=0)[0]] == [s.key for s in fit]


def _overconfident(n_real: int, n_fake: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and fake probabilities three times too confident (a temperature near 3 fixes them)."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n_real), np.ones(n_fake)]
    true_logit = rng.normal(np.where(y == 1, 1.0, -1.0), 1.0)
    return y, 1 / (1 + np.exp(-3 * true_logit))


def _checked(fit, check):
    record = fit_calibration(*fit, {"model": "test"}, (0.01, 0.05))
    return calibration_check(calibration_report(*check, record), record)


def test_a_calibration_on_enough_images_passes_its_check():
    result = _checked(_overconfident(2000, 2000, 1), _overconfident(2000, 2000, 2))
    assert result["passed"], result["problems"]
    assert result["ece"][1] < result["ece"][0] and result["brier"][1] < result["brier"][0]


def test_a_calibration_on_30_plus_30_images_fails_and_says_why():
    result = _checked(_overconfident(30, 30, 3), _overconfident(30, 30, 4))
    assert not result["passed"]
    assert any("needs at least 500" in p for p in result["problems"])  # 5 false positives at 1 %
    assert result["points"]["fpr-1%"]["needed_real_images"] == 500


def test_a_calibration_that_makes_ece_worse_fails():
    y, prob = _overconfident(2000, 2000, 5)
    record = fit_calibration(y, prob, {"model": "test"}, (0.01, 0.05))
    rng = np.random.default_rng(6)  # a check half that is calibrated already: softening it makes it worse
    check_prob = rng.uniform(0.001, 0.999, 4000)
    check_labels = (rng.uniform(size=4000) < check_prob).astype(float)
    result = calibration_check(calibration_report(check_labels, check_prob, record), record)
    assert not result["passed"] and any(p.startswith("ece worse") for p in result["problems"])
