"""Measure every backend on the same images: latency, throughput, memory, size, build time, parity.

A row is one (model, backend, batch size). End-to-end times what a caller waits for: JPEG decode +
preprocess + forward + mask resize to the original size; model-only times the forward pass inside those
same calls, on the batch each has just prepared (for artifacts: the runner chain, host<->device copies
included). Timing the two in separate loops, model-only first, let the first loop absorb what warm-up
had not (issue 22: a torch row at model-only p50 1,145.7 ms against end-to-end 15.3 ms); timed in the
same calls, model-only <= end-to-end call by call. A model is a config, checkpoint or the demo (exported
here at each precision) or an existing artifact / engine file (timed as it is, with its own gate). Parity
compares each backend's outputs with PyTorch eager fp32 on the same preprocessed images through
the export gate's comparison. A backend that cannot run here is a row that says why.

This module runs the rows; the pieces live beside it: backends.py and pytorch.py (what a row runs),
artifacts.py (exports and their gate), timing.py, memory.py, samples.py, environment.py, op_profile.py.
"""

from __future__ import annotations

import functools
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from maskclip_runtime.backends import registry
from maskclip_runtime.errors import BackendUnavailable, message_of
from maskclip_runtime.kernel.devices import parse_device

from .artifacts import adopt_refused_artifact, export_artifact, gate_parity, reusable_export_seconds
from .backends import BACKENDS, ExistingArtifact, Session, artifact_session, end_to_end
from .memory import PeakMemory
from .pytorch import torch_gate, torch_session
from .report import INT8_BACKENDS, OPENVINO_BACKENDS
from .roofline import best_ceiling
from .samples import calibration_images, sample_images
from .timing import achieved_gflops, paired_speedup, percentiles, time_calls_and_part


def image_flops(model) -> int:  # a MaskCLIP model or its config
    """FLOPs per image of what every deployed graph computes: CLIP image tower, MAE + VCA trunk, heads
    (2 per multiply-add). The text pass is left out: it runs once per model (a constant in the graphs,
    cached by the eager model), so counting it would credit every row with work it never does."""
    from maskclip_core.info import count_macs

    return round(count_macs(model)["image_total"] * 2e9)


@dataclass
class BenchSettings:
    backends: Sequence[str]
    batch_sizes: Sequence[int]
    warmup: int
    iters: int
    device: str  # "cpu" or "cuda[:N]"
    workdir: Path
    pairs: int = 0  # alternating calls per paired speed-up (0: none)


def batch_sizes_for(existing: ExistingArtifact, requested: Sequence[int]) -> list[int]:
    """The requested batch sizes the artifact's graphs take, else its preferred one."""
    return [b for b in requested if existing.batch.min <= b <= existing.batch.max] or [existing.batch.opt]


