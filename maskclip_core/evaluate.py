"""Evaluation: any predictor, the same data pipeline and the same metric code (EVALUATION.md).

A predictor maps a preprocessed batch float32 [B,3,S,S] to (fake_prob [B], mask_prob [B,S',S']).
`TorchPredictor` wraps a PyTorch MaskCLIP; `ArtifactPredictor` wraps an exported artifact through
maskclip_runtime's Detector (imported lazily), so a deployed model is scored exactly like its
checkpoint. Images are preprocessed with the predictor's own PreprocessSpec; masks are scored at
that size (the model's image size: 512 for the paper's model), except with `collect_tiled`, which scores
an artifact's tiled masks at each image's own size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from maskclip_core.data import MaskCLIPDataset, Sample
from maskclip_core.data.samples import load_sample
from maskclip_core.metrics import MetricAccumulator, format_table
from maskclip_core.model import MaskCLIP
from maskclip_runtime.kernel.preprocess import PreprocessSpec, resize_probability_map

# (image HxWx3 uint8, mask HxW uint8, rng) -> degraded pair, at the image's native size
Perturb = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


class Predictor(Protocol):
    spec: PreprocessSpec
    threshold: float
    name: str

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class TorchPredictor:
    """A PyTorch MaskCLIP as a predictor (eval mode, inference mode)."""

    def __init__(self, model: MaskCLIP, device: str | torch.device = "cpu", name: str = "pytorch"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.spec = model.preprocess_spec()
        self.threshold = model.config.threshold
        self.name = name

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.model(torch.from_numpy(images).to(self.device))
        return out["fake_prob"].float().cpu().numpy(), out["mask_prob"][:, 0].float().cpu().numpy()  # [B], [B,S,S]


class ArtifactPredictor:
    """An exported artifact run by maskclip_runtime's Detector (ONNX Runtime or TensorRT)."""

    def __init__(self, path: str | Path, backend: str = "auto", device: str | None = None):
        from maskclip_runtime.detect.detector import Detector

        self.detector = Detector(path, backend=backend, device=device)
        self.spec = self.detector.artifact.preprocess
        self.threshold = self.detector.threshold
        self.name = f"artifact:{self.detector.backend}"

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, masks = [], []
        for start in range(0, len(images), self.detector.batch_size):
            p, m = self.detector.forward(images[start : start + self.detector.batch_size])
            probs.append(p)
            masks.append(m)
        return np.concatenate(probs), np.concatenate(masks)


def _collate(items: list[dict]) -> dict:
    return {
        "image": np.stack([it["image"].numpy() for it in items]),
        "mask": [it["mask"][0].numpy() for it in items],
        "label": [int(it["label"]) for it in items],
        "generator": [it["generator"] for it in items],
        "kind": [it["kind"] for it in items],
    }


def evaluate(predictor: Predictor, samples: list[Sample], batch_size: int = 16, workers: int = 0) -> dict:
    """Score a predictor on samples -> summary {generator: {iou, f1, acc, det_f1, auc, ...}, "AVG": ...}."""
    return collect(predictor, samples, batch_size, workers).summary()


def collect(
    predictor: Predictor,
    samples: list[Sample],
    batch_size: int = 16,
    workers: int = 0,
    perturb: Perturb | None = None,
    desc: str = "evaluate",
) -> MetricAccumulator:
    """Run a predictor over samples (each optionally perturbed at native size) -> the filled accumulator."""
    dataset = MaskCLIPDataset(samples, predictor.spec, perturb=perturb)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_collate)
    size = predictor.spec.size
    acc = MetricAccumulator(predictor.threshold)
    for batch in tqdm(loader, desc=desc, dynamic_ncols=True):
        fake_prob, mask_prob = predictor(batch["image"])
        for i, prob in enumerate(fake_prob):
            kind = batch["kind"][i]
            pred = mask_prob[i]
            if kind == "partial" and pred.shape != (size, size):
                pred = resize_probability_map(pred, size, size)
            acc.update(batch["generator"][i], batch["label"][i], float(prob), kind, pred, batch["mask"][i])
    return acc


def collect_tiled(detector, samples: list[Sample], desc: str = "evaluate (tiles)") -> MetricAccumulator:
    """Score an artifact with native-resolution masks (maskclip-run --tiles): verdicts from the global view,
    each partial fake's mask stitched from model-size tiles (maskclip_runtime.detect.tiling) and scored against
    its ground truth at the image's own size. Images no larger than the model input keep the global mask."""
    from maskclip_runtime.detect.tiling import detect_tiled

    acc = MetricAccumulator(detector.threshold)
    with tqdm(total=len(samples), desc=desc, dynamic_ncols=True) as progress:
        for start in range(0, len(samples), detector.batch_size):
            chunk = samples[start : start + detector.batch_size]
            loaded = [load_sample(sample) for sample in chunk]
            photos = [Image.fromarray(image) for image, _ in loaded]
            # Only partial fakes are scored on their mask: the others skip the mask (and, cascaded, the localise graph).
            policies = ["all" if sample.is_partial_fake else "none" for sample in chunk]
            detections = detector.detect_prepared([detector.prepare(photo) for photo in photos], policies)
            for sample, photo, (_, truth), detection in zip(chunk, photos, loaded, detections, strict=True):
                mask = detect_tiled(detector, photo, detection).mask if sample.is_partial_fake else None
                acc.update(sample.generator, sample.label, detection.fake_prob, sample.kind, mask, truth)
            progress.update(len(chunk))
    return acc


def report(summary: dict, **context) -> dict:
    """The JSON document `maskclip-eval` saves: context (model, data, ...) + the table + its text form."""
    clean = {
        g: {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for g, row in summary.items()
    }
    return {**context, "metrics": clean, "table": format_table(summary)}


def without_nan(value):
    """Nested dicts with NaN floats (undefined metrics) -> the same with None, for strict JSON."""
    if isinstance(value, dict):
        return {k: without_nan(v) for k, v in value.items()}
    return None if isinstance(value, float) and math.isnan(value) else value
