"""One export run: graphs -> precision -> TensorRT op check -> verification gate -> manifest -> install.

Everything is written into a staging folder beside the output and moved into place only when the gate
passes, so a failed or interrupted export never leaves something that looks like a valid artifact.
A failed gate keeps its graphs and report in `<out>.failed/` (without a manifest, so no runtime loads it).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from maskclip_core.model import MaskCLIP
from maskclip_runtime.artifact import MANIFEST_NAME, load_artifact
from maskclip_runtime.backends.onnxruntime import OnnxRuntimeRunner
from maskclip_runtime.detector import Detector
from maskclip_runtime.preprocess import load_image, preprocess_batch

from .canary import write_canaries
from .manifest import build_manifest, write_manifest
from .onnx_export import TOPOLOGY_GRAPHS, BatchSpec, GraphSpec, export_graphs, graph_specs, torch_reference
from .op_support import check_tensorrt_ops
from .precision import INT8_SCHEMES, FeedCalibrationReader, convert_to_fp16
from .verify import (
    GATES,
    MIN_VERIFICATION_IMAGES,
    batch_chunks,
    chain_predictor,
    image_paths,
    verification_images,
    verify,
)

PRECISIONS = ("fp32", "fp16", "int8", "int8-cpu")
INT8_PRECISIONS = tuple(INT8_SCHEMES)  # both calibrate
TOPOLOGIES = tuple(TOPOLOGY_GRAPHS)  # fused, split (clip/trunk/heads), cascade (screen/localise)
OPSET_RANGE = (17, 20)  # LayerNormalization needs 17; the TorchScript exporter stops at 20
FAILED_SUFFIX = ".failed"
FAILED_MANIFEST_NAME = "manifest.failed.json"  # a refused export's manifest: no runtime looks for it


class ExportError(RuntimeError):
    """A user-facing export failure; the message is one line."""


class GateFailed(ExportError):
    """The verification gate ran and rejected the export; the report is kept at `report_path`."""

    def __init__(self, message: str, report_path: Path):
        super().__init__(message)
        self.report_path = report_path


@dataclass(frozen=True)
class ExportOptions:
    out: Path
    precision: str = "fp32"
    topology: str = "fused"
    batch: BatchSpec = field(default_factory=BatchSpec)
    opset: int = 17
    calib: str | None = None
    calib_count: int = 32
    verify_images: str | None = None
    verify: bool = True

    def validate(self) -> None:
        """Reject invalid combinations up front, before anything is written."""
        if self.precision not in PRECISIONS:
            raise ExportError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.topology not in TOPOLOGIES:
            raise ExportError(f"topology must be one of {', '.join(TOPOLOGIES)}, got {self.topology!r}")
        if not OPSET_RANGE[0] <= self.opset <= OPSET_RANGE[1]:
            raise ExportError(f"--opset must be between {OPSET_RANGE[0]} and {OPSET_RANGE[1]}, got {self.opset}")
        if self.precision in INT8_PRECISIONS and not self.calib:
            raise ExportError(f"--{self.precision} needs calibration images: --calib DIR_OR_GLOB")
        if self.calib and self.precision not in INT8_PRECISIONS:
            raise ExportError("--calib is only used with --int8 / --int8-cpu")
        if self.calib_count < 1:
            raise ExportError(f"--calib-count must be >= 1, got {self.calib_count}")
        if self.verify_images and not self.verify:
            raise ExportError("--verify-images and --no-verify contradict each other")


@dataclass(frozen=True)
class ModelSource:
    """The model to export and where it came from (recorded in the manifest)."""

    model: MaskCLIP
    description: str  # checkpoint path, "embedded demo model", "random init (tiny)"
    weights_digest: str  # sha256 hex of the weights


class _Steps:
    """A progress bar over the export's steps (stderr), plus timestamps for the manifest."""

    def __init__(self, total: int, enabled: bool):
        self.bar = tqdm(total=total, desc="export", unit="step", file=sys.stderr, disable=not enabled, leave=False)
        self.timings: dict[str, float] = {}
        self._current: tuple[str, float] | None = None

    def start(self, name: str) -> None:
        self.finish()
        self.bar.set_description(name)
        self._current = (name, time.perf_counter())

    def start_export(self, graph: str) -> None:
        self.start(f"export {graph}")

    def finish(self) -> None:
        if self._current:
            name, started = self._current
            self.timings[name] = round(time.perf_counter() - started, 3)
            self.bar.update()
            self._current = None

    def close(self) -> None:
        self.finish()
        self.bar.close()


def calibration_paths(pattern: str, count: int) -> list[Path]:
    """Up to `count` image paths from a folder/glob; raises if there are none."""
    paths = image_paths(pattern)[:count]
    if not paths:
        raise ExportError(f"no calibration images found at {pattern!r}")
    return paths


