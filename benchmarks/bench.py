"""Measure every backend on the same images: latency, throughput, memory, size, build time, parity.

A row is one (model, backend, batch size). Model-only latency times the forward pass on a ready
batch (for artifacts: the runner chain, host<->device copies included); end-to-end times what a
caller waits for: JPEG decode + preprocess + forward + mask resize to the original size. Parity
compares each backend's outputs with PyTorch eager fp32 on the same preprocessed images through
the export gate's comparison. A backend that cannot run here is a row that says why.
"""

from __future__ import annotations

import functools
import gc
import os
import platform
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from maskclip_runtime.errors import BackendUnavailable
from maskclip_runtime.host import current_host
from maskclip_runtime.preprocess import load_image, preprocess_batch, resize_probability_map

from .report import INT8_BACKENDS
from .roofline import best_ceiling, gflops

#: backend id -> (runtime, precision); "torch" is the PyTorch eager fp32 baseline. Reduced-precision
#: PyTorch rows run under autocast (mixed precision, like the fp16 graphs: the model's own fp32 casts
#: stay); "-graph" rows replay one captured CUDA graph per batch size (CUDA only).
BACKENDS = {
    "torch": ("torch", "fp32"),
    "torch-fp16": ("torch", "fp16"),
    "torch-bf16": ("torch", "bf16"),
    "torch-graph": ("torch-cudagraph", "fp32"),
    "torch-fp16-graph": ("torch-cudagraph", "fp16"),
    "torch-bf16-graph": ("torch-cudagraph", "bf16"),
    "ort-fp32": ("onnxruntime", "fp32"),
    "ort-int8": ("onnxruntime", "int8"),
    "ort-int8-cpu": ("onnxruntime", "int8-cpu"),
    "ort-fp16": ("onnxruntime", "fp16"),
    "trt-fp32": ("tensorrt", "fp32"),
    "trt-fp16": ("tensorrt", "fp16"),
    "trt-int8": ("tensorrt", "int8"),
}


def image_flops(model) -> int:
    """FLOPs per image of what every deployed graph computes: CLIP image tower, MAE + VCA trunk, heads
    (2 per multiply-add). The text pass is left out: it runs once per model (a constant in the graphs,
    cached by the eager model), so counting it would credit every row with work it never does."""
    from maskclip_core.info import count_macs

    return round(count_macs(model)["image_total"] * 2e9)


def percentiles(samples_ms: Sequence[float]) -> dict:
    """p50 / p90 / p99 / mean of latency samples in ms (numpy's linear interpolation)."""
    values = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(values.mean()), "n": len(values)}


def time_calls(fn: Callable[[], object], warmup: int, iters: int) -> list[float]:
    """Wall time of each of `iters` calls in ms, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return samples


def achieved_gflops(flops_per_image: int, batch: int, p50_ms: float) -> float:
    return gflops(flops_per_image * batch, p50_ms / 1e3)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _gpu_used_bytes(index: int) -> int:
    import torch

    free, total = torch.cuda.mem_get_info(index)
    return total - free


class PeakMemory:
    """Peak memory growth (MB) while the block runs, sampled every few ms in a thread: resident memory
    on the CPU, device memory in use (every allocator: torch, ONNX Runtime, TensorRT) on a CUDA device."""

    def __init__(self, device: str = "cpu", interval_s: float = 0.005):
        self._interval = interval_s
        self._stop = threading.Event()
        if device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()  # the previous row's cached blocks are not this row's
            index = _cuda_index(device)
            self._read = lambda: _gpu_used_bytes(index)
        else:
            self._read = _rss_bytes
        self.peak_mb = 0.0

    def __enter__(self) -> PeakMemory:
        gc.collect()
        self._base = self._read()
        self._peak = self._base
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self._peak = max(self._peak, self._read())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._read())
        self.peak_mb = (self._peak - self._base) / 1e6


def sample_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """Photo-sized JPEGs (smooth gradients + noise, 640x480) for end-to-end timing."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:480, 0:640].astype(np.float32)
    paths = []
    for i in range(count):
        base = np.stack([xs / 640, ys / 480, (xs + ys) / 1120], axis=-1) * 255
        pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"sample_{i}.jpg"
        Image.fromarray(np.roll(pixels, i * 37, axis=1)).save(path, quality=90)
        paths.append(path)
    return paths


