"""Build TensorRT engines from an exported artifact (`maskclip-export --trt`).

Two ways to reduced precision, chosen per TensorRT version by `plan_precision`:
- TensorRT 10 (JetPack 6) from an fp32 graph: weakly typed network + BuilderFlag.FP16 / INT8 (with an
  IInt8EntropyCalibrator2 fed from --calib images), the manifest's fp32_ops pinned to fp32 under
  OBEY_PRECISION_CONSTRAINTS (LayerNorm, Softmax and the final Sigmoid lose precision in fp16).
- TensorRT 11 removed those flags and the calibrator: the precision is baked into the ONNX graph
  (fp16 mixed-precision conversion, explicit Q/DQ for int8) and the network is strongly typed.
  TensorRT 10 builds such graphs the same way.

Each engine is a plain TensorRT plan with a JSON sidecar (runtime/contract/engine_header.py), recorded in
the manifest's engines and hashed in its files. Engines are staged like the exporter's graphs: a
complete copy of the artifact (its files hard-linked) gets the new engines, and replaces the artifact
only after the engine gate passes; a failed build leaves the old artifact as it was, and a refused one
is kept in `<artifact>.failed/` without a loadable manifest. TensorRT and cuda-python are imported only
inside the functions that need them, so this module imports (and its planning logic is tested)
without either.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maskclip_runtime.backends.tensorrt import cuda_call, gpu_identity, import_cudart, import_tensorrt
from maskclip_runtime.contract.artifact import Artifact, load_artifact, write_manifest
from maskclip_runtime.contract.engine_header import TRT_COMPAT, ampere_or_newer, sidecar_path, write_engine
from maskclip_runtime.contract.manifest import BatchSpec, EngineSpec, GraphSpec, graph_digest
from maskclip_runtime.contract.precision_table import (
    TENSORRT,
    UnknownPrecision,
    precision_row,
    precisions_for,
)
from maskclip_runtime.errors import InputError
from maskclip_runtime.kernel.atomic import write_bytes_atomic
from maskclip_runtime.kernel.host import on_jetson
from maskclip_runtime.kernel.preprocess import load_image, preprocess_batch

from .exporter import GateFailed, _install, _keep_failed, _make_staging, remove_stale_staging
from .verify import Predictor, chain_predictor, verification_batch, verify

# ONNX op types whose TensorRT layer type is unambiguous; others are matched by node name.
ONNX_OP_LAYER_TYPES = {
    "LayerNormalization": "NORMALIZATION",
    "GroupNormalization": "NORMALIZATION",
    "InstanceNormalization": "NORMALIZATION",
    "Softmax": "SOFTMAX",
}


# TF32 is on by default and rounds fp32 matmul inputs to 10 mantissa bits: the parts of a graph
# that are fp32 (all of an fp32 graph, the kept ops of a reduced one) must stay fp32.
NO_TF32 = ("TF32",)


class EngineGateFailed(GateFailed):
    """The engines ran but their outputs differ from the reference beyond the precision's tolerances; the
    staged artifact with the refused engines is kept beside the report at `report_path`."""


class PrecisionPlanError(InputError, ValueError):
    """The requested engine precision cannot be built from this graph with this TensorRT."""


class PortabilityError(InputError, ValueError):
    """A portable engine (--trt-compat) that TensorRT cannot build here."""


def check_compat(compat: Sequence[str], compute_capability: str | None = None) -> tuple[str, ...]:
    """The --trt-compat kinds, sorted, if TensorRT can build them here (on this GPU, when given); else
    PortabilityError in one line. Jetson's TensorRT builds neither kind; AMPERE_PLUS needs an Ampere+ builder."""
    unknown = [kind for kind in compat if kind not in TRT_COMPAT]
    if unknown:
        raise PortabilityError(f"unknown --trt-compat {', '.join(unknown)} (known: {', '.join(TRT_COMPAT)})")
    if compat and on_jetson():
        raise PortabilityError(
            "--trt-compat is not available on Jetson: JetPack's TensorRT builds engines for this device and "
            "version only (no version- or hardware-compatible plans); drop --trt-compat"
        )
    if "hardware" in compat and compute_capability is not None and not ampere_or_newer(compute_capability):
        raise PortabilityError(
            f"--trt-compat hardware needs an Ampere or newer GPU to build on (compute capability 8.0+); "
            f"this one is {compute_capability}"
        )
    return tuple(sorted(set(compat)))


