"""TensorRT runner: a maskclip engine file executed through the named-tensor API (TensorRT 10+).

Device memory, pinned host memory, the stream and CUDA graphs come from cuda-python; no torch.
The engine's sidecar is read and checked against the plan, the installed TensorRT and this GPU before
the plan is deserialised, so a mismatch fails with a message instead of a TensorRT crash.
"""

from __future__ import annotations

import ctypes
import os
import platform
import warnings
from collections.abc import Sequence

import numpy as np

from ..contract.artifact import ArtifactError
from ..contract.engine_header import (
    EngineFileError,
    check_engine_compatible,
    engine_compat,
    read_engine_metadata,
    read_plan,
)
from ..contract.manifest import engine_source_problem
from ..contract.precision_table import TENSORRT
from ..errors import BackendUnavailable, install_hint, message_of
from ..kernel.devices import parse_device
from .base import Backend, Runner

TENSORRT_HINT = (
    f"{install_hint('gpu')} (CUDA 13: TensorRT 11) or {install_hint('gpu-cu12')} (CUDA 12: TensorRT 10), "
    "or use the system TensorRT on JetPack"
)
CUDA_PYTHON_HINT = f"{install_hint('gpu')} (cuda-python 13) or {install_hint('gpu-cu12')} / the jetson extra (12)"


def import_tensorrt():
    """The tensorrt module (10 or newer), or BackendUnavailable saying what to install."""
    try:
        import tensorrt as trt
    except ImportError as err:
        raise BackendUnavailable(f"TensorRT is not installed: {TENSORRT_HINT}") from err
    if int(trt.__version__.split(".")[0]) < 10:
        raise BackendUnavailable(
            f"TensorRT {trt.__version__} is too old (the named-tensor API needs 10+): {TENSORRT_HINT}"
        )
    return trt


def import_cudart():
    """cuda-python's runtime module (`cuda.bindings.runtime`, or `cuda.cudart` before cuda-python 12.6)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as err:
            raise BackendUnavailable(f"cuda-python is not installed: {CUDA_PYTHON_HINT}") from err
    return cudart


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def cuda_error_text(cudart, err) -> str:
    """'CUDA error 35 (cudaErrorInsufficientDriver): CUDA driver version is insufficient ...': CUDA's own words."""
    _, name = cudart.cudaGetErrorName(err)
    _, text = cudart.cudaGetErrorString(err)
    return f"CUDA error {int(err)} ({_text(name)}): {_text(text)}"


def cuda_call(cudart, result):
    """Unpack a cuda-python (err, *values) result; raise with CUDA's own error text on failure."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(cuda_error_text(cudart, err))
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def gpu_identity(device: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") of a CUDA device; BackendUnavailable without a usable one
    (with CUDA's reason: no device, driver older than the CUDA that cuda-python was built for, ...)."""
    cudart = import_cudart()
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess:
        raise BackendUnavailable(f"no usable CUDA GPU: {cuda_error_text(cudart, err)}")
    if count == 0:
        raise BackendUnavailable("no CUDA GPU is visible (TensorRT needs an NVIDIA GPU and its driver)")
    if not 0 <= device < count:
        raise ValueError(f"CUDA device {device} does not exist ({count} visible)")
    props = cuda_call(cudart, cudart.cudaGetDeviceProperties(device))
    return _text(props.name).rstrip("\x00").strip(), f"{props.major}.{props.minor}"


class ShapeOutsideProfile(ValueError):
    """An input shape the engine's optimisation profile does not cover."""


def check_input_shape(name: str, shape: Sequence[int], profile: tuple[Sequence[int], Sequence[int], Sequence[int]]):
    """Raise ShapeOutsideProfile unless min <= shape <= max in every dimension (same rank)."""
    low, _, high = profile
    shape = tuple(int(d) for d in shape)
    if len(shape) != len(low) or any(d < lo or d > hi for d, lo, hi in zip(shape, low, high, strict=True)):
        raise ShapeOutsideProfile(
            f"input {name!r} has shape {list(shape)} but the engine's profile accepts {list(low)} .. {list(high)}; "
            "rebuild the engine with a wider --batch range"
        )


def nbytes_of(shape: Sequence[int], dtype) -> int:
    return int(np.prod(tuple(shape), dtype=np.int64)) * np.dtype(dtype).itemsize


def is_static_profile(profiles: dict[str, tuple]) -> bool:
    """True when every input has min == max: one shape, so one captured CUDA graph serves every call."""
    return all(tuple(low) == tuple(high) for low, _, high in profiles.values())


class _PinnedBuffer:
    """Page-locked host memory viewed as a numpy array (fast, asynchronous copies)."""

    def __init__(self, cudart, nbytes: int):
        self._cudart = cudart
        self.nbytes = max(int(nbytes), 1)
        self.ptr = cuda_call(cudart, cudart.cudaMallocHost(self.nbytes))
        self._bytes = np.ctypeslib.as_array((ctypes.c_uint8 * self.nbytes).from_address(self.ptr))

    def view(self, dtype, shape) -> np.ndarray:
        count = int(np.prod(shape, dtype=np.int64))
        return self._bytes[: count * np.dtype(dtype).itemsize].view(dtype).reshape(shape)

    def free(self) -> None:
        if self.ptr:
            cuda_call(self._cudart, self._cudart.cudaFreeHost(self.ptr))
            self.ptr = 0