def calibration_images(workdir: Path) -> list[Path]:
    """The export gate's bundled sample photos (and edited copies) as PNG files, for int8 calibration."""
    from maskclip_export.verify import default_verification_images

    folder = workdir / "calib"
    if not folder.is_dir():
        folder.mkdir(parents=True)
        for name, pixels in default_verification_images():
            Image.fromarray(pixels).save(folder / f"{name}.png")
    return sorted(folder.glob("*.png"))


def export_artifact(model, precision: str, out: Path, max_batch: int, workdir: Path, topology: str = "fused") -> None:
    """The exporter's artifact: fused graph (or `topology`), dynamic batch 1..max_batch, its gate included.

    An artifact the gate refuses is still timed (a speed benchmark of random weights must not depend
    on their masks): its graphs are installed at `out` with the refusal in the manifest, and the
    row's parity columns say so."""
    from maskclip_export.exporter import INT8_PRECISIONS, ExportOptions, GateFailed, ModelSource, export_artifact
    from maskclip_export.manifest import state_dict_digest
    from maskclip_export.onnx_export import BatchSpec

    int8 = precision in INT8_PRECISIONS
    options = ExportOptions(
        out=out,
        precision=precision,
        topology=topology,
        batch=BatchSpec(size=max_batch, dynamic=True),
        calib=str(workdir / "calib") if int8 else None,
    )
    if int8:
        calibration_images(workdir)
    source = ModelSource(model, "benchmark model", state_dict_digest(model))
    try:
        export_artifact(source, options, progress=False, log=lambda _: None)
    except GateFailed as refused:
        adopt_refused_artifact(refused.report_path.parent, out)


def adopt_refused_artifact(failed: Path, out: Path) -> None:
    """`<out>.failed/` (graphs + the failed manifest, whose verification says passed: false) -> `out`,
    loadable for timing. Only the benchmark does this, inside its own work folder."""
    from maskclip_export.exporter import FAILED_MANIFEST_NAME
    from maskclip_runtime.artifact import MANIFEST_NAME

    os.replace(failed / FAILED_MANIFEST_NAME, failed / MANIFEST_NAME)
    if out.exists():
        shutil.rmtree(out)
    os.replace(failed, out)


def reusable_export_seconds(out: Path, model, precision: str, max_batch: int, topology: str = "fused") -> float | None:
    """The recorded export time of an artifact already in `out` for these exact weights, precision,
    topology and batch range (a re-run in the same --workdir skips the export); None when it must be
    exported."""
    import json

    from maskclip_export.manifest import model_id, state_dict_digest

    try:
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    expected = model_id(model.config.name, state_dict_digest(model))
    same = (
        manifest.get("model", {}).get("model_id") == expected
        and manifest.get("precision") == precision
        and manifest.get("topology", "fused") == topology
        and manifest.get("batch", {}).get("max") == max_batch
    )
    return float(sum(manifest.get("export_seconds", {}).values())) if same else None


def gate_summary(report: dict) -> dict:
    """The figures of a verification report a benchmark row carries."""
    return {
        "max_prob_diff": report["max_prob_diff"],
        "flips": report["flips"],
        "mask_iou": report["mask_iou_mean"],
        "images": report["images"],
        "passed": report["passed"],
        "failures": report.get("failures", []),
    }


def gate_parity(artifact_dir: Path, runtime: str) -> dict:
    """Parity with PyTorch from the export gate's report (ONNX Runtime CPU, or the engine gate for TensorRT)."""
    from maskclip_runtime.artifact import load_artifact

    manifest = load_artifact(artifact_dir).manifest
    report = manifest.get("engine_verification" if runtime == "tensorrt" else "verification") or {}
    if not report or report.get("skipped"):
        return {}
    return gate_summary(report)


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


