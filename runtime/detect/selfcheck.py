"""Self-check on the device: does this artifact, on this backend and this machine, still compute what
PyTorch computed?

The export gate proves an artifact on the machine that exported it. Int8 kernels differ between CPUs
(VNNI or not, x86 or ARM) and TensorRT picks its tactics per GPU, so the artifact carries a few
canary inputs (PNG at model resolution: no resize is involved) with PyTorch's outputs for them and
the precision's tolerances. The Detector runs them on the backend it built and refuses the artifact
when they disagree. A passed check is remembered per (artifact files, backend, device, host,
runtime versions), so it costs once per machine, not per run.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..contract.artifact import ArtifactError
from ..errors import VerificationFailed
from ..kernel.atomic import write_text_atomic
from ..kernel.host import current_host

if TYPE_CHECKING:
    from .detector import Detector

CACHE_ENV = "MASKCLIP_CACHE_DIR"
CACHE_FILE = "self-check.json"
MAX_CACHE_ENTRIES = 256


class SelfCheckFailed(VerificationFailed, ArtifactError):
    """The artifact's canaries disagree with PyTorch on this backend and device beyond the tolerances."""

    def __init__(self, message: str, result: SelfCheckResult):
        super().__init__(message)
        self.result = result


@dataclass
class SelfCheckResult:
    status: str  # "passed", "failed", "skipped" (opted out), "unavailable" (artifact has no canaries)
    backend: str = ""
    device: str = ""
    host: str = ""
    cached: bool = False
    seconds: float = 0.0
    canaries: int = 0
    max_prob_diff: float | None = None
    mask_iou_worst: float | None = None
    mask_pixel_agreement_min: float | None = None
    failures: list[str] = field(default_factory=list)
    per_canary: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def self_check(detector: Detector, use_cache: bool = True) -> SelfCheckResult:
    """Run the artifact's canaries through the detector's backend; raise SelfCheckFailed if they disagree."""
    spec = detector.artifact.manifest.self_check
    if not spec:
        return SelfCheckResult("unavailable", detector.backend, detector.device, current_host().describe())
    key = _cache_key(detector)
    if use_cache and (hit := _cache_get(key)) is not None:
        return SelfCheckResult(**{**hit, "cached": True})
    result = _run(detector, spec)
    if not result.passed:
        raise SelfCheckFailed(
            f"self-check failed on {result.backend} {result.device} ({result.host}): {'; '.join(result.failures)}; "
            f"this machine does not compute what PyTorch computed for this artifact (--no-self-check to run anyway)",
            result,
        )
    if use_cache:
        _cache_put(key, result)
    return result


def _run(detector: Detector, spec: dict) -> SelfCheckResult:
    started = time.perf_counter()
    directory = detector.artifact.dir
    tolerances = spec["tolerances"]
    threshold = float(spec["threshold"])
    canaries = spec["canaries"]
    images = [_load_png(directory / c["image"]) for c in canaries]
    tensors = np.stack([detector.prepare(image).tensor for image in images])
    probs, masks = [], []
    for start in range(0, len(tensors), detector.batch_size):
        prob, mask = detector.forward(tensors[start : start + detector.batch_size])
        probs.append(prob)
        masks.append(mask)
    prob, mask = np.concatenate(probs), np.concatenate(masks)
    per_canary = []
    for canary, p, m in zip(canaries, prob, mask, strict=True):
        reference = np.asarray(_load_png(directory / canary["mask"]).convert("L")) > 127
        candidate = m > threshold
        union = np.logical_or(reference, candidate).sum()
        iou = float(np.logical_and(reference, candidate).sum() / union) if union else 1.0
        per_canary.append(
            {
                "image": canary["image"],
                "reference_fake_prob": float(canary["fake_prob"]),
                "fake_prob": float(p),
                "prob_diff": abs(float(p) - float(canary["fake_prob"])),
                "mask_iou": iou,
                "iou_gated": bool(reference.mean() >= tolerances["iou_min_reference_area"]),
                "mask_pixel_agreement": float((reference == candidate).mean()),
            }
        )
    max_diff = max(c["prob_diff"] for c in per_canary)
    gated = [c["mask_iou"] for c in per_canary if c["iou_gated"]]
    worst_iou = min(gated, default=1.0)
    agreement = min(c["mask_pixel_agreement"] for c in per_canary)
    failures = []
    if not max_diff <= tolerances["max_prob_diff"]:
        failures.append(f"max |fake_prob - PyTorch| {max_diff:.3g} > {tolerances['max_prob_diff']:g}")
    if tolerances.get("min_worst_mask_iou") is not None and not worst_iou >= tolerances["min_worst_mask_iou"]:
        failures.append(f"worst mask IoU {worst_iou:.3f} < {tolerances['min_worst_mask_iou']:g}")
    if tolerances.get("min_pixel_agreement") is not None and not agreement >= tolerances["min_pixel_agreement"]:
        failures.append(f"worst mask pixel agreement {agreement:.4f} < {tolerances['min_pixel_agreement']:g}")
    return SelfCheckResult(
        status="failed" if failures else "passed",
        backend=detector.backend,
        device=detector.device,
        host=current_host().describe(),
        seconds=round(time.perf_counter() - started, 3),
        canaries=len(per_canary),
        max_prob_diff=max_diff,
        mask_iou_worst=worst_iou,
        mask_pixel_agreement_min=agreement,
        failures=failures,
        per_canary=per_canary,
    )


def _load_png(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB") if image.mode not in ("1", "L") else image.copy()
    except OSError as exc:
        raise ArtifactError(f"{path}: unreadable self-check canary ({exc})") from None


# --- the cache of passed checks ----------------------------------------------------------------------
def _cache_path() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "maskclip"
    )
    return Path(root) / CACHE_FILE


def _cache_key(detector: Detector) -> str:
    """What the outcome depends on: the exact files, the backend and device, the host and the runtimes."""
    from .. import __version__

    files = detector.artifact.manifest.files
    parts = {
        "files": files,
        "backend": detector.backend,
        "device": detector.device,
        "host": current_host().to_dict(),
        "runtime": _package_versions(),
        "maskclip": __version__,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _package_versions() -> dict[str, str]:
    """Versions of the packages whose kernels ran the check (a new release may pick other kernels)."""
    from importlib import metadata

    versions = {}
    for package in ("onnxruntime", "onnxruntime-gpu", "tensorrt", "tensorrt-cu12", "tensorrt-cu13", "openvino"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _cache_read() -> dict:
    try:
        data = json.loads(_cache_path().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _cache_get(key: str) -> dict | None:
    entry = _cache_read().get(key)
    return entry if isinstance(entry, dict) and entry.get("status") == "passed" else None


def _cache_put(key: str, result: SelfCheckResult) -> None:
    """Best effort: an unwritable cache only means the check runs again next time."""
    path = _cache_path()
    entries = _cache_read()
    entries[key] = {k: v for k, v in result.to_dict().items() if k != "cached"}
    while len(entries) > MAX_CACHE_ENTRIES:
        entries.pop(next(iter(entries)))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(entries))
    except OSError:
        pass