@dataclass(frozen=True)
class PrecisionPlan:
    """How one engine gets its precision: network typing, builder flags, calibration, fp32 pins."""

    precision: str
    strongly_typed: bool
    builder_flags: tuple[str, ...] = ()  # trt.BuilderFlag names to set
    cleared_flags: tuple[str, ...] = ()  # trt.BuilderFlag names to clear
    calibrate: bool = False
    fp32_ops: tuple[str, ...] = ()  # ONNX op types whose layers are pinned to fp32


def _major(trt_version: str) -> int:
    return int(str(trt_version).split(".")[0])


def plan_precision(
    trt_version: str, precision: str, graph_precision: str, fp32_ops: Sequence[str] = ()
) -> PrecisionPlan:
    """The build recipe for a `precision` engine from a `graph_precision` ONNX graph (pure; no TensorRT)."""
    buildable = ", ".join(precisions_for(TENSORRT))
    try:
        engine, graph = precision_row(precision), precision_row(graph_precision)
    except UnknownPrecision as exc:
        raise PrecisionPlanError(str(exc)) from None
    if not graph.tensorrt:
        raise PrecisionPlanError(
            f"this artifact is {graph_precision}, which TensorRT cannot build: build engines from a {buildable} export"
        )
    if not engine.tensorrt:
        raise PrecisionPlanError(f"TensorRT builds {buildable} engines, not {precision}")
    if not graph.fp32_graph:
        if precision != graph_precision:
            raise PrecisionPlanError(
                f"the artifact's graphs are {graph_precision}; a {precision} engine needs an {precision} "
                f"(or, on TensorRT 10, an fp32) export"
            )
        # Precision is already in the graph (Cast / Q-DQ nodes): build exactly what it says.
        return PrecisionPlan(precision, strongly_typed=True, cleared_flags=NO_TF32)
    if not engine.tensorrt_flags:
        return PrecisionPlan(precision, strongly_typed=False, cleared_flags=NO_TF32)
    if _major(trt_version) >= 11 and engine.fp32_graph:  # bf16: no graph of its own to build strongly typed
        raise PrecisionPlanError(
            f"TensorRT {trt_version} has no {'/'.join(engine.tensorrt_flags)} builder flag and {precision} has no "
            f"typed graph of its own: build {precision} engines with TensorRT 10, or export fp16 for TensorRT 11"
        )
    if _major(trt_version) >= 11:
        raise PrecisionPlanError(
            f"TensorRT {trt_version} has no {'/'.join(engine.tensorrt_flags)} builder flag: export the {precision} "
            f"graph first (maskclip-export --precision {precision} --trt); its engine is built strongly typed"
        )
    return PrecisionPlan(
        precision,
        strongly_typed=False,
        builder_flags=(*engine.tensorrt_flags, "OBEY_PRECISION_CONSTRAINTS"),
        cleared_flags=NO_TF32,
        calibrate=engine.calibrated,
        fp32_ops=tuple(fp32_ops),
    )


def profile_shapes(inputs: Iterable[GraphSpec | dict], batch: BatchSpec) -> dict[str, tuple[tuple[int, ...], ...]]:
    """Input name -> (min, opt, max) shapes: the symbolic batch dim takes batch.min / opt / max."""
    shapes = {}
    for spec in inputs:
        name, dims = (spec["name"], spec["shape"]) if isinstance(spec, dict) else (spec.name, spec.shape)
        symbolic = [d for d in dims if not isinstance(d, int)]
        if len(symbolic) > 1 or (symbolic and dims[0] != symbolic[0]):
            raise ValueError(f"input {name!r} has shape {list(dims)}: only a leading batch dimension may be symbolic")
        shapes[name] = tuple(
            tuple(int(d) if isinstance(d, int) else size for d in dims) for size in (batch.min, batch.opt, batch.max)
        )
    return shapes