class _DeviceBuffer:
    def __init__(self, cudart, nbytes: int):
        self._cudart = cudart
        self.nbytes = max(int(nbytes), 1)
        self.ptr = cuda_call(cudart, cudart.cudaMalloc(self.nbytes))

    def free(self) -> None:
        if self.ptr:
            cuda_call(self._cudart, self._cudart.cudaFree(self.ptr))
            self.ptr = 0


class TensorRTRunner(Runner):
    """Runs one engine file; buffers are sized once for the profile's largest shapes."""

    backend = "tensorrt"

    def __init__(self, engine_path: str | os.PathLike, device: int = 0, cuda_graph: bool = True):
        trt = import_tensorrt()
        self._cudart = cudart = import_cudart()
        self.engine_path = str(engine_path)
        self.metadata = read_engine_metadata(engine_path)
        gpu_name, compute_capability = gpu_identity(device)
        check_engine_compatible(self.metadata, trt.__version__, gpu_name, compute_capability, platform.machine())
        cuda_call(cudart, cudart.cudaSetDevice(device))

        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        if "version" in engine_compat(self.metadata):
            # A version-compatible plan carries the lean runtime that deserialises it: host code from the
            # plan file, allowed because the sidecar's hash ties this plan to the artifact that lists it.
            self._runtime.engine_host_code_allowed = True
        self._engine = self._runtime.deserialize_cuda_engine(read_plan(engine_path, self.metadata))
        if self._engine is None:
            raise RuntimeError(f"{engine_path}: TensorRT could not deserialise the plan (see its log above)")
        self._context = self._engine.create_execution_context()
        self._stream = cuda_call(cudart, cudart.cudaStreamCreate())

        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}
        self.profiles = {n: tuple(tuple(s) for s in self._engine.get_tensor_profile_shape(n, 0)) for n in self._inputs}

        # Size every buffer for the largest shapes, then bind the addresses once.
        for name, (_, _, high) in self.profiles.items():
            self._context.set_input_shape(name, high)
        self._device: dict[str, _DeviceBuffer] = {}
        self._host: dict[str, _PinnedBuffer] = {}
        for name in names:
            nbytes = nbytes_of(self._context.get_tensor_shape(name), self._dtypes[name])
            self._device[name] = _DeviceBuffer(cudart, nbytes)
            self._host[name] = _PinnedBuffer(cudart, nbytes)
            self._context.set_tensor_address(name, self._device[name].ptr)

        self._current_shapes: dict[str, tuple[int, ...]] = {}
        self._use_graph = cuda_graph and is_static_profile(self.profiles)
        self._graph = None
        self._graph_exec = None

    def _set_shapes(self, feed: dict[str, np.ndarray]) -> None:
        for name in self._inputs:
            shape = tuple(feed[name].shape)
            check_input_shape(name, shape, self.profiles[name])
            if self._current_shapes.get(name) != shape:
                if not self._context.set_input_shape(name, shape):
                    raise ShapeOutsideProfile(f"TensorRT refused shape {list(shape)} for input {name!r}")
                self._current_shapes[name] = shape

    def _execute(self) -> None:
        if not self._context.execute_async_v3(int(self._stream)):
            raise RuntimeError("TensorRT execute_async_v3 failed (see its log above)")

    def _enqueue(self) -> None:
        cudart = self._cudart
        if self._use_graph and self._graph_exec is None:
            # TensorRT does lazy work on the first enqueue after a shape change; capture only after it.
            self._execute()
            cuda_call(cudart, cudart.cudaStreamSynchronize(self._stream))
            try:
                self._graph, self._graph_exec = self._capture()
            except RuntimeError as err:
                # Some engines (data-dependent shapes, certain plugins) cannot be captured. A failed capture
                # leaves its error as CUDA's last error: clear it, as trtexec does, so that the next checked
                # call does not report it. The warm-up run above already computed this call's outputs.
                cudart.cudaGetLastError()
                warnings.warn(f"CUDA graph capture failed ({err}); running without graphs", stacklevel=3)
                self._use_graph = False
            return
        if self._use_graph:
            cuda_call(cudart, cudart.cudaGraphLaunch(self._graph_exec, self._stream))
        else:
            self._execute()

    def _capture(self) -> tuple[object, object]:
        """(graph, executable graph) of one enqueue. Thread-local capture mode: other threads of the process
        (a memory sampler, another runner) may call CUDA meanwhile without invalidating this capture."""
        cudart = self._cudart
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        cuda_call(cudart, cudart.cudaStreamBeginCapture(self._stream, mode))
        captured = self._context.execute_async_v3(int(self._stream))
        # End the capture whatever happened: a stream left capturing fails every later call on it.
        graph = cuda_call(cudart, cudart.cudaStreamEndCapture(self._stream))
        try:
            if not captured:
                raise RuntimeError("execute_async_v3 failed while capturing")
            return graph, cuda_call(cudart, cudart.cudaGraphInstantiate(graph, 0))
        except RuntimeError:
            cuda_call(cudart, cudart.cudaGraphDestroy(graph))
            raise

    def _copy(self, dst: int, src: int, nbytes: int, kind) -> None:
        cuda_call(self._cudart, self._cudart.cudaMemcpyAsync(dst, src, nbytes, kind, self._stream))

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self._inputs if n not in feed]
        if missing:
            raise KeyError(f"missing inputs {missing}; the engine takes {self._inputs}")
        self._set_shapes(feed)
        cudart = self._cudart
        to_device = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        to_host = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name in self._inputs:
            array = feed[name]
            staged = self._host[name].view(self._dtypes[name], array.shape)
            np.copyto(staged, array, casting="same_kind")
            self._copy(self._device[name].ptr, self._host[name].ptr, staged.nbytes, to_device)
        self._enqueue()
        shapes = {name: tuple(self._context.get_tensor_shape(name)) for name in self._outputs}
        for name in self._outputs:
            nbytes = nbytes_of(shapes[name], self._dtypes[name])
            self._copy(self._host[name].ptr, self._device[name].ptr, nbytes, to_host)
        cuda_call(cudart, cudart.cudaStreamSynchronize(self._stream))
        return {
            name: self._host[name].view(self._dtypes[name], shapes[name]).astype(np.float32, copy=True)
            for name in self._outputs
        }

    def close(self) -> None:
        cudart = self._cudart
        if self._graph_exec is not None:
            cuda_call(cudart, cudart.cudaGraphExecDestroy(self._graph_exec))
            cuda_call(cudart, cudart.cudaGraphDestroy(self._graph))
            self._graph_exec = self._graph = None
        for buffer in (*self._device.values(), *self._host.values()):
            buffer.free()
        self._device.clear()
        self._host.clear()
        if self._stream is not None:
            cuda_call(cudart, cudart.cudaStreamDestroy(self._stream))
            self._stream = None
        self._context = self._engine = None


