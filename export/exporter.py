"""One export run: graphs -> precision -> TensorRT op check -> verification gate -> manifest -> install.

Everything is written into a staging folder beside the output and moved into place only when the gate
passes, so a failed or interrupted export never leaves something that looks like a valid artifact.
A failed gate keeps its graphs and report in `<out>.failed/` (without a manifest, so no runtime loads it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from maskclip_core.model import MaskCLIP
from maskclip_runtime.backends import registry
from maskclip_runtime.backends.onnxruntime import OnnxRuntimeRunner
from maskclip_runtime.backends.openvino import INFERENCE_PRECISION, OpenVinoRunner
from maskclip_runtime.contract.artifact import load_artifact, write_manifest
from maskclip_runtime.contract.chain import run_chain
from maskclip_runtime.contract.manifest import (
    MANIFEST_NAME,
    TOPOLOGIES,
    BatchSpec,
    GraphSpec,
    Manifest,
    ModelCard,
    ModelIdentity,
    claimed_files,
)
from maskclip_runtime.contract.precision_table import (
    DEFAULT_PRECISION,
    OPENVINO,
    PRECISIONS,
    gate_backend,
    precision_row,
)
from maskclip_runtime.contract.verdict_calibration import Calibration
from maskclip_runtime.detect.detector import Detector
from maskclip_runtime.errors import BackendUnavailable, InputError, VerificationFailed, install_hint
from maskclip_runtime.kernel.atomic import unreplaceable_folder, write_text_atomic
from maskclip_runtime.kernel.host import current_host
from maskclip_runtime.kernel.inputs import image_files
from maskclip_runtime.kernel.memory import release_freed_memory
from maskclip_runtime.kernel.preprocess import ImageLoadError, PreprocessSpec, load_image, preprocess_batch

from .canary import write_canaries
from .manifest import build_manifest
from .onnx_export import export_graphs, graph_specs, torch_reference
from .op_support import check_tensorrt_ops
from .quantize import FLOAT_CONVERSIONS, INT8_SCHEMES, FeedCalibrationReader
from .verify import (
    MIN_VERIFICATION_IMAGES,
    batch_chunks,
    chain_predictor,
    judge,
    run_batched,
    verification_images,
)

OPSET_RANGE = (17, 20)  # LayerNormalization needs 17; the TorchScript exporter stops at 20
FAILED_SUFFIX = ".failed"
FAILED_MANIFEST_NAME = "manifest.failed.json"  # a refused export's manifest: no runtime looks for it
FAILED_REPORT_NAME = "verification.json"


class ExportError(InputError, RuntimeError):
    """A user-facing export failure; the message is one line."""


class GateFailed(VerificationFailed, ExportError):
    """The verification gate ran and rejected the export; the report is kept at `report_path`."""

    def __init__(self, message: str, report_path: Path):
        super().__init__(message)
        self.report_path = report_path


@dataclass(frozen=True)
class ExportOptions:
    out: Path
    precision: str = DEFAULT_PRECISION
    topology: str = "fused"
    batch: BatchSpec = field(default_factory=lambda: BatchSpec.fixed(1))
    opset: int = 17
    calib: str | None = None
    calib_count: int = 32
    verify_images: str | None = None
    verify: bool = True
    calibration: Calibration | None = None  # verdict calibration record stored in the manifest

    def validate(self) -> None:
        """Reject invalid combinations up front, before anything is written."""
        if self.precision not in PRECISIONS:
            raise ExportError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.topology not in TOPOLOGIES:
            raise ExportError(f"topology must be one of {', '.join(TOPOLOGIES)}, got {self.topology!r}")
        if not OPSET_RANGE[0] <= self.opset <= OPSET_RANGE[1]:
            raise ExportError(f"--opset must be between {OPSET_RANGE[0]} and {OPSET_RANGE[1]}, got {self.opset}")
        calibrated = [name for name, row in PRECISIONS.items() if row.calibrated]
        if self.precision in calibrated and not self.calib:
            raise ExportError(f"--precision {self.precision} needs calibration images: --calib DIR_OR_GLOB")
        if self.calib and self.precision not in calibrated:
            raise ExportError(f"--calib is only used with --precision {' / '.join(calibrated)}")
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
    card: ModelCard | None = None  # what the model is (manifest "card"); None: nobody described it
    # True: the export owns the model and frees its weights as soon as it is done with them (the text
    # tower once T is cached, all of them once PyTorch's outputs are computed), so that a large model
    # does not sit in memory beside the quantiser and the gate's sessions. The model is unusable after.
    owned: bool = False


class _Steps:
    """A progress bar over the export's steps (stderr), plus timestamps for the manifest."""

    def __init__(self, total: int, enabled: bool):
        self.bar = tqdm(total=total, desc="export", unit="step", file=sys.stderr, disable=not enabled, leave=False)
        self.timings: dict[str, float] = {}
        self._current: tuple[str, float] | None = None

    def start(self, name: str) -> None:
        self.finish()
        release_freed_memory(collect=False)  # a step does not start on top of the heap its predecessor freed
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
    paths = [Path(p) for p in image_files(pattern)[:count]]
    if not paths:
        raise ExportError(f"no calibration images found at {pattern!r}")
    return paths