class ModelBench:
    """Everything measured for one model: its PyTorch reference, its artifacts, its rows. `source` is a torch
    model (exported here per precision) or an ExistingArtifact (its own rows, as it is)."""

    def __init__(self, name: str, source, description: str, settings: BenchSettings):
        self.name = name
        self.description = description
        self.existing = source if isinstance(source, ExistingArtifact) else None
        if self.existing:
            from maskclip_core.config import MaskCLIPConfig

            self.model = None
            settings = replace(
                settings,
                backends=[b for b in settings.backends if b in self.existing.rows],
                batch_sizes=batch_sizes_for(self.existing, settings.batch_sizes),
            )
            self.spec, self.threshold = self.existing.preprocess, self.existing.threshold
            self.size = self.spec.size
            self.flops = image_flops(MaskCLIPConfig.from_dict(self.existing.config))
        else:
            self.model = source.eval()
            self.size = source.config.image_size
            self.spec = source.preprocess_spec()
            self.threshold = source.config.threshold
            self.flops = image_flops(source)
        self.settings = settings
        self._artifacts: dict[str, tuple[Path, float]] = {}
        self._torch_gates: dict[str, dict] = {}
        self.images = sample_images(settings.workdir / "images", max(settings.batch_sizes))

    def artifact(self, precision: str) -> tuple[Path, float]:
        """The exported artifact for this precision and its export time (exported once, reused)."""
        if self.existing:
            return self.existing.dir, self.existing.export_s
        if precision not in self._artifacts:
            out = self.settings.workdir / f"{self.name}-{precision}"
            seconds = reusable_export_seconds(out, self.model, precision, max(self.settings.batch_sizes))
            if seconds is None:
                start = time.perf_counter()
                export_artifact(self.model, precision, out, max(self.settings.batch_sizes), self.settings.workdir)
                seconds = time.perf_counter() - start
            self._artifacts[precision] = (out, seconds)
        return self._artifacts[precision]

    def prepare(self, backend: str) -> tuple[Path | None, float | None]:
        """Export (and for TensorRT build) what the backend runs; kept out of its memory measurement."""
        runtime, precision = BACKENDS[backend]
        if runtime.startswith("torch"):
            return None, None
        if runtime == "onnxruntime" and parse_device(self.settings.device).gpu:
            import onnxruntime

            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise BackendUnavailable(
                    f"onnxruntime {onnxruntime.__version__} has no CUDAExecutionProvider (a CPU-only build); "
                    "install onnxruntime-gpu in its place for ORT CUDA rows"
                )
        registry.require(runtime)  # say why before spending minutes on an export
        artifact_dir, build_s = self.artifact(precision)
        if runtime == "tensorrt" and self.existing:
            return artifact_dir, build_s + self.existing.build_s  # its engines, as built and gated
        if runtime == "tensorrt":
            from maskclip_export.onnx_export import torch_reference
            from maskclip_export.tensorrt import EngineGateFailed, build_engines

            start = time.perf_counter()
            try:
                build_engines(
                    artifact_dir,
                    precision,
                    calib_images=calibration_images(self.settings.workdir),
                    device=parse_device(self.settings.device).index,
                    reference=torch_reference(self.model, "fused"),
                    log=lambda _: None,
                )
            except EngineGateFailed as refused:  # timed anyway and marked, like a refused ONNX artifact
                adopt_refused_artifact(refused.report_path.parent, artifact_dir)
            build_s += time.perf_counter() - start
        return artifact_dir, build_s

    def open(self, backend: str, artifact_dir: Path | None, build_s: float | None) -> Session:
        runtime, precision = BACKENDS[backend]
        if artifact_dir is None:
            return torch_session(self.model, self.settings.device, precision, runtime == "torch-cudagraph")
        session = artifact_session(artifact_dir, runtime, self.settings.device, max(self.settings.batch_sizes))
        session.build_s = build_s
        return session

    def rows(self, progress: Callable[[str], None]) -> list[dict]:
        rows = []
        for backend in self.settings.backends:
            progress(f"{self.name} {backend}: preparing and timing")
            base = [{"model": self.name, "backend": backend, "batch": batch} for batch in self.settings.batch_sizes]
            try:
                artifact_dir, build_s = self.prepare(backend)
                parity = self.parity(backend, artifact_dir)
                with PeakMemory(self.settings.device) as memory:
                    session = self.open(backend, artifact_dir, build_s)
                    try:
                        measured = [self._measure(session, backend, row["batch"]) for row in base]
                    finally:
                        session.close()
                extra = {
                    "parity": parity,
                    "peak_memory_mb": memory.peak_mb,
                    "artifact": str(artifact_dir) if artifact_dir else None,
                }
                rows += [{**row, **m, **extra} for row, m in zip(base, measured, strict=True)]
            except BackendUnavailable as err:
                rows += [{**row, "status": "unavailable", "reason": message_of(err)} for row in base]
            except Exception as err:  # a failing backend is a row, not the end of the report
                reason = f"{type(err).__name__}: {message_of(err)}"
                rows += [{**row, "status": "failed", "reason": reason} for row in base]
        return rows

    def parity(self, backend: str, artifact_dir: Path | None) -> dict | None:
        """The gate's verdict for the row: the artifact's (or engines') export gate, or for reduced-precision
        PyTorch rows the same comparison with PyTorch fp32 eager (one per precision, shared by the graph row)."""
        runtime, precision = BACKENDS[backend]
        if artifact_dir is not None:
            return gate_parity(artifact_dir, runtime)
        if precision == "fp32":
            return None
        if precision not in self._torch_gates:
            max_batch = max(self.settings.batch_sizes)
            self._torch_gates[precision] = torch_gate(self.model, self.settings.device, precision, max_batch)
        return self._torch_gates[precision]

    def paired_speedups(self, rows: list[dict], progress: Callable[[str], None]) -> list[dict]:
        """PAIRINGS at the smallest batch size, between backends whose rows ran (artifacts are reused)."""
        batch = min(self.settings.batch_sizes)
        ok = {r["backend"]: r for r in rows if r["batch"] == batch and r["status"] == "ok"}
        ready = np.random.default_rng(batch).standard_normal((batch, 3, self.size, self.size), dtype=np.float32)
        results = []
        for slow, candidates in PAIRINGS:
            fast = min((b for b in candidates if b in ok), key=lambda b: ok[b]["model_ms"]["p50"], default=None)
            if slow not in ok or fast is None:
                continue
            progress(f"{self.name}: {slow} vs {fast}, {self.settings.pairs} alternating pairs")
            sessions = [self.open(b, *self.prepare(b)) for b in (slow, fast)]
            try:
                calls = [functools.partial(session.forward, ready) for session in sessions]
                measured = paired_speedup(*calls, self.settings.pairs)
            finally:
                for session in sessions:
                    session.close()
            results.append({"slow": slow, "fast": fast, "batch": batch, **measured})
        return results

    def _measure(self, session: Session, backend: str, batch: int) -> dict:
        paths = self.images[:batch]
        e2e, model = time_calls_and_part(
            lambda: end_to_end(session, paths, self.spec, self.threshold)[1], self.settings.warmup, self.settings.iters
        )
        model_ms, e2e_ms = percentiles(model), percentiles(e2e)
        dtype = {"fp16": "float16", "bf16": "bfloat16"}.get(BACKENDS[backend][1], "float32")
        if self.settings.device == "cpu" and dtype == "float16":
            dtype = "bfloat16"  # the CPU's reduced-precision GEMM peak
        return {
            "status": "ok",
            "model_ms": model_ms,
            "e2e_ms": e2e_ms,
            "images_per_s": batch * 1e3 / model_ms["p50"],
            "gflops": achieved_gflops(self.flops, batch, model_ms["p50"]),
            "compute_dtype": dtype,
            "artifact_mb": session.artifact_mb,
            "build_s": session.build_s,
            "ran_on": session.ran_on,
            # A GPU row that ran on the CPU (ONNX Runtime's CUDA provider failed to initialise) says so.
            "fell_back": bool(
                parse_device(self.settings.device).gpu and session.ran_on and session.ran_on.endswith("-cpu")
            ),
        }