def _cuda_index(device: str | None) -> int:
    """TensorRT runs on a CUDA GPU: None/'cuda'/'tensorrt' -> 0, 'cuda:N' -> N."""
    parsed = parse_device(device or "cuda")
    if not parsed.gpu:
        raise BackendUnavailable(f"TensorRT needs a CUDA device (cuda or cuda:N), not {device!r}")
    return parsed.index


class TensorRTBackend(Backend):
    """The artifact's TensorRT engines (maskclip-export --trt), checked against their sidecars, on a CUDA GPU."""

    name = TENSORRT
    short = "trt"
    rank = 10  # first in "auto" where the artifact has engines and TensorRT and a GPU are here
    gpu_only = True
    runs_onnx_graphs = False
    triton_platform = "tensorrt_plan"
    packages = ("tensorrt", "tensorrt-cu12", "tensorrt-cu13")

    def probe(self) -> str | None:
        """TensorRT 10+ imports and a CUDA device answers (imports tensorrt: about a second)."""
        try:
            import_tensorrt()
            gpu_identity(0)
        except BackendUnavailable as exc:
            return message_of(exc)
        except (ImportError, RuntimeError, ValueError) as exc:  # a broken install or driver
            return f"TensorRT cannot run here: {message_of(exc)}; {TENSORRT_HINT}"
        return None

    def artifact_problem(self, artifact) -> str | None:
        missing = [g.name for g in artifact.graphs if g.name not in artifact.engines]
        if missing:
            return (
                f"the artifact has no TensorRT engine for graph(s) {', '.join(missing)}; "
                f"export with maskclip-export --trt or use --backend onnxruntime"
            )
        return None

    def model_files(self, artifact) -> list[str]:
        return [name for name in artifact.manifest.files if ".engine" in name]

    def runners(self, artifact, device: str | None, threads: int | None) -> list[Runner]:
        index = _cuda_index(device)
        problem = self.artifact_problem(artifact)
        if problem:
            raise BackendUnavailable(problem)
        engines = artifact.engines
        for graph in artifact.graphs:
            try:
                problem = engine_source_problem(artifact.manifest, graph, read_engine_metadata(engines[graph.name]))
            except EngineFileError as exc:
                problem = str(exc)
            if problem:
                raise ArtifactError(f"{artifact.dir}: {problem}; rebuild the engines with maskclip-export --trt")
        runners: list[Runner] = []
        try:
            for graph in artifact.graphs:
                runners.append(TensorRTRunner(engines[graph.name], device=index))
        except (RuntimeError, ValueError) as exc:  # incompatible or corrupt engine, CUDA error: one clear line
            for runner in runners:
                runner.close()
            if isinstance(exc, BackendUnavailable):
                raise
            raise BackendUnavailable(f"TensorRT cannot run this artifact: {message_of(exc)}") from None
        return runners


BACKEND = TensorRTBackend()
