"""Fitting verdict calibration records and measuring calibration (the record: contract.verdict_calibration).

Temperature scaling (Guo et al., 2017) on the detection head's fake probability: one scalar T,
fitted by minimising the negative log-likelihood on held-out images. Operating points are
thresholds on the calibrated probability at target false-positive rates on REAL images: the
threshold t is the k-th highest real score (k = floor(target * n_real)) and the verdict is "fake"
when p > t, so at most k of the n real images are flagged (FPR <= target on the fitting data).

Metrics, on the fake probability (positive = fake): ECE = sum over 15 equal-width bins of
(share of images) * |fraction fake - mean predicted|; Brier = mean (p - y)^2; AUC; TPR at 1 % and
5 % FPR (best threshold on the scored set itself, i.e. the ROC curve read at that FPR).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar

from maskclip_core.data import Sample
from maskclip_core.metrics import roc_auc
from maskclip_runtime.contract.verdict_calibration import (
    Calibration,
    OperatingPoint,
    logit,
    operating_point_name,
    scale_probabilities,
)

TARGET_FPRS = (0.01, 0.05)
ECE_BINS = 15
LOG_T_RANGE = (math.log(0.02), math.log(50.0))


def fit_temperature(labels, prob) -> float:
    """Temperature minimising the NLL of sigmoid(logit(prob) / T) against labels (1 = fake)."""
    y = np.asarray(labels, dtype=np.float64)
    z = logit(prob)
    if len(np.unique(y)) < 2:
        raise ValueError("temperature scaling needs real and fake images in the fitting data")

    def nll(log_t: float) -> float:
        s = z / math.exp(log_t)
        # -[y log sigmoid(s) + (1-y) log sigmoid(-s)], written with logaddexp for large |s|
        return float(np.mean(y * np.logaddexp(0.0, -s) + (1 - y) * np.logaddexp(0.0, s)))

    result = minimize_scalar(nll, bounds=LOG_T_RANGE, method="bounded", options={"xatol": 1e-6})
    return float(math.exp(result.x))


def threshold_at_fpr(real_scores, target_fpr: float) -> float:
    """Threshold t with share(real_scores > t) <= target_fpr, as low as the data allows."""
    if not 0.0 <= target_fpr < 1.0:
        raise ValueError(f"target FPR must lie in [0, 1), got {target_fpr}")
    scores = np.sort(np.asarray(real_scores, dtype=np.float64))[::-1]
    if len(scores) == 0:
        raise ValueError("choosing a threshold at a false-positive rate needs real images")
    return float(scores[int(math.floor(target_fpr * len(scores)))])


def rates_at(labels, scores, threshold: float) -> tuple[float, float]:
    """(FPR, TPR) of the verdict "fake when score > threshold"."""
    y = np.asarray(labels).astype(bool)
    flagged = np.asarray(scores, dtype=np.float64) > threshold
    fpr = float(flagged[~y].mean()) if (~y).any() else float("nan")
    tpr = float(flagged[y].mean()) if y.any() else float("nan")
    return fpr, tpr


def tpr_at_fpr(labels, scores, target_fpr: float) -> float:
    y = np.asarray(labels).astype(bool)
    if not y.any() or y.all():
        return float("nan")
    scores = np.asarray(scores, dtype=np.float64)
    return rates_at(y, scores, threshold_at_fpr(scores[~y], target_fpr))[1]


def expected_calibration_error(labels, prob, bins: int = ECE_BINS) -> float:
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(prob, dtype=np.float64)
    index = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            total += members.mean() * abs(y[members].mean() - p[members].mean())
    return float(total)


def brier_score(labels, prob) -> float:
    return float(np.mean((np.asarray(prob, dtype=np.float64) - np.asarray(labels, dtype=np.float64)) ** 2))


def calibration_metrics(labels, prob, target_fprs: Sequence[float] = TARGET_FPRS) -> dict:
    metrics = {
        "ece": expected_calibration_error(labels, prob),
        "brier": brier_score(labels, prob),
        "auc": roc_auc(np.asarray(labels), np.asarray(prob)),
    }
    for target in target_fprs:
        metrics[f"tpr@{operating_point_name(target)}"] = tpr_at_fpr(labels, prob, target)
    return metrics


def fit_calibration(labels, prob, fitted_on: dict, target_fprs: Sequence[float] = TARGET_FPRS) -> Calibration:
    """Held-out labels and raw fake probabilities -> a record: temperature, one operating point per
    target FPR, verdict "fake" above the strictest and "real" at or below the loosest."""
    if not target_fprs:
        raise ValueError("give at least one target false-positive rate")
    y = np.asarray(labels).astype(bool)
    temperature = fit_temperature(y, prob)
    calibrated = scale_probabilities(prob, temperature)
    points = []
    for target in sorted(set(target_fprs)):
        threshold = threshold_at_fpr(calibrated[~y], target)
        fpr, tpr = rates_at(y, calibrated, threshold)
        points.append(OperatingPoint(operating_point_name(target), target, threshold, fpr, tpr))
    fitted_on = {**fitted_on, "images": int(len(y)), "real": int((~y).sum()), "fake": int(y.sum())}
    return Calibration.create(temperature, points, points[0].name, points[-1].name, fitted_on)


def calibration_report(labels, prob, record: Calibration) -> dict:
    """Before/after metrics of a record on labelled data, and what its operating points do there."""
    y = np.asarray(labels).astype(bool)
    raw = np.asarray(prob, dtype=np.float64)
    calibrated = record.calibrate(raw)
    verdicts = record.verdicts(calibrated)
    points = {}
    for op in record.operating_points:
        fpr, tpr = rates_at(y, calibrated, op.threshold)
        points[op.name] = {"threshold": op.threshold, "target_fpr": op.target_fpr, "fpr": fpr, "tpr": tpr}
    shares = {
        side: {
            v: float(np.mean(verdicts[mask] == v)) if mask.any() else float("nan")
            for v in ("real", "uncertain", "fake")
        }
        for side, mask in (("real images", ~y), ("fake images", y))
    }
    return {
        "temperature": record.temperature,
        "record_sha256": record.sha256,
        "images": int(len(y)),
        "real_images": int((~y).sum()),
        "before": calibration_metrics(y, raw),
        "after": calibration_metrics(y, calibrated),
        "operating_points": points,
        "band": {"real_at_or_below": record.band[0], "fake_above": record.band[1]},
        "verdict_shares": shares,
    }


# An operating point at target FPR f is only as good as the real images behind it: at least this many of
# them above its threshold on the fitting half, i.e. ceil(MIN_FALSE_POSITIVES / f) real images.
MIN_FALSE_POSITIVES = 5


def calibration_check(report: dict, record: Calibration) -> dict:
    """Whether a fitted record holds on the checking half (report: calibration_report of it there).

    It fails when it makes ECE or Brier worse, when a point had too few real images to be fitted, when a
    point's measured FPR exceeds its target by more than two binomial standard deviations of the check's
    real images, or when its points collapse onto one threshold (no uncertain band)."""
    problems = []
    for metric in ("ece", "brier"):
        before, after = report["before"][metric], report["after"][metric]
        if after > before:
            problems.append(f"{metric} worse after calibration ({before:.4f} -> {after:.4f})")
    real_fit = int(record.fitted_on.get("real", 0))
    real_check = report["real_images"]
    points = {}
    for op in record.operating_points:
        needed = math.ceil(MIN_FALSE_POSITIVES / op.target_fpr) if op.target_fpr > 0 else real_fit + 1
        measured = report["operating_points"][op.name]["fpr"]
        allowed = op.target_fpr + 2 * math.sqrt(op.target_fpr * (1 - op.target_fpr) / max(real_check, 1))
        points[op.name] = {"target_fpr": op.target_fpr, "measured_fpr": measured, "allowed_fpr": allowed,
                           "real_images": real_fit, "needed_real_images": needed}  # fmt: skip
        if real_fit < needed:
            problems.append(f"{op.name}: fitted on {real_fit} real images, needs at least {needed}")
        if measured is not None and not math.isnan(measured) and measured > allowed:
            problems.append(f"{op.name}: measured FPR {measured:.3f} on the check half, above {allowed:.3f}")
    if len(record.operating_points) > 1 and record.band[0] == record.band[1]:
        problems.append(f"the operating points collapse onto one threshold ({record.band[1]:.4f}): no uncertain band")
    return {"passed": not problems, "problems": problems, "points": points,
            "ece": [report["before"]["ece"], report["after"]["ece"]],
            "brier": [report["before"]["brier"], report["after"]["brier"]]}  # fmt: skip


def format_calibration(report: dict) -> str:
    """The before/after table and the operating points as Markdown."""
    keys = list(report["before"])
    lines = ["| metric | before | after |", "|---|---|---|"]
    for key in keys:
        lines.append(f"| {key} | {_num(report['before'][key])} | {_num(report['after'][key])} |")
    lines += ["", f"temperature {report['temperature']:.4f}; record sha256 {report['record_sha256'][:12]}", ""]
    lines += ["| operating point | threshold (calibrated) | FPR | TPR |", "|---|---|---|---|"]
    for name, op in report["operating_points"].items():
        lines.append(f"| {name} | {op['threshold']:.4f} | {_num(op['fpr'])} | {_num(op['tpr'])} |")
    band = report["band"]
    lines += [
        "",
        f"verdict: real if p <= {band['real_at_or_below']:.4f}, fake if p > {band['fake_above']:.4f}, else uncertain",
        "",
        "| images | real | uncertain | fake |",
        "|---|---|---|---|",
    ]
    for side, share in report["verdict_shares"].items():
        lines.append(f"| {side} | {_num(share['real'])} | {_num(share['uncertain'])} | {_num(share['fake'])} |")
    return "\n".join(lines)


def _num(v: float) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def save_reliability_diagram(labels, prob, record: Calibration, path: str | Path, title: str = "") -> None:
    """Reliability diagram (fraction fake vs mean predicted, per bin) before and after, with bin counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from maskclip_runtime.kernel.atomic import atomic_path

    y = np.asarray(labels, dtype=np.float64)
    raw = np.asarray(prob, dtype=np.float64)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.5, 6.5), height_ratios=(3, 1), sharex=True)
    top.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    edges = np.linspace(0, 1, ECE_BINS + 1)
    for name, p, colour in (
        ("raw", raw, "tab:red"),
        (f"T = {record.temperature:.2f}", record.calibrate(raw), "tab:blue"),
    ):
        index = np.minimum((p * ECE_BINS).astype(int), ECE_BINS - 1)
        used = [b for b in range(ECE_BINS) if (index == b).any()]
        mean_p = [p[index == b].mean() for b in used]
        frac = [y[index == b].mean() for b in used]
        ece = expected_calibration_error(y, p)
        top.plot(mean_p, frac, "o-", color=colour, label=f"{name} (ECE {ece:.3f})")
        bottom.hist(p, bins=edges, histtype="step", color=colour)
    low, high = record.band
    top.axvspan(low, high, color="orange", alpha=0.15, label="uncertain band")
    top.set_ylabel("fraction fake")
    top.set_title(title or "reliability (fake probability)")
    top.legend(loc="upper left", fontsize=8)
    bottom.set_yscale("log")
    bottom.set_xlabel("predicted fake probability")
    bottom.set_ylabel("images")
    fig.tight_layout()
    with atomic_path(path) as temp:
        fig.savefig(temp, format="png", dpi=120)
    plt.close(fig)


def split_holdout(samples: list[Sample], fit_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Samples -> (fit, check): a seeded split, stratified by generator and label, disjoint."""
    if not 0.0 < fit_fraction < 1.0:
        raise ValueError(f"--fit-fraction must lie in (0, 1), got {fit_fraction}")
    rng = np.random.default_rng(seed)
    groups: dict[tuple[str, int], list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault((s.generator, s.label), []).append(i)
    fit_ids: set[int] = set()
    for key in sorted(groups):
        ids = groups[key]
        chosen = rng.permutation(len(ids))[: int(round(fit_fraction * len(ids)))]
        fit_ids.update(ids[j] for j in chosen)
    fit = [s for i, s in enumerate(samples) if i in fit_ids]
    check = [s for i, s in enumerate(samples) if i not in fit_ids]
    return fit, check
