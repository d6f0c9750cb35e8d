"""The backends a row can measure, and a Session over each: an exported artifact through the runtime's
Detector (ONNX Runtime or TensorRT), or PyTorch (pytorch.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maskclip_runtime.backends import registry
from maskclip_runtime.contract.precision_table import ONNXRUNTIME, PRECISIONS, TENSORRT
from maskclip_runtime.kernel.devices import parse_device
from maskclip_runtime.kernel.preprocess import load_image, preprocess_batch, resize_probability_map

from .artifacts import gate_parity

#: backend id -> (runtime, precision); "torch" is the PyTorch eager fp32 baseline. Reduced-precision
#: PyTorch rows run under autocast (mixed precision, like the fp16 graphs: the model's own fp32 casts
#: stay); "-graph" rows replay one captured CUDA graph per batch size (CUDA only). The artifact rows
#: are the precision table's: one per precision and backend its graphs may go to, a precision named after
#: its one runtime without that suffix (int8-openvino on OpenVINO: "ov-int8").
RUNTIME_PREFIXES = {backend.name: backend.short for backend in registry.backends().values()}


def row_name(runtime: str, precision: str) -> str:
    """ort-fp16, trt-int8, ov-int8 (int8-openvino: a precision named after its one runtime loses that suffix)."""
    return f"{RUNTIME_PREFIXES[runtime]}-{precision.removesuffix('-' + runtime)}"


BACKENDS = {
    "torch": ("torch", "fp32"),
    "torch-fp16": ("torch", "fp16"),
    "torch-bf16": ("torch", "bf16"),
    "torch-graph": ("torch-cudagraph", "fp32"),
    "torch-fp16-graph": ("torch-cudagraph", "fp16"),
    "torch-bf16-graph": ("torch-cudagraph", "bf16"),
    **{
        row_name(runtime, row.name): (runtime, row.name)
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


def end_to_end(
    session: Session, paths: Sequence[Path], spec, threshold: float
) -> tuple[list[tuple[float, np.ndarray]], float]:
    """Decode + preprocess + forward + resize each mask to its image's size: what a caller gets; and the
    forward pass's own ms within the call (the model-only time, measured in the same call)."""
    images = [load_image(p) for p in paths]
    batch = preprocess_batch(images, spec)
    started = time.perf_counter()
    fake_prob, masks = session.forward(batch)
    forward_ms = (time.perf_counter() - started) * 1e3
    results = [
        (float(p), resize_probability_map(m, img.width, img.height) > threshold)
        for p, m, img in zip(fake_prob, masks, images, strict=True)
    ]
    return results, forward_ms


@dataclass(frozen=True)
class ExistingArtifact:
    """An artifact folder (or manifest.json) or an engine file given to maskclip-bench: benchmarked as it
    is, with its recorded precision and gate, never re-exported. rows: the backends of its own files."""

    given: Path
    dir: Path
    rows: tuple[str, ...]  # ort-<graph precision> where ONNX Runtime may run it; trt-<engine precision>
    batch: object  # its BatchSpec
    config: dict  # the model config it was exported from
    preprocess: object  # its PreprocessSpec
    threshold: float
    export_s: float  # recorded export time (and engine build time, for the trt row)
    build_s: float


def existing_artifact(path: Path) -> ExistingArtifact | None:
    """What `path` is, if it is an artifact or engine file (loaded and checked: ArtifactError / EngineFileError,
    status 2, on anything wrong); None for anything else (a checkpoint, a config name)."""
    from maskclip_runtime.contract.artifact import load_artifact
    from maskclip_runtime.contract.engine_header import read_engine_metadata
    from maskclip_runtime.contract.manifest import MANIFEST_NAME, ArtifactError

    if path.suffix == ".engine":
        read_engine_metadata(path)
        artifact = load_artifact(path.parent)
        engine = next((e for e in artifact.manifest.engines if e.file == path.name), None)
        if engine is None:
            raise ArtifactError(f"{path}: its artifact {path.parent} does not list this engine (stray or renamed file)")
        rows = (row_name(TENSORRT, engine.precision),)
    elif path.is_dir() and (path / MANIFEST_NAME).is_file() or path.name == MANIFEST_NAME:
        artifact = load_artifact(path)
        rows = tuple(
            row_name(runtime, precision)
            for runtime, precision in (
                (ONNXRUNTIME, artifact.precision),
                *((TENSORRT, e.precision) for e in artifact.manifest.engines[:1]),
            )
            if runtime in PRECISIONS[precision].backends
        )
    else:
        return None
    manifest = artifact.manifest
    return ExistingArtifact(
        given=path,
        dir=artifact.dir,
        rows=rows,
        batch=artifact.batch,
        config=manifest.config,
        preprocess=artifact.preprocess,
        threshold=artifact.threshold,
        export_s=float(sum(manifest.export_seconds.values())),
        build_s=float(sum(e.build_seconds for e in manifest.engines)),
    )


def artifact_session(artifact_dir: Path, runtime: str, device: str, batch: int) -> Session:
    from maskclip_runtime.contract.artifact import load_artifact
    from maskclip_runtime.detect.detector import Detector

    backend = registry.get(runtime)
    if backend.gpu_only and not parse_device(device).gpu:
        device = "cuda"  # e.g. engines only run on a GPU, whatever the other rows use
    # A refused artifact is timed anyway and its row says so: its self-check would only repeat the refusal.
    refused = gate_parity(artifact_dir, runtime).get("passed") is False
    detector = Detector(artifact_dir, backend=runtime, device=device, batch=batch, self_check=not refused)
    used = backend.model_files(load_artifact(artifact_dir))
    size_mb = sum((artifact_dir / f).stat().st_size for f in used) / 1e6
    return Session(detector.forward, detector.close, artifact_mb=size_mb, ran_on=detector.backend)