def cuda_unavailable_reason(device: str) -> str | None:
    """Why PyTorch cannot run on this CUDA device (None when it can): checked before any row is measured."""
    import torch

    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        index = _cuda_index(device)
        return None if index < count else f"--device {device}: only {count} CUDA device(s) are visible"
    if torch.version.cuda is None:
        return f"--device {device}: PyTorch {torch.__version__} is a CPU-only build; install its CUDA build"
    return (
        f"--device {device}: PyTorch {torch.__version__} (built for CUDA {torch.version.cuda}) sees no usable GPU: "
        "none visible, or a driver older than that CUDA needs (nvidia-smi shows the driver's CUDA version); "
        "install the torch build for this driver's CUDA"
    )


def torch_forward(model, device: str, precision: str = "fp32", cuda_graph: bool = False):
    """tensor batch on `device` -> the model's outputs: eager, under autocast for fp16 / bf16, or replaying
    a CUDA graph captured per input shape. The model is moved to `device`."""
    import torch

    model = model.to(device).eval()
    kind = device.split(":")[0]
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    if cuda_graph and kind != "cuda":
        raise BackendUnavailable("CUDA graphs need --device cuda")
    if kind == "cuda":  # fp32 rows are fp32: TF32 would round matmul and convolution inputs to 10 bits
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    def run(x):
        # Autocast's weight-cast cache must be off while capturing: a graph replays the casts itself.
        with torch.autocast(kind, dtype=dtype, enabled=dtype is not None, cache_enabled=not cuda_graph):
            return model(x)

    return cuda_graph_replay(run, device) if cuda_graph else run


def cuda_graph_replay(run, device: str):
    """`run` captured into one CUDA graph per input shape (after warm-up runs on a side stream, as CUDA graph
    capture requires), then replayed on a static input buffer. Thread-local capture mode: the memory
    sampler's thread keeps calling CUDA meanwhile."""
    import torch

    graphs = {}

    def forward(x):
        key = tuple(x.shape)
        if key not in graphs:
            static_in = x.clone()
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    run(static_in)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                static_out = run(static_in)
            graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out

    return forward