def calibration_feeds(
    specs: tuple[GraphSpec, ...], fp32_paths: dict[str, Path], images: np.ndarray, batch: BatchSpec
) -> dict[str, list[dict[str, np.ndarray]]]:
    """Each graph's calibration inputs: images through the fp32 graphs before it (split: real CLIP maps).

    A dynamic graph is calibrated one image at a time: ORT's histogram calibrator (int8-cpu) stacks the
    batches and needs them all the same size, which a short last batch would break."""
    runners = [OnnxRuntimeRunner(fp32_paths[spec.name]) for spec in specs]
    feeds: dict[str, list[dict[str, np.ndarray]]] = {spec.name: [] for spec in specs}
    for chunk, _ in batch_chunks(images, BatchSpec(size=1, dynamic=True) if batch.dynamic else batch):
        tensors = {"image": chunk}
        for spec, runner in zip(specs, runners, strict=True):
            feed = {name: tensors[name] for name in spec.inputs}
            feeds[spec.name].append(feed)
            tensors.update(runner.infer(feed))
    for runner in runners:
        runner.close()
    return feeds


def _to_fp16(specs, fp32_paths: dict[str, Path], staging: Path, steps: _Steps) -> list[str]:
    fp32_ops: set[str] = set()
    for spec in specs:
        steps.start(f"fp16 {spec.name}")
        fp32_ops |= set(convert_to_fp16(fp32_paths[spec.name], staging / spec.file))
    return sorted(fp32_ops)


def _to_int8(
    options: ExportOptions, source: ModelSource, specs, fp32_paths: dict[str, Path], staging: Path, steps: _Steps
) -> tuple[list[str], dict]:
    paths = calibration_paths(options.calib, options.calib_count)
    steps.start(f"calibrate ({len(paths)} images)")
    images = preprocess_batch([load_image(p) for p in paths], source.model.preprocess_spec())
    feeds = calibration_feeds(specs, fp32_paths, images, options.batch)
    scheme = INT8_SCHEMES[options.precision]
    fp32_ops: set[str] = set()
    excluded: dict[str, list[str]] = {}
    for spec in specs:
        steps.start(f"{options.precision} {spec.name}")
        reader = FeedCalibrationReader(feeds[spec.name])
        ops, excluded[spec.name] = scheme.quantize(
            fp32_paths[spec.name], staging / spec.file, reader, reduce_range=scheme.weight_bits == 7
        )
        fp32_ops |= set(ops)
    extra = {
        "int8": {
            "scheme": scheme.description,
            "calibration_images": len(paths),
            "calibration_method": scheme.calibration_method,
            "symmetric": scheme.symmetric,
            "per_channel_weights": True,
            "weight_bits": scheme.weight_bits,
            "cpu_features": [list(alternatives) for alternatives in scheme.cpu_features],
            "fp32_nodes": excluded,  # attention products, position tables, detection and mask heads
        }
    }
    return sorted(fp32_ops), extra