def calibration_images(paths: list[Path], spec: PreprocessSpec, log: Callable[[str], None]) -> np.ndarray:
    """Decode and preprocess calibration images; one that cannot be decoded is skipped with a warning,
    as maskclip-run reports a bad image and goes on. Raises if none is usable."""
    images = []
    for path in paths:
        try:
            images.append(load_image(path))
        except ImageLoadError as exc:
            log(f"warning: calibration image skipped: {exc}")
    if not images:
        raise ExportError(f"none of the {len(paths)} calibration images could be decoded")
    return preprocess_batch(images, spec)


def calibration_feeds(
    specs: tuple[GraphSpec, ...], fp32_paths: dict[str, Path], images: np.ndarray, batch: BatchSpec
) -> dict[str, list[dict[str, np.ndarray]]]:
    """Each graph's calibration inputs: images through the fp32 graphs before it (split: real CLIP maps).

    A dynamic graph is calibrated one image at a time: ORT's histogram calibrator (int8-cpu) stacks the
    batches and needs them all the same size, which a short last batch would break."""
    runners = [OnnxRuntimeRunner(fp32_paths[spec.name]) for spec in specs]
    feeds: dict[str, list[dict[str, np.ndarray]]] = {spec.name: [] for spec in specs}
    for chunk, _ in batch_chunks(images, BatchSpec.up_to(1) if batch.dynamic else batch):
        run_chain(runners, {"image": chunk}, on_feed=lambda i, feed: feeds[specs[i].name].append(feed))
    for runner in runners:
        runner.close()
    return feeds


def _to_float(precision: str, specs, fp32_paths: dict[str, Path], staging: Path, steps: _Steps) -> list[str]:
    fp32_ops: set[str] = set()
    for spec in specs:
        steps.start(f"{precision} {spec.name}")
        fp32_ops |= set(FLOAT_CONVERSIONS[precision](fp32_paths[spec.name], staging / spec.file))
    return sorted(fp32_ops)


def _to_int8(
    options: ExportOptions,
    source: ModelSource,
    specs,
    fp32_paths: dict[str, Path],
    staging: Path,
    steps: _Steps,
    log: Callable[[str], None],
) -> tuple[list[str], dict]:
    paths = calibration_paths(options.calib, options.calib_count)
    steps.start(f"calibrate ({len(paths)} images)")
    images = calibration_images(paths, source.model.preprocess_spec(), log)
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
    record = {
        "scheme": scheme.description,
        "calibration_images": len(images),
        "calibration_method": scheme.calibration_method,
        "symmetric": scheme.symmetric,
        "per_channel_weights": True,
        "weight_bits": scheme.weight_bits,
        "cpu_features": [list(alternatives) for alternatives in scheme.cpu_features],
        "fp32_nodes": excluded,  # attention products, position tables, detection and mask heads
    }
    if scheme.recipe is not None:
        record["recipe"] = scheme.recipe.to_dict()
    return sorted(fp32_ops), record