def torch_predictor(forward, device: str):
    """A verification Predictor (numpy batch -> logits, fake_prob, mask) over a torch_forward."""
    import torch

    def predict(images: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            out = forward(torch.from_numpy(images).to(device))
            result = {"logits": out["logits"], "fake_prob": out["fake_prob"], "mask": out["mask_prob"]}
            return {name: value.float().cpu().numpy() for name, value in result.items()}

    return predict


def torch_session(model, device: str, precision: str = "fp32", cuda_graph: bool = False) -> Session:
    """PyTorch on `device` (the fp32 eager row is the baseline); closing moves the model back to the CPU."""
    import torch

    forward_tensors = torch_forward(model, device, precision, cuda_graph)

    def forward(batch: np.ndarray):
        with torch.inference_mode():
            out = forward_tensors(torch.from_numpy(batch).to(device))
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            return out["fake_prob"].float().cpu().numpy(), out["mask_prob"][:, 0].float().cpu().numpy()

    def close() -> None:
        model.to("cpu")  # the exports that follow trace the model on the CPU
        if device.startswith("cuda"):
            torch.cuda.empty_cache()

    return Session(forward, close, ran_on=f"torch-{device.split(':')[0]}")


def torch_gate(model, device: str, precision: str, max_batch: int) -> dict:
    """The export gate's comparison of PyTorch at a reduced precision with PyTorch fp32 eager, both on
    `device` (bf16 is judged by fp16's tolerances): what precision alone costs, before any export."""
    from maskclip_export.onnx_export import BatchSpec as ExportBatch
    from maskclip_export.verify import verification_batch, verify

    names, images = verification_batch(model.preprocess_spec())
    try:
        report = verify(
            torch_predictor(torch_forward(model, device), device),
            torch_predictor(torch_forward(model, device, precision), device),
            images,
            names,
            "fp16" if precision == "bf16" else precision,
            model.config.threshold,
            ExportBatch(size=max_batch, dynamic=True),
        )
    finally:
        model.to("cpu")
    return {
        **gate_summary(report),
        "reference": f"pytorch fp32 eager on {device}",
    }


def artifact_session(artifact_dir: Path, runtime: str, device: str, batch: int) -> Session:
    from maskclip_runtime.artifact import load_artifact
    from maskclip_runtime.detector import Detector

    if runtime == "tensorrt" and not device.startswith("cuda"):
        device = "cuda"  # engines only run on a GPU, whatever the other rows use
    # A refused artifact is timed anyway and its row says so: its self-check would only repeat the refusal.
    refused = gate_parity(artifact_dir, runtime).get("passed") is False
    detector = Detector(artifact_dir, backend=runtime, device=device, batch=batch, self_check=not refused)
    files = load_artifact(artifact_dir).manifest["files"]
    used = (
        [f for f in files if f.endswith(".engine")]
        if runtime == "tensorrt"
        else [f for f in files if "engine" not in f]
    )
    size_mb = sum((artifact_dir / f).stat().st_size for f in used) / 1e6
    return Session(detector.forward, detector.close, artifact_mb=size_mb, ran_on=detector.backend)


def _cuda_index(device: str) -> int:
    _, _, index = device.partition(":")
    return int(index or 0)


def environment(device: str) -> dict:
    import onnxruntime
    import torch

    import maskclip_runtime

    host = current_host()
    versions = {
        "python": platform.python_version(),
        "maskclip": maskclip_runtime.__version__,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }
    try:
        import tensorrt

        versions["tensorrt"] = tensorrt.__version__
    except ImportError:
        versions["tensorrt"] = "not installed"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    if gpu:
        versions["cuda"] = torch.version.cuda
    return {
        "device": device if device != "cpu" else f"CPU ({os.cpu_count()} cores)",
        "cpu": host.cpu,
        "cpu_features": list(host.features),
        "cpu_cores": os.cpu_count(),
        "gpu": gpu,
        "platform": platform.platform(),
        "versions": versions,
    }


@dataclass
class BenchSettings:
    backends: Sequence[str]
    batch_sizes: Sequence[int]
    warmup: int
    iters: int
    device: str  # "cpu" or "cuda[:N]"
    workdir: Path
    pairs: int = 0  # alternating calls per paired speed-up (0: none)


class ModelBench:
    """Everything measured for one model: its PyTorch reference, its artifacts, its rows."""

    def __init__(self, name: str, model, description: str, settings: BenchSettings):
        self.name = name
        self.model = model.eval()
        self.description = description
        self.settings = settings
        self.size = model.config.image_size
        self.spec = model.preprocess_spec()
        self.threshold = model.config.threshold
        self.flops = image_flops(model)
        self._artifacts: dict[str, tuple[Path, float]] = {}
        self._torch_gates: dict[str, dict] = {}
        self.images = sample_images(settings.workdir / "images", max(settings.batch_sizes))

    def artifact(self, precision: str) -> tuple[Path, float]:
        """The exported artifact for this precision and its export time (exported once, reused)."""
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
        if runtime == "onnxruntime" and self.settings.device.startswith("cuda"):
            import onnxruntime

            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise BackendUnavailable(
                    f"onnxruntime {onnxruntime.__version__} has no CUDAExecutionProvider (a CPU-only build); "
                    "install onnxruntime-gpu in its place for ORT CUDA rows"
                )
        if runtime == "tensorrt":
            from maskclip_runtime.backends.tensorrt import gpu_identity, import_tensorrt

            import_tensorrt()  # say why before spending minutes on an export
            gpu_identity(_cuda_index(self.settings.device))
        artifact_dir, build_s = self.artifact(precision)
        if runtime == "tensorrt":
            from maskclip_export.onnx_export import torch_reference
            from maskclip_export.tensorrt import EngineGateFailed, build_engines

            start = time.perf_counter()
            try:
                build_engines(
                    artifact_dir,
                    precision,
                    calib_images=calibration_images(self.settings.workdir),
                    device=_cuda_index(self.settings.device),
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
                rows += [{**row, "status": "unavailable", "reason": str(err).splitlines()[0]} for row in base]
            except Exception as err:  # a failing backend is a row, not the end of the report
                reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
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
        rng = np.random.default_rng(batch)
        ready = rng.standard_normal((batch, 3, self.size, self.size), dtype=np.float32)
        model_ms = percentiles(time_calls(lambda: session.forward(ready), self.settings.warmup, self.settings.iters))
        paths = self.images[:batch]
        e2e_ms = percentiles(
            time_calls(
                lambda: end_to_end(session, paths, self.spec, self.threshold), self.settings.warmup, self.settings.iters
            )
        )
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
                self.settings.device.startswith("cuda") and session.ran_on and session.ran_on.endswith("-cpu")
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
    """models: (name, torch model, description) -> (per-model summaries, rows)."""
    summaries, rows = [], []
    for name, model, description in models:
        progress(f"{name}: counting FLOPs, preparing images")
        bench = ModelBench(name, model, description, settings)
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
PAIRINGS = (("torch", ("ort-fp32",)), ("ort-fp32", INT8_BACKENDS))


def paired_speedup(slow: Callable[[], object], fast: Callable[[], object], pairs: int) -> dict:
    """slow/fast time ratio measured on alternating calls, the order flipped every pair.

    Rows are timed one after another, so on a shared machine a burst of load can land on one row and
    not the other; a pair's two calls run back to back under the same conditions, and the median of
    the per-pair ratios is robust to the bursts."""
    slow(), fast()  # warm both
    ratios, slow_ms, fast_ms = [], [], []
    for i in range(pairs):
        timed = {}
        for name, fn in (("slow", slow), ("fast", fast)) if i % 2 == 0 else (("fast", fast), ("slow", slow)):
            start = time.perf_counter()
            fn()
            timed[name] = (time.perf_counter() - start) * 1e3
        slow_ms.append(timed["slow"])
        fast_ms.append(timed["fast"])
        ratios.append(timed["slow"] / timed["fast"])
    return {
        "pairs": pairs,
        "speedup_median": float(np.median(ratios)),
        "speedup_min": float(np.min(ratios)),
        "speedup_max": float(np.max(ratios)),
        "slow_ms_median": float(np.median(slow_ms)),
        "fast_ms_median": float(np.median(fast_ms)),
    }


def default_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="maskclip-bench-"))


