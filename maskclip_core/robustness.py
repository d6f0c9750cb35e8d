"""Robustness report: the same evaluation under the degradations an upload pipeline applies.

Each condition degrades every image at its native size, before the shared preprocessing, through
`maskclip_core.evaluate.collect` (so a checkpoint and an exported artifact are scored by the same
code). Photometric conditions (re-encoding, blur, noise) leave the ground-truth mask untouched;
geometric ones (downscale, centre crop) transform image and mask alike, the mask with nearest
neighbour so it stays binary. The metrics are EVALUATION.md's, per generator and AVG.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from maskclip_core.data import Sample
from maskclip_core.evaluate import Perturb, Predictor, collect, without_nan
from maskclip_core.metrics import _fmt
from maskclip_runtime.kernel.atomic import atomic_path, write_text_atomic

METRICS = (  # summary key, label
    ("auc", "image AUC"),
    ("acc", "image Acc"),
    ("det_f1", "image F1"),
    ("f1", "pixel F1"),
    ("iou", "pixel IoU"),
)


def _reencode(image, mask, rng, quality: int, format: str):
    # Pillow, as upload pipelines re-encode: not augment.jpeg, which copies a training library's
    # OpenCV call that takes RGB for BGR.
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format=format, quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB")), mask


def _blur(image, mask, rng, sigma: float):
    return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101), mask


def _noise(image, mask, rng, sigma: float):
    noisy = image.astype(np.float32) + rng.normal(0.0, sigma, image.shape).astype(np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8), mask


def _downscale(image, mask, rng, factor: float):
    h, w = mask.shape
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    # INTER_AREA: what image pipelines use to shrink (no aliasing); nearest keeps the mask binary.
    image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return image, cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)


def _centre_crop(image, mask, rng, fraction: float):
    h, w = mask.shape
    ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
    top, left = (h - ch) // 2, (w - cw) // 2
    return image[top : top + ch, left : left + cw], mask[top : top + ch, left : left + cw]


@dataclass(frozen=True)
class Condition:
    """One degradation: family and level (the plot's axis), whether it moves pixels, and the function."""

    name: str
    family: str
    level: float
    geometric: bool
    apply: Perturb


# Plot panels: (title, x-axis label, the level that means "not degraded", families drawn, marker each).
# The clean score is drawn at that level: at quality 100 it stands for "not re-encoded", not a JPEG-100 run.
PANELS = (
    ("re-encoding", "quality (JPEG circles, WebP squares; 100: clean)", 100.0, {"jpeg": "o", "webp": "s"}),
    ("downscale", "scale factor", 1.0, {"downscale": "o"}),
    ("Gaussian blur", "sigma (px)", 0.0, {"blur": "o"}),
    ("Gaussian noise", "sigma (0-255)", 0.0, {"noise": "o"}),
    ("centre crop", "side kept", 1.0, {"crop": "o"}),
)

CONDITIONS = (
    Condition("jpeg-95", "jpeg", 95, False, partial(_reencode, quality=95, format="JPEG")),
    Condition("jpeg-75", "jpeg", 75, False, partial(_reencode, quality=75, format="JPEG")),
    Condition("jpeg-50", "jpeg", 50, False, partial(_reencode, quality=50, format="JPEG")),
    Condition("webp-80", "webp", 80, False, partial(_reencode, quality=80, format="WEBP")),
    Condition("downscale-0.75", "downscale", 0.75, True, partial(_downscale, factor=0.75)),
    Condition("downscale-0.5", "downscale", 0.5, True, partial(_downscale, factor=0.5)),
    Condition("blur-1", "blur", 1.0, False, partial(_blur, sigma=1.0)),
    Condition("blur-2", "blur", 2.0, False, partial(_blur, sigma=2.0)),
    Condition("noise-3", "noise", 3.0, False, partial(_noise, sigma=3.0)),
    Condition("noise-8", "noise", 8.0, False, partial(_noise, sigma=8.0)),
    Condition("crop-0.8", "crop", 0.8, True, partial(_centre_crop, fraction=0.8)),
)
CLEAN = "clean"


def stratified_subset(samples: list[Sample], per_generator: int | None) -> list[Sample]:
    """The first `per_generator` images of each generator, real/partial/full in their data-set proportions.

    Taken per (generator, kind) in data-set order, so the subset is the same on every run.
    """
    if per_generator is None:
        return samples
    by_generator: dict[str, list[Sample]] = {}
    for s in samples:
        by_generator.setdefault(s.generator, []).append(s)
    chosen = []
    for items in by_generator.values():
        share = min(1.0, per_generator / len(items))
        by_kind: dict[str, list[Sample]] = {}
        for s in items:
            by_kind.setdefault(s.kind, []).append(s)
        for group in by_kind.values():
            chosen.extend(group[: max(1, round(share * len(group)))])
    keep = {id(s) for s in chosen}
    return [s for s in samples if id(s) in keep]


def robustness(
    predictor: Predictor, samples: list[Sample], batch_size: int = 16, workers: int = 0, conditions=CONDITIONS
) -> dict:
    """Evaluate clean and under every condition -> {name: {family, level, metrics: summary}} (clean first)."""
    summary = collect(predictor, samples, batch_size, workers, desc=CLEAN).summary()
    results = {CLEAN: {"family": CLEAN, "level": None, "geometric": False, "metrics": summary}}
    for c in conditions:
        summary = collect(predictor, samples, batch_size, workers, perturb=c.apply, desc=c.name).summary()
        results[c.name] = {"family": c.family, "level": c.level, "geometric": c.geometric, "metrics": summary}
    return results


def robustness_report(results: dict, **context) -> dict:
    return {**context, "conditions": without_nan(results), "markdown": format_robustness(results)}


def format_robustness(results: dict) -> str:
    """AVG over generators for every condition, then one table per metric with every generator."""
    clean = results[CLEAN]["metrics"]["AVG"]
    lines = ["### AVG over generators (change vs clean in brackets)", ""]
    lines.append("| condition | " + " | ".join(label for _, label in METRICS) + " |")
    lines.append("|---|" + "---|" * len(METRICS))
    for name, result in results.items():
        avg = result["metrics"]["AVG"]
        cells = [_cell(avg[k], None if name == CLEAN else avg[k] - clean[k]) for k, _ in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    generators = list(results[CLEAN]["metrics"])
    for key, label in METRICS:
        lines += ["", f"### {label} per generator", ""]
        lines.append("| condition | " + " | ".join(generators) + " |")
        lines.append("|---|" + "---|" * len(generators))
        for name, result in results.items():
            row = result["metrics"]
            lines.append(f"| {name} | " + " | ".join(_fmt(row[g][key]) if g in row else "-" for g in generators) + " |")
    return "\n".join(lines)


def _cell(value: float, delta: float | None) -> str:
    if delta is None or math.isnan(delta):
        return _fmt(value)
    return f"{_fmt(value)} ({delta:+.3f})"


def save_robustness_plot(results: dict, path: str | Path, title: str = "") -> None:
    """One panel per degradation: AVG metrics against severity, starting from the clean score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5), sharey=True)
    clean = results[CLEAN]["metrics"]["AVG"]
    colours = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")
    for ax, (panel, axis_label, clean_level, families) in zip(axes.flat, PANELS, strict=False):
        for (key, label), colour in zip(METRICS, colours, strict=True):
            for index, (family, marker) in enumerate(families.items()):
                levels = sorted(
                    (r["level"], r["metrics"]["AVG"][key]) for r in results.values() if r["family"] == family
                )
                points = sorted([(clean_level, clean[key]), *levels]) if index == 0 else levels
                xs, ys = zip(*points, strict=True)
                style = "-" if index == 0 else "none"
                ax.plot(xs, ys, marker=marker, linestyle=style, color=colour, label=label if index == 0 else None)
        if clean_level > 0:  # quality and scale: severity grows as the level falls
            ax.invert_xaxis()
        ax.set_title(panel)
        ax.set_xlabel(axis_label)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("AVG over generators")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    axes.flat[-1].axis("off")
    axes.flat[-1].legend(handles, labels, loc="center", title="metric")
    fig.suptitle(title or "robustness: metric vs severity")
    fig.tight_layout()
    with atomic_path(path) as temp:
        fig.savefig(temp, format="png", dpi=110)
    plt.close(fig)


def save_robustness(doc: dict, results: dict, json_path: str | Path, title: str = "") -> list[Path]:
    """JSON at json_path, Markdown and PNG beside it (same stem) -> the three paths."""
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    md_path, png_path = json_path.with_suffix(".md"), json_path.with_suffix(".png")
    write_text_atomic(json_path, json.dumps(doc, indent=2) + "\n")
    header = [f"# {title or 'Robustness report'}", ""]
    header += [f"- {k}: {v}" for k, v in doc.items() if k not in ("conditions", "markdown")]
    write_text_atomic(md_path, "\n".join([*header, "", doc["markdown"], ""]))
    save_robustness_plot(results, png_path, title)
    return [json_path, md_path, png_path]