def check_output_location(out: Path) -> None:
    """Refuse, before any work, an --out whose replacement could delete data the export does not own.

    Only a folder holding a maskclip artifact is ever replaced, and only when every file in it is one
    its manifest lists; the current folder, its parents, home and / are never targets."""
    problem = unreplaceable_folder(out)
    if problem:
        raise ExportError(problem)
    if out.is_dir() and any(out.iterdir()):
        _refuse_unowned(out, MANIFEST_NAME)
    failed = out.with_name(out.name + FAILED_SUFFIX)
    if failed.exists():
        _refuse_unowned(failed, FAILED_MANIFEST_NAME, also_owned=(FAILED_REPORT_NAME,))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create output folder {out.parent}: {exc.strerror or exc}") from None
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise ExportError(f"output folder {out.parent} is not writable")


def _refuse_unowned(folder: Path, manifest_name: str, also_owned: tuple[str, ...] = ()) -> None:
    """Raise unless `folder` is an export output whose manifest lists every file in it (replacing it loses nothing)."""
    try:
        data = json.loads((folder / manifest_name).read_text(encoding="utf-8"))
    except FileNotFoundError:
        data = None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        data = {}
    files = claimed_files(data)
    if files is None:
        what = "holds no maskclip artifact" if data is None else f"has a {manifest_name} not written by maskclip"
        raise ExportError(f"{folder}: folder is not empty and {what}; refusing to replace it")
    owned = {manifest_name, *also_owned, *files}
    unowned = [
        path.relative_to(folder).as_posix()
        for path in sorted(folder.rglob("*"))
        if (path.is_symlink() or not path.is_dir()) and path.relative_to(folder).as_posix() not in owned
    ]
    if unowned:
        shown = ", ".join(unowned[:3]) + (f" and {len(unowned) - 3} more" if len(unowned) > 3 else "")
        raise ExportError(f"{folder}: holds files the artifact does not own ({shown}); refusing to replace it")


# What a staging folder holds: an export in progress, its fp32 graphs before conversion, the artifact it
# replaces, the TensorRT engines being built into a copy (export/tensorrt.py). remove_stale_staging knows them all.
_STAGING_KINDS = ("partial", "fp32", "old", "engines")


def _make_staging(out: Path, kind: str) -> Path:
    """A fresh hidden folder beside `out` (same filesystem, so the final move is a rename); unlike
    mkdtemp it gets the usual umask permissions, which the installed artifact keeps. The name holds
    our process id, so a later export can tell the leftovers of a killed one from a running one's."""
    if kind not in _STAGING_KINDS:
        raise ValueError(f"unknown staging kind {kind!r}: remove_stale_staging would never clean it")
    path = out.parent / f".{out.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        path.mkdir()
    except OSError as exc:
        raise ExportError(f"cannot write into {out.parent}: {exc.strerror or exc}") from None
    return path


