"""OpenVINO runner: an artifact's ONNX graphs, or the OpenVINO IR of an int8-openvino artifact, on OpenVINO's
devices (its CPU plugin here; GPU, NPU, GPU.1 ... where the machine has them).

OpenVINO is imported when a runner is built, so this module imports without it; `probe` says what is
missing and how to install it. Device names are OpenVINO's own, passed through (kernel/devices.py), and a
device this machine lacks fails in one line (BackendUnavailable, exit 4) instead of falling back.
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path

import numpy as np

from ..contract.precision_table import OPENVINO, precision_row
from ..errors import BackendUnavailable, install_hint, message_of
from ..kernel.devices import openvino_device
from ..kernel.host import current_host
from .base import Backend, Runner

INSTALL_HINT = f"OpenVINO is not installed: {install_hint('openvino')} (from a checkout)"

# The precision OpenVINO's CPU computes an artifact's floating-point ops in. bf16 and int8-openvino ask for
# bf16, which the CPU plugin grants on AVX-512-bf16 / AMX CPUs and silently runs as fp32 elsewhere;
# everything else is pinned to fp32, because on bf16 hardware the plugin's default is bf16, and an fp32
# artifact's gate bounds (1e-4 on fake_prob) are fp32's. Other devices run their own default (GPU: f16)
# and the self-check on that device decides.
INFERENCE_PRECISION = {"bf16": "bf16", "int8-openvino": "bf16"}
DEFAULT_INFERENCE_PRECISION = "f32"
# Devices OpenVINO composes from the physical ones: accepted whatever available_devices lists.
VIRTUAL_DEVICES = ("AUTO", "HETERO", "MULTI", "BATCH")


def _import_openvino():
    try:
        import openvino
    except ImportError:
        raise BackendUnavailable(INSTALL_HINT) from None
    return openvino


def probe() -> str | None:
    """None when the backend can run here, else one line: what is missing and how to install it."""
    try:
        _import_openvino()
    except BackendUnavailable as exc:
        return str(exc)
    return None


@functools.lru_cache(maxsize=1)
def _core():
    """One OpenVINO Core per process: it enumerates the devices and caches their plugins."""
    return _import_openvino().Core()


def check_device(name: str) -> str:
    """An OpenVINO device name this machine has, upper-cased; BackendUnavailable names those it has."""
    device = openvino_device(name)
    available = list(_core().available_devices)  # "CPU", "GPU.0", "GPU.1", "NPU"
    family = device.split(".")[0]
    known = device in available or family in VIRTUAL_DEVICES or any(a.split(".")[0] == device for a in available)
    if not known:
        raise BackendUnavailable(f"OpenVINO has no device {device} on this machine (available: {', '.join(available)})")
    return device


class OpenVinoRunner(Runner):
    """One graph (ONNX or OpenVINO IR .xml beside its .bin) compiled for one OpenVINO device."""

    def __init__(
        self,
        path: str | os.PathLike,
        device: str | None = "CPU",
        threads: int | None = None,
        inference_precision: str = DEFAULT_INFERENCE_PRECISION,
    ):
        core = _core()
        self.device = check_device(device)
        # Latency: one stream with every thread on the one request in flight, as the Detector calls
        # synchronously (throughput streams only pay off with requests in parallel). Threads as ONNX Runtime's
        # intra-op threads.
        config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if self.device == "CPU":
            config["INFERENCE_PRECISION_HINT"] = inference_precision
        try:
            model = core.read_model(os.fspath(path))
            self._compiled = core.compile_model(model, self.device, config)
        except Exception as exc:  # OpenVINO raises RuntimeError with a multi-line C++ trace
            reason = message_of(exc)
            raise BackendUnavailable(f"OpenVINO cannot load {Path(path).name} on {self.device}: {reason}") from None
        self.backend = f"openvino-{self.device.lower()}"
        # What the device actually computes in ("bf16" asked of a CPU without bf16 gives "f32").
        self.inference_precision = (
            self._compiled.get_property("INFERENCE_PRECISION_HINT").to_string()  # an openvino.Type: "f32", "bf16"
            if self.device == "CPU"
            else "device default"
        )
        self._inputs = {
            port.get_any_name(): np.dtype(port.get_element_type().to_dtype()) for port in self._compiled.inputs
        }
        self._outputs = [port.get_any_name() for port in self._compiled.outputs]
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()  # an infer request runs one call at a time

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {name: np.ascontiguousarray(feed[name], dtype=dtype) for name, dtype in self._inputs.items()}
        with self._lock:
            results = self._request.infer(feed)
            # Copies: the request's output tensors are overwritten by its next call.
            values = [np.array(results[port], dtype=np.float32) for port in self._compiled.outputs]
        return dict(zip(self._outputs, values, strict=True))

    def close(self) -> None:
        self._request = None
        self._compiled = None


def openvino_runners(artifact, device: str | None, threads: int | None) -> list[Runner]:
    """One runner per graph of the artifact, in chain order, at the precision its manifest names."""
    precision = INFERENCE_PRECISION.get(artifact.precision, DEFAULT_INFERENCE_PRECISION)
    runners: list[Runner] = []
    try:
        for graph in artifact.graphs:
            runners.append(OpenVinoRunner(artifact.file(graph.file), device, threads, precision))
    except BaseException:
        for runner in runners:
            runner.close()
        raise
    return runners


class OpenVinoBackend(Backend):
    """The artifact's ONNX graphs (or its OpenVINO IR) on OpenVINO's devices.

    Its place in "auto" depends on the artifact and the host (benchmarks/results/openvino-cpu-*.md): first
    among the CPU backends for a precision only it runs (int8-openvino) and for bf16 on a CPU with native
    bf16 (AVX-512-bf16, AMX, ARM bf16), the only CPU runtime that computes in bf16 (1.97x over ONNX Runtime
    fp32 on opensdi-vitl14, Zen 5); after ONNX Runtime otherwise: its fp32 is no faster (1.02x on vitl14,
    Zen 5) and on AVX2 slower (ONNX Runtime about 2x on the demo model), and without native bf16 it would
    run a bf16 artifact in fp32 anyway."""

    name = OPENVINO
    short = "ov"
    rank = 30
    triton_platform = "openvino"
    packages = ("openvino",)

    def probe(self) -> str | None:
        return probe()

    def auto_rank(self, artifact) -> int:
        only_here = precision_row(artifact.precision).backends == (OPENVINO,)
        native_bf16 = artifact.precision == "bf16" and current_host().native_bf16
        return 15 if only_here or native_bf16 else self.rank

    def model_files(self, artifact) -> list[str]:
        files = artifact.manifest.files
        names = [
            name for g in artifact.graphs for name in (g.file, f"{g.file}.data", str(Path(g.file).with_suffix(".bin")))
        ]
        return [name for name in names if name in files]

    def runners(self, artifact, device: str | None, threads: int | None) -> list[Runner]:
        return openvino_runners(artifact, device, threads)


BACKEND = OpenVinoBackend()