def _check_output_location(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
        raise ExportError(f"{out}: folder is not empty and holds no maskclip artifact; refusing to replace it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create output folder {out.parent}: {exc.strerror or exc}") from None
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise ExportError(f"output folder {out.parent} is not writable")


def _make_staging(out: Path, kind: str) -> Path:
    """A fresh hidden folder beside `out` (same filesystem, so the final move is a rename); unlike
    mkdtemp it gets the usual umask permissions, which the installed artifact keeps."""
    path = out.parent / f".{out.name}.{kind}-{uuid.uuid4().hex[:8]}"
    try:
        path.mkdir()
    except OSError as exc:
        raise ExportError(f"cannot write into {out.parent}: {exc.strerror or exc}") from None
    return path


def _install(staging: Path, out: Path) -> None:
    """Move the finished artifact into place, replacing an earlier artifact at `out`."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.replace(out, old / out.name)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _keep_failed(staging: Path, out: Path, report: dict) -> Path:
    """Graphs and report of a failed gate -> <out>.failed/, with no manifest.json (nothing loads it)."""
    failed = out.with_name(out.name + FAILED_SUFFIX)
    manifest = staging / MANIFEST_NAME
    os.replace(manifest, staging / FAILED_MANIFEST_NAME)
    (staging / "verification.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if failed.exists():
        shutil.rmtree(failed)
    os.replace(staging, failed)
    return failed / "verification.json"


def _write_graphs(
    source: ModelSource, options: ExportOptions, staging: Path, work: Path, steps: _Steps
) -> tuple[dict[str, Path], list[str], dict]:
    """fp32 export into `work`, then the requested precision into `staging`.

    Returns ({graph name: final path}, op types kept in fp32, manifest extras)."""
    specs = graph_specs(options.topology)
    fp32_paths = export_graphs(
        source.model, work, options.topology, options.batch, options.opset, on_graph=steps.start_export
    )
    fp32_ops, extra = [], {}
    if options.precision == "fp16":
        fp32_ops = _to_fp16(specs, fp32_paths, staging, steps)
    elif options.precision in INT8_PRECISIONS:
        fp32_ops, extra = _to_int8(options, source, specs, fp32_paths, staging, steps)
    return {spec.name: staging / spec.file for spec in specs}, fp32_ops, extra


def _run_gate(
    source: ModelSource,
    options: ExportOptions,
    paths: dict[str, Path],
    names: list[str],
    images: np.ndarray,
    steps: _Steps,
) -> dict:
    """PyTorch vs ONNX Runtime on the verification images -> the gate report."""
    steps.start(f"verify: PyTorch ({len(images)} images)")
    runners = [OnnxRuntimeRunner(path) for path in paths.values()]

    def announce(side: str) -> None:
        if side == "candidate":
            steps.start(f"verify: ONNX Runtime ({len(images)} images)")

    try:
        report = verify(
            torch_reference(source.model, options.topology),
            chain_predictor(runners),
            images,
            names,
            options.precision,
            source.model.config.threshold,
            options.batch,
            progress=announce,
        )
    finally:
        for runner in runners:
            runner.close()
    return {**report, "candidate_backend": runners[0].backend}


def export_artifact(
    source: ModelSource, options: ExportOptions, progress: bool = True, log: Callable[[str], None] = print
) -> dict:
    """Export, verify and install an artifact at options.out; returns its manifest.

    Raises ExportError (bad options or inputs, nothing written), GateFailed (report kept in <out>.failed),
    UnsupportedOpsError (a graph TensorRT would reject), VerificationError (no usable verification images).
    """
    options.validate()
    out = Path(options.out)
    _check_output_location(out)
    if options.calib:
        calibration_paths(options.calib, options.calib_count)  # fail before any work
    spec = source.model.preprocess_spec()
    originals = verification_images(options.verify_images if options.verify else None)
    names, images = [name for name, _ in originals], preprocess_batch([image for _, image in originals], spec)
    if options.verify and len(images) < MIN_VERIFICATION_IMAGES:
        log(f"warning: verifying on {len(images)} images (fewer than {MIN_VERIFICATION_IMAGES})")
    specs = graph_specs(options.topology)
    converted = options.precision != "fp32"
    # export (+ convert) each graph, calibrate, op check, verify (2 sides), canaries, manifest, self-check
    tensorrt_graph = options.precision != "int8-cpu"  # int8-cpu holds ORT-only dynamic quantisation
    total = (
        len(specs) * (2 if converted else 1)
        + (options.precision in INT8_PRECISIONS)
        + 3
        + tensorrt_graph
        + 2 * options.verify
    )
    steps = _Steps(total, progress)
    staging = _make_staging(out, "partial")
    work = _make_staging(out, "fp32") if converted else staging
    try:
        paths, fp32_ops, extra = _write_graphs(source, options, staging, work, steps)
        if tensorrt_graph:
            steps.start("TensorRT op check")
            check_tensorrt_ops(paths)
        report = {"skipped": True, "passed": None}
        if options.verify:
            report = _run_gate(source, options, paths, names, images, steps)
        steps.start("self-check canaries")
        canaries = write_canaries(
            staging,
            originals,
            spec,
            torch_reference(source.model, options.topology),
            source.model.config.threshold,
            GATES[options.precision],
        )
        steps.start("manifest")
        manifest = build_manifest(
            source.model,
            source.description,
            source.weights_digest,
            options.precision,
            fp32_ops,
            options.topology,
            options.batch,
            [(spec, paths[spec.name]) for spec in specs],
            options.opset,
            extra,
        )
        write_manifest(
            staging, {**manifest, "self_check": canaries, "verification": report, "export_seconds": steps.timings}
        )
        load_artifact(staging)  # the runtime must accept what was written
        if report["passed"] is not False:
            steps.start("self-check (runtime)")
            # The runtime's own on-device check, here, through the same code every later load runs.
            with Detector(staging, backend="onnxruntime", device="cpu"):
                pass
        steps.close()
        if report["passed"] is False:
            report_path = _keep_failed(staging, out, report)
            raise GateFailed(f"verification gate failed: {'; '.join(report['failures'])}", report_path)
        _install(staging, out)
        return json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))
    finally:
        steps.close()
        for folder in {staging, work}:
            shutil.rmtree(folder, ignore_errors=True)