def select_fp32_layers(layers: Iterable[tuple[str, str]], node_names: set[str], fp32_ops: Sequence[str]) -> list[str]:
    """Names of network layers to pin to fp32.

    layers: (layer name, trt.LayerType name) in network order; node_names: names of the ONNX nodes
    whose op type is in fp32_ops (TensorRT's ONNX parser names a node's layer after the node).
    """
    layer_types = {ONNX_OP_LAYER_TYPES[op] for op in fp32_ops if op in ONNX_OP_LAYER_TYPES}
    return [name for name, kind in layers if name in node_names or kind in layer_types]


def onnx_node_names(onnx_path: str | os.PathLike, op_types: Sequence[str]) -> set[str]:
    """Names of the nodes of these op types (weights are not loaded)."""
    import onnx

    model = onnx.load(os.fspath(onnx_path), load_external_data=False)
    wanted = set(op_types)
    return {node.name for node in model.graph.node if node.op_type in wanted and node.name}


def engine_file_name(graph: GraphSpec, precision: str) -> str:
    """'model.onnx' / 'model.fp16.onnx' -> 'model.fp16.engine' (one engine per graph and precision)."""
    return f"{Path(graph.file).name.split('.')[0]}.{precision}.engine"


def calibration_cache_name(graph: GraphSpec, digest: str) -> str:
    """An INT8 calibration cache is only valid for the graph it was measured on: its name carries the graph's
    digest, so a changed model never reuses an older model's scales."""
    return f"{graph.name}.int8-{digest[:16]}.calib"


def _calibration_feeds(
    artifact: Artifact, calib_images: Sequence[str | os.PathLike], batch: BatchSpec
) -> tuple[int, dict[str, list[dict[str, np.ndarray]]]]:
    """(calibration batch size, graph name -> feeds): the images preprocessed exactly as deployed and run
    through the earlier fp32 graphs (split artifacts), in full batches of one shape."""
    from .exporter import calibration_feeds

    calib_batch = max(batch.min, min(batch.opt, len(calib_images)))
    if len(calib_images) < calib_batch:
        raise PrecisionPlanError(f"{len(calib_images)} calibration images, fewer than the batch {calib_batch}")
    images = preprocess_batch([load_image(p) for p in calib_images], artifact.preprocess)
    paths = {graph.name: artifact.file(graph.file) for graph in artifact.graphs}
    return calib_batch, calibration_feeds(artifact.graphs, paths, images, BatchSpec.fixed(calib_batch))


def make_entropy_calibrator(trt, batches: Iterable[dict[str, np.ndarray]], batch_size: int, cache_path: Path):
    """An IInt8EntropyCalibrator2 that copies each feed to the GPU and caches its scales in cache_path."""
    cudart = import_cudart()

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)  # pybind trampolines need the explicit base init
            self._batches = iter(batches)
            self._device: dict[str, tuple[int, int]] = {}  # name -> (pointer, bytes)

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names):
            feed = next(self._batches, None)
            if feed is None:
                self.free()
                return None
            pointers = []
            for name in names:
                array = np.ascontiguousarray(feed[name])
                if name not in self._device or self._device[name][1] < array.nbytes:
                    self._free_one(name)
                    self._device[name] = (cuda_call(cudart, cudart.cudaMalloc(array.nbytes)), array.nbytes)
                pointer = self._device[name][0]
                kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
                cuda_call(cudart, cudart.cudaMemcpy(pointer, array.ctypes.data, array.nbytes, kind))
                pointers.append(pointer)
            return pointers

        def read_calibration_cache(self):
            return cache_path.read_bytes() if cache_path.is_file() and cache_path.stat().st_size else None

        def write_calibration_cache(self, cache):
            write_bytes_atomic(cache_path, bytes(cache))

        def _free_one(self, name: str) -> None:
            if name in self._device:
                cuda_call(cudart, cudart.cudaFree(self._device.pop(name)[0]))

        def free(self) -> None:
            for name in list(self._device):
                self._free_one(name)

    return EntropyCalibrator()