def remove_stale_staging(out: Path, log: Callable[[str], None]) -> None:
    """Clean up after exports to `out` that were killed (SIGKILL, OOM, power loss): their staging folders
    go; a previous artifact caught mid-install (moved aside, new one not yet in place) is put back."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.({'|'.join(_STAGING_KINDS)})-(\d+)-[0-9a-f]{{8}}")
    for path in sorted(out.parent.iterdir()) if out.parent.is_dir() else ():
        match = pattern.fullmatch(path.name)
        if not match or not path.is_dir() or _process_alive(int(match.group(2))):
            continue
        previous = path / out.name
        if match.group(1) == "old" and previous.is_dir() and not out.exists():
            os.replace(previous, out)
            log(f"note: restored {out} (an earlier export was killed while installing)")
        shutil.rmtree(path, ignore_errors=True)
        log(f"note: removed {path.name}, left by an export that was killed")


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _install(staging: Path, out: Path) -> None:
    """Move the finished artifact into place, replacing an earlier artifact at `out`."""
    old = None
    if out.exists():
        check_output_location(out)  # files may have appeared in it while we worked
        old = _make_staging(out, "old")
        os.replace(out, old / out.name)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _keep_failed(staging: Path, out: Path, report: dict) -> Path:
    """Graphs and report of a failed gate -> <out>.failed/, with no manifest.json (nothing loads it)."""
    failed = out.with_name(out.name + FAILED_SUFFIX)
    manifest = staging / MANIFEST_NAME
    os.replace(manifest, staging / FAILED_MANIFEST_NAME)
    write_text_atomic(staging / FAILED_REPORT_NAME, json.dumps(report, indent=2) + "\n")
    if failed.exists():
        shutil.rmtree(failed)
    os.replace(staging, failed)
    return failed / FAILED_REPORT_NAME


def artifact_graph_specs(options: ExportOptions) -> tuple[GraphSpec, ...]:
    """The topology's graphs under the file names the precision writes (an OpenVINO IR: model.xml)."""
    suffix = precision_row(options.precision).graph_suffix
    return tuple(
        replace(spec, file=Path(spec.file).with_suffix(suffix).as_posix()) for spec in graph_specs(options.topology)
    )


def _convert(
    source: ModelSource,
    options: ExportOptions,
    fp32_paths: dict[str, Path],
    staging: Path,
    steps: _Steps,
    log: Callable[[str], None],
) -> tuple[dict[str, Path], list[str], dict | None]:
    """The fp32 graphs -> the requested precision in `staging` (fp32 graphs are already there).

    Returns ({graph name: final path}, op types kept in fp32, the manifest's int8 record or None)."""
    specs = artifact_graph_specs(options)
    fp32_ops, int8 = [], None
    if precision_row(options.precision).calibrated:
        fp32_ops, int8 = _to_int8(options, source, specs, fp32_paths, staging, steps, log)
    elif options.precision in FLOAT_CONVERSIONS:
        fp32_ops = _to_float(options.precision, specs, fp32_paths, staging, steps)
    return {spec.name: staging / spec.file for spec in specs}, fp32_ops, int8


def _pytorch_side(
    model: MaskCLIP,
    options: ExportOptions,
    originals: list,
    images: np.ndarray,
    staging: Path,
    steps: _Steps,
) -> tuple[dict[str, np.ndarray] | None, dict]:
    """Everything the export needs from PyTorch once the graphs are traced: the gate's reference outputs
    (None under --no-verify) and the self-check canaries, written into `staging` (returns their block)."""
    reference = torch_reference(model, options.topology)
    reference_outputs = None
    if options.verify:
        steps.start(f"verify: PyTorch ({len(images)} images)")
        reference_outputs = run_batched(reference, images, options.batch)
    steps.start("self-check canaries")
    row = precision_row(options.precision)
    canaries = write_canaries(staging, originals, model.preprocess_spec(), reference, model.config.threshold, row.gate)
    return reference_outputs, canaries


def release_text_tower(model: MaskCLIP) -> None:
    """Every graph holds T as a constant and the model's inference path reads T from its cache, so once T
    is cached the text tower (0.5 GB of opensdi-vitl14's 2.2) only takes memory. Its three modules that
    hold all but 0.5 % of its weights are moved to the meta device: shapes kept, storage returned."""
    model.eval().text_embeddings()
    text = model.clip.model
    for module in (text.transformer, text.token_embedding, text.ln_final):
        module.to("meta")
    release_freed_memory()


def release_weights(model: MaskCLIP) -> None:
    """All of the model's weights go (meta device); its config and preprocessing stay readable."""
    model.to("meta")
    release_freed_memory()