def attach_ceilings(rows: list[dict], ceilings: list, device: str) -> None:
    """Each measured row's ceiling (best matmul of its compute dtype) and its fraction of it."""
    for row in rows:
        ceiling = best_ceiling(ceilings, row["compute_dtype"], device) if row["status"] == "ok" else None
        if ceiling:
            row["ceiling"] = ceiling.to_dict()
            row["ceiling_fraction"] = row["gflops"] / ceiling.gflops


def run(
    models: Sequence[tuple[str, object, str]],
    settings: BenchSettings,
    progress: Callable[[str], None] = print,
) -> tuple[list[dict], list[dict]]:
    """models: (name, torch model or ExistingArtifact, description) -> (per-model summaries, rows)."""
    summaries, rows = [], []
    for name, source, description in models:
        progress(f"{name}: counting FLOPs, preparing images")
        bench = ModelBench(name, source, description, settings)
        summaries.append(
            {
                "name": name,
                "description": description,
                "image_size": bench.size,
                "gflop_per_image": bench.flops / 1e9,
            }
        )
        model_rows = bench.rows(progress)
        for row in model_rows:
            progress(f"{name} {row['backend']} batch {row['batch']}: {row['status']} {row.get('reason', '')}")
        rows += model_rows
        if settings.pairs:
            summaries[-1]["paired"] = bench.paired_speedups(model_rows, progress)
    return summaries, rows


#: The comparisons the targets are about: (slower backend, faster backends: the fastest ok row is used).
PAIRINGS = (
    ("torch", ("ort-fp32",)),
    ("ort-fp32", INT8_BACKENDS),
    *(("ort-fp32", (row,)) for row in OPENVINO_BACKENDS),
    ("ort-int8-cpu", ("ov-int8",)),  # OpenVINO's int8 against the project's best ONNX Runtime CPU path
)


def default_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="maskclip-bench-"))