def _pin_fp32_layers(trt, network, onnx_path: Path, fp32_ops: Sequence[str]) -> list[str]:
    node_names = onnx_node_names(onnx_path, fp32_ops)
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    chosen = set(select_fp32_layers(((layer.name, layer.type.name) for layer in layers), node_names, fp32_ops))
    floating = (trt.float32, trt.float16)
    pinned = []
    for layer in layers:
        outputs = [layer.get_output(i) for i in range(layer.num_outputs)]
        # Shape and index layers named like a pinned node carry no float data to keep in fp32.
        if layer.name not in chosen or not all(t.dtype in floating for t in outputs):
            continue
        layer.precision = trt.float32
        for i in range(layer.num_outputs):
            layer.set_output_type(i, trt.float32)
        pinned.append(layer.name)
    return pinned


def build_plan(
    onnx_path: Path,
    plan: PrecisionPlan,
    shapes: dict[str, tuple[tuple[int, ...], ...]],
    workspace_gb: float,
    timing_cache: Path | None,
    calibrator_factory: Callable[[], object] | None = None,
    calibration_shapes: dict[str, tuple[int, ...]] | None = None,
    log: Callable[[str], None] = print,
    compat: Sequence[str] = (),
) -> bytes:
    """Parse one ONNX graph and build its serialized TensorRT plan (portable as `compat` says: TRT_COMPAT)."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 11 networks are always strongly typed (the flag is deprecated and ignored there).
    flags = 0
    if plan.strongly_typed and _major(trt.__version__) < 11:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # parse_from_file resolves external weight files next to the graph (models over 2 GB).
    if not parser.parse_from_file(os.fspath(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    for flag in plan.cleared_flags:
        config.clear_flag(getattr(trt.BuilderFlag, flag))
    if "version" in compat:  # trtexec --versionCompatible: the lean runtime is serialised into the plan
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if "hardware" in compat:  # trtexec --hardwareCompatibilityLevel=ampere+
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS

    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)

    if plan.fp32_ops:
        pinned = _pin_fp32_layers(trt, network, onnx_path, plan.fp32_ops)
        log(f"  {len(pinned)} layers pinned to fp32 ({', '.join(plan.fp32_ops)})")
    if plan.calibrate:
        if calibrator_factory is None or not calibration_shapes:
            raise ValueError("an int8 build from an fp32 graph needs calibration images (--calib)")
        # Calibration runs at one shape: a profile whose min = opt = max is that shape.
        calibration_profile = builder.create_optimization_profile()
        for name, shape in calibration_shapes.items():
            calibration_profile.set_shape(name, shape, shape, shape)
        config.set_calibration_profile(calibration_profile)
        calibrator = calibrator_factory()  # held here: the config does not keep the Python object alive
        config.int8_calibrator = calibrator

    if timing_cache is not None:
        cache_bytes = timing_cache.read_bytes() if timing_cache.is_file() else b""
        if not config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=False):
            log(f"  {timing_cache.name} was made on another GPU or TensorRT version: starting a new one")
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path.name} (see its log above)")
    if timing_cache is not None:
        write_bytes_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def build_engines(
    artifact_dir: str | os.PathLike,
    precision: str | None = None,
    batch: BatchSpec | None = None,
    workspace_gb: float = 4.0,
    timing_cache: str | os.PathLike | None = None,
    calib_images: Sequence[str | os.PathLike] = (),
    device: int = 0,
    verify: bool = True,
    reference: Predictor | None = None,
    verify_images: str | None = None,
    log: Callable[[str], None] = print,
    compat: Sequence[str] = (),
) -> tuple[EngineSpec, ...]:
    """Build one engine per graph of the artifact into a staged copy of it, run the export gate on the
    engines (`verify_engines`; reference: see there), and only then replace the artifact with the copy.

    precision defaults to the artifact's; batch to its manifest batch profile; timing_cache defaults to
    `timing.cache` in the artifact (reused by later builds). The new engines replace earlier ones.
    Returns the new engine entries of the manifest. A build that fails leaves the artifact as it was.
    Raises BackendUnavailable (one line: what to install) when TensorRT or a GPU is missing, and
    EngineGateFailed when the engines do not match the reference within the precision's tolerances (the
    artifact is left as it was; the refused copy is kept in `<artifact>.failed/`).
    verify=False installs the engines ungated (the manifest then has no engine_verification).
    compat: portable engines (engine_header.TRT_COMPAT; PortabilityError where TensorRT cannot build them here).
    """
    check_compat(compat)
    trt = import_tensorrt()
    artifact = load_artifact(artifact_dir)
    precision = precision or artifact.precision
    plan = plan_precision(trt.__version__, precision, artifact.precision, artifact.manifest.fp32_ops)
    if plan.calibrate and not calib_images:
        raise PrecisionPlanError(f"a {precision} engine from an fp32 graph on TensorRT 10 needs --calib images")
    gpu_name, compute_capability = gpu_identity(device)
    target = _BuildTarget(gpu_name, compute_capability, trt.__version__, check_compat(compat, compute_capability))
    cuda_call(import_cudart(), import_cudart().cudaSetDevice(device))
    batch = batch or artifact.batch
    digests = {graph.name: graph_digest(artifact.manifest.files, graph) for graph in artifact.graphs}
    calibration_caches = {calibration_cache_name(g, digests[g.name]) for g in artifact.graphs}

    remove_stale_staging(artifact.dir, log)  # engine builds killed earlier (SIGKILL, OOM) leave their copies
    staging = _stage_copy(artifact, keep=lambda name: not name.endswith(".calib") or name in calibration_caches)
    try:
        cache_path = Path(timing_cache) if timing_cache else staging / "timing.cache"
        calibration = _Calibration(artifact, calib_images, batch, staging, digests) if plan.calibrate else None
        engines = tuple(
            _build_graph_engine(artifact, graph, plan, batch, target, staging, digests[graph.name], workspace_gb,
                                cache_path, calibration, log)
            for graph in artifact.graphs
        )  # fmt: skip
        write_manifest(staging, artifact.manifest.replace(engines=engines, engine_verification=None))
        if verify:
            _gate_engines(staging, artifact, precision, reference, verify_images, device, log)
        _install(staging, artifact.dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return engines


@dataclass(frozen=True)
class _BuildTarget:
    """Where engines are built for: this GPU model with this TensorRT, widened by `compat` (TRT_COMPAT)."""

    gpu_name: str
    compute_capability: str
    tensorrt_version: str
    compat: tuple[str, ...] = ()


class _Calibration:
    """Int8 calibration for engines built from fp32 graphs: the feeds of every graph, one calibrator per graph
    caching its scales in the staged artifact under the graph's digest."""

    def __init__(self, artifact: Artifact, calib_images, batch: BatchSpec, staging: Path, digests: dict[str, str]):
        self.batch, self.feeds = _calibration_feeds(artifact, calib_images, batch)
        self.staging, self.digests = staging, digests

    def shapes(self, shapes: dict[str, tuple[tuple[int, ...], ...]]) -> dict[str, tuple[int, ...]]:
        return {name: (self.batch, *low[1:]) for name, (low, _, _) in shapes.items()}

    def factory(self, trt, graph: GraphSpec) -> Callable[[], object]:
        cache = self.staging / calibration_cache_name(graph, self.digests[graph.name])
        return lambda: make_entropy_calibrator(trt, self.feeds[graph.name], self.batch, cache)


