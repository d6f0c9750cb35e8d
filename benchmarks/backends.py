"""The backends a row can measure, and a Session over each: an exported artifact through the runtime's
Detector (ONNX Runtime or TensorRT), or PyTorch (pytorch.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maskclip_runtime.contract.precision_table import ONNXRUNTIME, OPENVINO, PRECISIONS, TENSORRT
from maskclip_runtime.kernel.devices import parse_device
from maskclip_runtime.kernel.preprocess import load_image, preprocess_batch, resize_probability_map

from .artifacts import gate_parity

#: backend id -> (runtime, precision); "torch" is the PyTorch eager fp32 baseline. Reduced-precision
#: PyTorch rows run under autocast (mixed precision, like the fp16 graphs: the model's own fp32 casts
#: stay); "-graph" rows replay one captured CUDA graph per batch size (CUDA only). The artifact rows
#: are the precision table's: one per precision and backend its graphs may go to, a precision named after
#: its one runtime without that suffix (int8-openvino on OpenVINO: "ov-int8").
RUNTIME_PREFIXES = {ONNXRUNTIME: "ort", TENSORRT: "trt", OPENVINO: "ov"}
BACKENDS = {
    "torch": ("torch", "fp32"),
    "torch-fp16": ("torch", "fp16"),
    "torch-bf16": ("torch", "bf16"),
    "torch-graph": ("torch-cudagraph", "fp32"),
    "torch-fp16-graph": ("torch-cudagraph", "fp16"),
    "torch-bf16-graph": ("torch-cudagraph", "bf16"),
    **{
        f"{RUNTIME_PREFIXES[runtime]}-{row.name.removesuffix('-' + runtime)}": (runtime, row.name)
        for runtime in RUNTIME_PREFIXES
        for row in PRECISIONS.values()
        if runtime in row.backends
    },
}
#: What maskclip-bench runs unless told: the eager baseline and every artifact row.
DEFAULT_BACKENDS = ("torch", *(name for name, (runtime, _) in BACKENDS.items() if runtime in RUNTIME_PREFIXES))


@dataclass
class Session:
    """A loaded backend: forward(batch [B,3,S,S] float32) -> (fake_prob [B], mask probability [B,S,S])."""

    forward: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    close: Callable[[], None]
    artifact_mb: float | None = None
    build_s: float | None = None
    ran_on: str | None = None  # what actually ran ("onnxruntime-cpu" after an ORT CUDA fallback)


def end_to_end(session: Session, paths: Sequence[Path], spec, threshold: float) -> list[tuple[float, np.ndarray]]:
    """Decode + preprocess + forward + resize each mask to its image's size: what a caller gets."""
    images = [load_image(p) for p in paths]
    fake_prob, masks = session.forward(preprocess_batch(images, spec))
    return [
        (float(p), resize_probability_map(m, img.width, img.height) > threshold)
        for p, m, img in zip(fake_prob, masks, images, strict=True)
    ]


def artifact_session(artifact_dir: Path, runtime: str, device: str, batch: int) -> Session:
    from maskclip_runtime.contract.artifact import load_artifact
    from maskclip_runtime.detect.detector import Detector

    if runtime == "tensorrt" and not parse_device(device).gpu:
        device = "cuda"  # engines only run on a GPU, whatever the other rows use
    # A refused artifact is timed anyway and its row says so: its self-check would only repeat the refusal.
    refused = gate_parity(artifact_dir, runtime).get("passed") is False
    detector = Detector(artifact_dir, backend=runtime, device=device, batch=batch, self_check=not refused)
    files = load_artifact(artifact_dir).manifest.files
    used = (
        [f for f in files if f.endswith(".engine")]
        if runtime == "tensorrt"
        else [f for f in files if "engine" not in f]
    )
    size_mb = sum((artifact_dir / f).stat().st_size for f in used) / 1e6
    return Session(detector.forward, detector.close, artifact_mb=size_mb, ran_on=detector.backend)