def ort_op_profile(artifact_dir: Path, batch: np.ndarray, runs: int = 5) -> list[dict]:
    """ONNX Runtime kernel time per op type over the artifact's graphs (CPU, one batch): the median over
    `runs` profiled runs after one warm-up run (which allocates and prepacks weights), so a run slowed
    by other processes does not decide the ranking."""
    import json

    import onnxruntime as ort

    from maskclip_runtime.artifact import load_artifact

    artifact = load_artifact(artifact_dir)
    per_run: list[dict[str, float]] = [{} for _ in range(runs)]
    tensors = {"image": batch}
    for graph in artifact.graphs:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="ort-profile-")) / graph.name)
        session = ort.InferenceSession(str(artifact.file(graph.file)), options, providers=["CPUExecutionProvider"])
        feed = {i.name: tensors[i.name] for i in session.get_inputs()}
        for _ in range(runs + 1):
            outputs = session.run(None, feed)
        tensors.update({o.name: v for o, v in zip(session.get_outputs(), outputs, strict=True)})
        events = json.loads(Path(session.end_profiling()).read_text())
        starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")[1:]  # skip the warm-up
        for event in events:
            if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time") or event["ts"] < starts[0]:
                continue
            run = sum(event["ts"] >= start for start in starts) - 1
            op = event.get("args", {}).get("op_name", "?")
            per_run[run][op] = per_run[run].get(op, 0.0) + event["dur"] / 1e3
    ops = {op for totals in per_run for op in totals}
    medians = {op: float(np.median([totals.get(op, 0.0) for totals in per_run])) for op in ops}
    whole = sum(medians.values()) or 1.0
    ranked = sorted(medians.items(), key=lambda item: -item[1])
    return [{"op_type": op, "ms": round(ms, 2), "share": round(ms / whole, 4)} for op, ms in ranked]