def _build_graph_engine(
    artifact: Artifact,
    graph: GraphSpec,
    plan: PrecisionPlan,
    batch: BatchSpec,
    target: _BuildTarget,
    staging: Path,
    digest: str,
    workspace_gb: float,
    cache_path: Path,
    calibration: _Calibration | None,
    log: Callable[[str], None],
) -> EngineSpec:
    """Build one graph's engine into `staging` (plan + sidecar with its build record); returns its manifest entry."""
    trt = import_tensorrt()
    shapes = profile_shapes(graph.inputs, batch)
    log(f"building {plan.precision} engine for graph {graph.name!r} ({graph.file}) with TensorRT {trt.__version__}")
    started = time.perf_counter()
    serialized = build_plan(
        staging / graph.file,
        plan,
        shapes,
        workspace_gb,
        cache_path,
        calibration.factory(trt, graph) if calibration else None,
        calibration.shapes(shapes) if calibration else None,
        log,
        target.compat,
    )
    seconds = time.perf_counter() - started
    profile = {name: {"min": list(s[0]), "opt": list(s[1]), "max": list(s[2])} for name, s in shapes.items()}
    engine = EngineSpec(
        file=engine_file_name(graph, plan.precision),
        graph=graph.name,
        precision=plan.precision,
        tensorrt_version=target.tensorrt_version,
        gpu_name=target.gpu_name,
        compute_capability=target.compute_capability,
        profile=profile,
        build_seconds=round(seconds, 1),
        compat=target.compat,
    )
    built = {key: value for key, value in engine.to_dict().items() if key not in ("file", "build_seconds")}
    metadata = {
        **built,
        "onnx_file": graph.file,
        "onnx_sha256": digest,
        "strongly_typed": plan.strongly_typed,
        "builder_flags": list(plan.builder_flags),
        "fp32_ops": list(plan.fp32_ops),
        "model_id": artifact.model_id,
        "machine": platform.machine(),  # plans never cross platforms, portable or not
    }
    write_engine(staging / engine.file, metadata, serialized)
    log(f"  wrote {engine.file} ({(staging / engine.file).stat().st_size / 1e6:.1f} MB) in {seconds:.0f} s")
    return engine


