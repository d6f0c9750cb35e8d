"""Metrics exactly as EVALUATION.md (IMDLBenCo's definitions behind the published numbers), plus AUC.

Localisation: per partially edited fake, threshold the probability map (> 0.5) at the model's
image size, count TP/FP/FN against the nearest-resized ground truth and take
P = TP/(TP+FP+1e-8), R = TP/(TP+FN+1e-8), F1 = 2PR/(P+R+1e-8), IoU = TP/(TP+FP+FN+1e-8);
the score is the MEAN OF PER-IMAGE values. Detection: positive = fake, accuracy and F1 over the
whole split (real + fake), AUC from fake_prob (rank-based, ties averaged). "AVG" is the plain
mean over generators.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

EPS = 1e-8


def pixel_f1_iou(prob: np.ndarray, gt: np.ndarray, threshold: float = 0.5) -> tuple[float, float]:
    """One image: probability map [H,W] and ground truth [H,W] {0,1} -> (F1, IoU)."""
    pred = np.asarray(prob) > threshold
    gt = np.asarray(gt) > 0.5
    tp = float(np.sum(pred & gt))
    fp = float(np.sum(pred & ~gt))
    fn = float(np.sum(~pred & gt))
    precision = tp / (tp + fp + EPS)
    recall = tp / (tp + fn + EPS)
    return 2 * precision * recall / (precision + recall + EPS), tp / (tp + fp + fn + EPS)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve = Mann-Whitney U / (n_pos n_neg), ties counted half; NaN with one class."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), np.float64)
    # Average rank (1-based) over each run of tied scores.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + 1 + e) / 2.0
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def detection_scores(labels: np.ndarray, fake_prob: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Image level, positive = fake: accuracy, F1 (0 when undefined) and AUC over the split."""
    labels = np.asarray(labels).astype(bool)
    pred = np.asarray(fake_prob) > threshold
    tp = int(np.sum(pred & labels))
    fp = int(np.sum(pred & ~labels))
    fn = int(np.sum(~pred & labels))
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return {"acc": float(np.mean(pred == labels)), "f1": f1, "auc": roc_auc(labels, fake_prob)}


class MetricAccumulator:
    """Collects per-image results by generator; `summary()` gives the published table's numbers."""

    def __init__(self, threshold: float = 0.5):
        self.threshold = threshold
        self.labels: dict[str, list[int]] = defaultdict(list)
        self.fake_prob: dict[str, list[float]] = defaultdict(list)
        self.pixel: dict[str, list[tuple[float, float]]] = defaultdict(list)

    def update(self, generator: str, label: int, fake_prob: float, kind: str, mask_prob=None, gt=None) -> None:
        """One image. mask_prob/gt [S,S] are needed only for partial fakes (kind == "partial")."""
        self.labels[generator].append(int(label))
        self.fake_prob[generator].append(float(fake_prob))
        if kind == "partial":
            self.pixel[generator].append(pixel_f1_iou(mask_prob, gt, self.threshold))

    def scores(self) -> tuple[np.ndarray, np.ndarray]:
        """All images' (labels, fake_prob), generators concatenated in sorted order."""
        gens = sorted(self.labels)
        labels = np.asarray([y for g in gens for y in self.labels[g]], dtype=np.int64)
        return labels, np.asarray([p for g in gens for p in self.fake_prob[g]], dtype=np.float64)

    def summary(self) -> dict[str, dict[str, float]]:
        """{generator: {iou, f1, acc, det_f1, auc, n_images, n_partial}, ..., "AVG": plain means}."""
        table = {}
        for gen in sorted(self.labels):
            pixel = np.asarray(self.pixel[gen], np.float64).reshape(-1, 2)
            det = detection_scores(np.asarray(self.labels[gen]), np.asarray(self.fake_prob[gen]), self.threshold)
            table[gen] = {
                "iou": float(pixel[:, 1].mean()) if len(pixel) else float("nan"),
                "f1": float(pixel[:, 0].mean()) if len(pixel) else float("nan"),
                "acc": det["acc"],
                "det_f1": det["f1"],
                "auc": det["auc"],
                "n_images": len(self.labels[gen]),
                "n_partial": len(pixel),
            }
        if table:
            keys = ("iou", "f1", "acc", "det_f1", "auc")
            table["AVG"] = {k: _nanmean([row[k] for row in table.values()]) for k in keys}
            table["AVG"]["n_images"] = sum(len(v) for v in self.labels.values())
            table["AVG"]["n_partial"] = sum(len(v) for v in self.pixel.values())
        return table


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _fmt(v: float) -> str:
    return "  -  " if math.isnan(v) else f"{v:.3f}".lstrip("0") if v < 1 else f"{v:.2f}"


def format_table(summary: dict[str, dict[str, float]]) -> str:
    """The published layout: localisation IoU/F1 and detection F1/Acc per generator + AVG, then AUC."""
    cols = list(summary)
    width = max([10, *(len(c) + 2 for c in cols)])
    head = "| " + "metric".ljust(16) + " | " + " | ".join(c.center(width) for c in cols) + " |"
    rule = "|" + "-" * 18 + "|" + "|".join("-" * (width + 2) for _ in cols) + "|"
    rows = [
        ("IoU / F1 (pixel)", lambda r: f"{_fmt(r['iou'])}/{_fmt(r['f1'])}"),
        ("F1 / Acc (image)", lambda r: f"{_fmt(r['det_f1'])}/{_fmt(r['acc'])}"),
        ("AUC (image)", lambda r: _fmt(r["auc"])),
    ]
    lines = [head, rule]
    for name, cell in rows:
        lines.append(f"| {name:<16} | " + " | ".join(cell(summary[c]).center(width) for c in cols) + " |")
    return "\n".join(lines)
