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
from typing import Protocol

import numpy as np
from PIL import Image

from ..backends import registry
from ..contract.artifact import Artifact, ArtifactError
from ..contract.precision_table import Tolerances
from ..errors import VerificationFailed
from ..kernel.atomic import write_text_atomic
from ..kernel.host import current_host
from .compare import compare, gate_failures

CACHE_ENV = "MASKCLIP_CACHE_DIR"
CACHE_FILE = "self-check.json"
MAX_CACHE_ENTRIES = 256


class Checked(Protocol):
    """What the self-check needs of a detector (detector.Detector is one; it calls the check, not back)."""

    artifact: Artifact
    backend: str
    device: str
    batch_size: int

    def prepare(self, image: Image.Image): ...  # -> an object with .tensor, float32 [3, S, S]

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class SelfCheckFailed(VerificationFailed, ArtifactError):
    """The artifact's canaries disagree with PyTorch on this backend and device beyond the tolerances."""

    def __init__(self, message: str, result: SelfCheckResult):
        super().__init__(message)
        self.result = result

    def __reduce__(self):  # picklable with its result: a Ray worker's refusal reaches maskclip-run's driver whole
        return type(self), (str(self), self.result)


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


def self_check(detector: Checked, use_cache: bool = True) -> SelfCheckResult:
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


def _run(detector: Checked, spec: dict) -> SelfCheckResult:
    started = time.perf_counter()
    directory = detector.artifact.dir
    canaries = spec["canaries"]
    images = [_load_png(directory / c["image"]) for c in canaries]
    tensors = np.stack([detector.prepare(image).tensor for image in images])
    probs, masks = [], []
    for start in range(0, len(tensors), detector.batch_size):
        prob, mask = detector.forward(tensors[start : start + detector.batch_size])
        probs.append(prob)
        masks.append(mask)
    reference = {  # PyTorch's outputs as the export stored them: the masks thresholded (1-bit PNG)
        "fake_prob": np.asarray([float(c["fake_prob"]) for c in canaries]),
        "mask": np.stack([np.asarray(_load_png(directory / c["mask"]).convert("L")) > 127 for c in canaries]),
    }
    candidate = {"fake_prob": np.concatenate(probs), "mask": np.concatenate(masks)}
    recorded = spec["tolerances"]
    names = [c["image"] for c in canaries]
    stats = compare(reference, candidate, names, float(spec["threshold"]), recorded["iou_min_reference_area"])
    failures = gate_failures(stats, _tolerances(recorded))
    return SelfCheckResult(
        status="failed" if failures else "passed",
        backend=detector.backend,
        device=detector.device,
        host=current_host().describe(),
        seconds=round(time.perf_counter() - started, 3),
        canaries=stats["images"],
        max_prob_diff=stats["max_prob_diff"],
        mask_iou_worst=stats["mask_iou_worst"],
        mask_pixel_agreement_min=stats["mask_pixel_agreement_min"],
        failures=failures,
        per_canary=stats["per_image"],
    )


def _tolerances(recorded: dict) -> Tolerances:
    """The precision's gate limits the export recorded for the canaries. Flips and the mean IoU are not
    judged on four canaries (one image is 25 %); max_prob_diff bounds the verdicts instead."""
    return Tolerances(
        max_prob_diff=recorded["max_prob_diff"],
        max_flip_rate=None,
        min_mask_iou=None,
        min_worst_mask_iou=recorded.get("min_worst_mask_iou"),
        min_pixel_agreement=recorded.get("min_pixel_agreement"),
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


def _cache_key(detector: Checked) -> str:
    """What the outcome depends on: the whole manifest (the files' hashes, and preprocessing, thresholds and
    canaries, which change the answers without changing a file), the backend and device, the host and the
    runtimes."""
    from .. import __version__

    parts = {
        "manifest": detector.artifact.manifest.to_dict(),
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
    for package in (package for backend in registry.backends().values() for package in backend.packages):
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