def _run_gate(
    options: ExportOptions,
    reference_outputs: dict[str, np.ndarray],
    paths: dict[str, Path],
    names: list[str],
    images: np.ndarray,
    threshold: float,
    steps: _Steps,
) -> dict:
    """PyTorch's outputs vs the precision's gate backend (ONNX Runtime or OpenVINO, on CPU) -> the gate report."""
    runners = _gate_runners(options.precision, paths)
    steps.start(f"verify: {runners[0].backend} ({len(images)} images)")
    try:
        report = judge(
            reference_outputs,
            chain_predictor(runners),
            images,
            names,
            options.precision,
            threshold,
            options.batch,
        )
    finally:
        for runner in runners:
            runner.close()
    report = {**report, "candidate_backend": runners[0].backend}
    if isinstance(runners[0], OpenVinoRunner):
        report["inference_precision"] = runners[0].inference_precision
    return report


def _gate_runners(precision: str, paths: dict[str, Path]) -> list:
    """The graphs on the backend that gates the precision (precision_table.gate_backend), on CPU."""
    if gate_backend(precision_row(precision)) == OPENVINO:
        hint = INFERENCE_PRECISION.get(precision, "f32")
        return [OpenVinoRunner(path, "CPU", inference_precision=hint) for path in paths.values()]
    return [OnnxRuntimeRunner(path) for path in paths.values()]


def bf16_gate_note(report: dict) -> str | None:
    """A bf16 gate run where the CPU has no native bf16 measured fp32 arithmetic: say so."""
    if report.get("precision") != "bf16" or report.get("inference_precision") == "bf16":
        return None
    return (
        f"note: {current_host().cpu} has no native bf16, so OpenVINO ran the bf16 gate in "
        f"{report.get('inference_precision', 'fp32')}: the gate measured fp32 arithmetic; the self-check on the "
        "deploying device (run on first use there) decides whether its bf16 stays inside the bounds"
    )


def _identity(source: ModelSource, options: ExportOptions) -> ModelIdentity:
    return ModelIdentity(source.model.config.name, source.weights_digest, options.precision, options.topology)


def _check_calibration_model(source: ModelSource, options: ExportOptions) -> None:
    """A record fitted on an artifact names its model id: it must be this model's."""
    fitted_id = options.calibration.fitted_on.get("model_id") if options.calibration else None
    exported_id = _identity(source, options).model_id
    if fitted_id and fitted_id != exported_id:
        raise ExportError(f"--calibration record was fitted on model {fitted_id}, this export is {exported_id}")


def _accepted_calibration(record: Calibration | None, model_id: str) -> Calibration | None:
    """--calibration is accepted for the exported model (a record fitted on a checkpoint names no artifact id;
    one naming another was refused by _check_calibration_model)."""
    if record is None or record.model_problem(model_id) is None:
        return record
    return replace(record, accepted_for=model_id)


def export_artifact(
    source: ModelSource, options: ExportOptions, progress: bool = True, log: Callable[[str], None] = print
) -> Manifest:
    """Export, verify and install an artifact at options.out; returns its manifest.

    Raises ExportError (bad options or inputs, nothing written), GateFailed (report kept in <out>.failed),
    UnsupportedOpsError (a graph TensorRT would reject), VerificationError (no usable verification images).
    """
    _check_before_work(source, options, log)
    out = Path(options.out)
    originals = verification_images(options.verify_images if options.verify else None)
    if options.verify and len(originals) < MIN_VERIFICATION_IMAGES:
        log(f"warning: verifying on {len(originals)} images (fewer than {MIN_VERIFICATION_IMAGES})")
    steps = _Steps(_step_count(options), progress)
    converted = not precision_row(options.precision).fp32_graph
    staging = _make_staging(out, "partial")
    work = _make_staging(out, "fp32") if converted else staging
    try:
        manifest = _stage_artifact(source, options, originals, staging, work, steps, log)
        steps.close()
        if manifest.gate_passed is False:
            report_path = _keep_failed(staging, out, manifest.verification)
            raise GateFailed(f"verification gate failed: {'; '.join(manifest.verification['failures'])}", report_path)
        _install(staging, out)
        return manifest
    finally:
        steps.close()
        for folder in {staging, work}:
            shutil.rmtree(folder, ignore_errors=True)


