"""ONNX Runtime runner: CPU, or the CUDA / TensorRT execution providers when present.

A GPU request that cannot be honoured falls back to CPU with a loud warning instead of failing:
a detector that runs slowly is more useful than none, but nobody should benchmark a silent CPU
fallback and believe it is the GPU.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from ..contract.precision_table import ONNXRUNTIME
from ..errors import BackendUnavailable, InputError, install_hint
from ..kernel.devices import parse_device
from .base import Backend, Runner

log = logging.getLogger("maskclip_runtime")

INSTALL_HINT = f"ONNX Runtime is not installed: {install_hint('cpu')} (or the gpu extra on a CUDA machine)"

# ORT's load errors that mean the file is a broken graph (bad input, status 2), not that this ONNX Runtime
# cannot run it (an op or provider it lacks: backend unavailable, status 4).
BAD_GRAPH_ERRORS = ("InvalidProtobuf", "InvalidGraph", "InvalidArgument", "Fail", "NoSuchFile", "NoModel")

# ONNX element type strings -> numpy dtypes the feed is cast to (fp16 graphs may keep fp16 I/O).
_NUMPY_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,  # pixel input of graphs with the preprocessing baked in (maskclip-triton)
}

# Execution provider -> the short id reported as Runner.backend ("onnxruntime-cuda").
_PROVIDER_IDS = {
    "CPUExecutionProvider": "cpu",
    "CUDAExecutionProvider": "cuda",
    "TensorrtExecutionProvider": "tensorrt",
}


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailable(INSTALL_HINT) from None
    return onnxruntime


def providers_for(device: str, available: list[str]) -> tuple[list, str | None]:
    """Execution providers for a device, best first, and a warning if the request was downgraded."""
    kind, index = parse_device(device)
    wanted = {
        "cpu": [],
        "cuda": ["CUDAExecutionProvider"],
        "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
    }[kind]
    chosen = [(name, {"device_id": index}) for name in wanted if name in available]
    warning = None
    if wanted and not chosen:
        warning = (
            f"WARNING: device {device!r} requested but ONNX Runtime offers only {', '.join(available)}; "
            f"running on CPU (much slower). On a CUDA machine: {install_hint('gpu')}"
        )
    elif len(chosen) < len(wanted):
        warning = f"WARNING: {wanted[0]} is not available; using {chosen[0][0]} instead"
    return [*chosen, "CPUExecutionProvider"], warning


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """A split artifact opens one session per graph; its users need the fallback warning once, not three times."""
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def default_device() -> str:
    """The device used when none is named: CUDA when this ONNX Runtime build offers it, else CPU."""
    return "cuda" if "CUDAExecutionProvider" in _import_onnxruntime().get_available_providers() else "cpu"


class OnnxRuntimeRunner(Runner):
    """One ONNX graph in an InferenceSession."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu", threads: int | None = None):
        ort = _import_onnxruntime()
        providers, warning = providers_for(device, ort.get_available_providers())
        if warning:
            _warn_once(warning)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = int(threads)
        # Idle ORT threads otherwise busy-wait for the next run, taking the cores that decode the
        # next batch meanwhile: measured 1.7x end-to-end images/s on 2 cores with spinning off.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only; provider fallbacks are reported by us
        try:
            self._session = ort.InferenceSession(os.fspath(path), sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own exception classes (Fail, InvalidGraph, ...)
            text = " ".join(str(exc).split())  # all of it: a shape mismatch names its tensor past the first line
            if type(exc).__name__ in BAD_GRAPH_ERRORS:
                raise InputError(f"{path}: not a usable ONNX graph: {text}") from None
            raise BackendUnavailable(f"ONNX Runtime cannot load {path}: {text}") from None
        # A provider can be available yet fail to initialise (no driver, wrong CUDA): ORT then
        # silently drops it, so check what the session actually uses.
        active = self._session.get_providers()[0]
        requested = providers[0] if isinstance(providers[0], str) else providers[0][0]
        if active != requested:
            _warn_once(f"WARNING: {requested} failed to initialise; running on {active}")
        self.provider = active
        self.backend = "onnxruntime-" + _PROVIDER_IDS.get(active, active)
        self._inputs = {i.name: _NUMPY_DTYPES.get(i.type, np.float32) for i in self._session.get_inputs()}
        self._outputs = [o.name for o in self._session.get_outputs()]

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {name: np.ascontiguousarray(feed[name], dtype=dtype) for name, dtype in self._inputs.items()}
        values = self._session.run(self._outputs, feed)
        return {name: np.asarray(value, dtype=np.float32) for name, value in zip(self._outputs, values, strict=True)}

    def close(self) -> None:
        self._session = None


class OnnxRuntimeBackend(Backend):
    """The artifact's ONNX graphs in ONNX Runtime sessions: every artifact, on CPU or (onnxruntime-gpu) CUDA."""

    name = ONNXRUNTIME
    short = "ort"
    rank = 20  # after TensorRT: its engines, when the artifact has them and a GPU is here, are faster
    triton_platform = "onnxruntime_onnx"
    packages = ("onnxruntime", "onnxruntime-gpu")

    def probe(self) -> str | None:
        try:
            _import_onnxruntime()
        except BackendUnavailable as exc:
            return str(exc)
        return None

    def runners(self, artifact, device: str | None, threads: int | None) -> list[Runner]:
        device = device or default_device()
        return [OnnxRuntimeRunner(artifact.file(g.file), device=device, threads=threads) for g in artifact.graphs]


BACKEND = OnnxRuntimeBackend()