def _gate_engines(
    staging: Path,
    artifact: Artifact,
    precision: str,
    reference: Predictor | None,
    verify_images: str | None,
    device: int,
    log: Callable[[str], None],
) -> None:
    """The engine gate on the staged copy; a refusal keeps the copy in `<artifact>.failed/` and raises."""
    report = verify_engines(staging, reference, verify_images, device, log)
    if not report["passed"]:
        report_path = _keep_failed(staging, artifact.dir, report)
        raise EngineGateFailed(
            f"TensorRT {precision} engines fail the gate: {'; '.join(report['failures'])} "
            f"(artifact left as it was; the refused engines are in {report_path.parent})",
            report_path,
        )


def _stage_copy(artifact: Artifact, keep: Callable[[str], bool]) -> Path:
    """A staging folder beside the artifact holding its files (hard links where the filesystem allows, they
    are never written in place) except its engines and the files `keep` refuses; no manifest yet."""
    staging = _make_staging(artifact.dir, "engines")
    engine_files = {name for e in artifact.manifest.engines for name in (e.file, sidecar_path(e.file).name)}
    for name in artifact.manifest.files:
        if name in engine_files or not keep(name):
            continue
        target = staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(artifact.dir / name, target)
        except OSError:
            shutil.copy2(artifact.dir / name, target)
    return staging


def verify_engines(
    artifact_dir: str | os.PathLike,
    reference: Predictor | None = None,
    images: str | None = None,
    device: int = 0,
    log: Callable[[str], None] = print,
) -> dict:
    """The export gate on the engines: same images, comparison and per-precision tolerances as for ONNX.

    reference: the PyTorch model's predictor when the caller has it; else the artifact's own ONNX
    graphs on ONNX Runtime (CPU), which passed that gate against PyTorch at export. The report is
    stored as the manifest's engine_verification; returns it ("passed" inside).
    """
    from maskclip_runtime.backends.onnxruntime import OnnxRuntimeRunner
    from maskclip_runtime.backends.tensorrt import TensorRTRunner

    artifact = load_artifact(artifact_dir)
    engines = artifact.manifest.engines
    if not engines:
        raise ValueError(f"{artifact.dir}: no engines to verify; build them first")
    precision = engines[0].precision
    largest = min(e.max_batch for e in engines)
    names, batch = verification_batch(artifact.preprocess, images)
    onnx_runners = [] if reference else [OnnxRuntimeRunner(artifact.file(g.file)) for g in artifact.graphs]
    trt_runners = []
    try:
        trt_runners += [TensorRTRunner(artifact.engines[g.name], device=device) for g in artifact.graphs]
        report = verify(
            reference or chain_predictor(onnx_runners),
            chain_predictor(trt_runners),
            batch,
            names,
            precision,
            artifact.threshold,
            BatchSpec.up_to(largest) if artifact.batch.dynamic else BatchSpec.fixed(largest),
            progress=lambda side: log(f"  engine gate: running the {side}"),
        )
    finally:
        for runner in (*onnx_runners, *trt_runners):
            runner.close()
    report["reference"] = "pytorch" if reference else "onnx graphs on onnxruntime-cpu"
    write_manifest(artifact.dir, artifact.manifest.replace(engine_verification=report))
    verdict = "passed" if report["passed"] else "FAILED: " + "; ".join(report["failures"])
    log(f"  engine gate ({precision}, {report['images']} images): {verdict}")
    return report