def _check_before_work(source: ModelSource, options: ExportOptions, log: Callable[[str], None]) -> None:
    """Everything that can be refused is refused here, before a graph is written."""
    options.validate()
    _check_openvino(options.precision)
    out = Path(options.out)
    check_output_location(out)
    remove_stale_staging(out, log)
    if options.calib:
        calibration_paths(options.calib, options.calib_count)
    _check_calibration_model(source, options)


def _check_openvino(precision: str) -> None:
    """A precision gated on OpenVINO (bf16, int8-openvino) needs it, and int8-openvino NNCF: say so before work."""
    row = precision_row(precision)
    if gate_backend(row) != OPENVINO:
        return
    missing = registry.get(OPENVINO).probe()
    if missing is None and row.calibrated and importlib.util.find_spec("nncf") is None:
        missing = f"NNCF is not installed: {install_hint('openvino')} (from a checkout)"
    if missing:
        raise BackendUnavailable(f"--precision {precision} is built and gated with OpenVINO. {missing}")


def _step_count(options: ExportOptions) -> int:
    """export (+ convert) each graph, calibrate, op check, verify (2 sides), canaries, manifest, self-check"""
    row = precision_row(options.precision)
    graphs = len(graph_specs(options.topology)) * (1 if row.fp32_graph else 2)
    return graphs + row.calibrated + 3 + row.tensorrt + 2 * options.verify


def _stage_artifact(
    source: ModelSource,
    options: ExportOptions,
    originals: list,
    staging: Path,
    work: Path,
    steps: _Steps,
    log: Callable[[str], None],
) -> Manifest:
    """Graphs, op check, gate, canaries and manifest into `staging`; the runtime's own checks run on it
    unless the gate refused it. Returns the manifest written."""
    model = source.model
    names = [name for name, _ in originals]
    images = preprocess_batch([image for _, image in originals], model.preprocess_spec())
    if source.owned:
        release_text_tower(model)
    fp32_paths = export_graphs(model, work, options.topology, options.batch, options.opset, steps.start_export)
    reference_outputs, canaries = _pytorch_side(model, options, originals, images, staging, steps)
    if source.owned:
        release_weights(model)  # before the quantiser and the gate's sessions load the graphs
    paths, fp32_ops, int8 = _convert(source, options, fp32_paths, staging, steps, log)
    row = precision_row(options.precision)
    if row.tensorrt:  # a graph only ONNX Runtime runs may hold ops TensorRT lacks
        steps.start("TensorRT op check")
        check_tensorrt_ops(paths)
    report = {"skipped": True, "passed": None}
    if reference_outputs is not None:
        report = _run_gate(options, reference_outputs, paths, names, images, model.config.threshold, steps)
        if note := bf16_gate_note(report):
            log(note)
    steps.start("manifest")
    specs = artifact_graph_specs(options)
    identity = _identity(source, options)
    manifest = build_manifest(
        model,
        source.description,
        identity,
        fp32_ops,
        options.batch,
        # An OpenVINO IR has its source ONNX graph's inputs and outputs: shapes and dtypes are read from that.
        [(graph, fp32_paths[graph.name]) for graph in specs],
        options.opset,
        int8,
    ).replace(
        calibration=_accepted_calibration(options.calibration, identity.model_id),
        card=source.card,
        self_check=canaries,
        verification=report,
        export_seconds=steps.timings,
    )
    manifest = write_manifest(staging, manifest)
    load_artifact(staging)  # the runtime must accept what was written
    if report["passed"] is not False:
        steps.start("self-check (runtime)")
        # The runtime's own on-device check, here, through the same code every later load runs.
        with Detector(staging, backend=gate_backend(row), device="cpu"):
            pass
    return manifest
