"""Stand-ins for `tensorrt` (one per major version) and cuda-python's runtime, shared by every TensorRT test.

They follow the real APIs where this project touches them, version by version:
- TensorRT 10.x: NetworkDefinitionCreationFlag EXPLICIT_BATCH = 0 (deprecated) and STRONGLY_TYPED = 1;
  BuilderFlag FP16 / INT8 / OBEY_PRECISION_CONSTRAINTS / TF32; `layer.precision`; IInt8EntropyCalibrator2,
  `config.int8_calibrator` and `config.set_calibration_profile`.
- TensorRT 11.x: all networks strongly typed; the precision flags, `layer.precision`, the calibrator and
  the calibration profile are gone (using them raises AttributeError, as the real bindings do).
- Both: `set_timing_cache` returns False for a cache from another GPU / version, and
  `build_serialized_network` returns None when the build fails; BuilderFlag.VERSION_COMPATIBLE and
  `config.hardware_compatibility_level` (HardwareCompatibilityLevel NONE / AMPERE_PLUS /
  SAME_COMPUTE_CAPABILITY) for portable engines; a version-compatible plan deserialises only once
  `runtime.engine_host_code_allowed` is True (it carries the lean runtime), else None, as the real one.
- cuda-python: every call returns (cudaError_t, *values); errors are the real codes and texts; a failed
  call leaves CUDA's last error set until `cudaGetLastError` reads it. "Device" memory is host memory,
  so the runner's copies, bindings and graph capture really run.
The built-in engine computes mask = 2 x image for batches low..high of [3, 4, 4] images.
"""

from __future__ import annotations

import ctypes
import enum
import importlib.machinery
import sys
import types
from pathlib import Path

import numpy as np

SHAPE = (3, 4, 4)
ENGINE_PLAN = b"fake plan"  # the one plan the stand-in Runtime deserialises
VERSION_COMPATIBLE_PLAN = b"fake plan with its lean runtime"  # ... and this one, with host code allowed

# Real cudaError_t values and texts (CUDA runtime API, driver_types.h).
CUDA_ERRORS = {
    0: ("cudaSuccess", "no error"),
    2: ("cudaErrorMemoryAllocation", "out of memory"),
    35: ("cudaErrorInsufficientDriver", "CUDA driver version is insufficient for CUDA runtime version"),
    100: ("cudaErrorNoDevice", "no CUDA-capable device is detected"),
    900: ("cudaErrorStreamCaptureUnsupported", "operation not permitted when stream is capturing"),
    901: ("cudaErrorStreamCaptureInvalidated", "operation failed due to a previous error during capture"),
}
cudaError_t = enum.IntEnum("cudaError_t", {name: code for code, (name, _) in CUDA_ERRORS.items()})  # noqa: N816


class FakeCudart:
    """cuda.bindings.runtime's calling convention. fail: call name -> error code that call returns."""

    cudaError_t = cudaError_t
    cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    cudaStreamCaptureMode = enum.IntEnum(
        "cudaStreamCaptureMode",
        {"cudaStreamCaptureModeGlobal": 0, "cudaStreamCaptureModeThreadLocal": 1, "cudaStreamCaptureModeRelaxed": 2},
    )

    def __init__(
        self, device_count: int = 1, fail: dict[str, int] | None = None, gpu: tuple[str, int, int] = ("Fake GPU", 8, 0)
    ):
        self.device_count = device_count
        self.gpu = gpu  # (name, compute capability major, minor) of every device
        self.fail = dict(fail or {})
        self.buffers: dict[int, ctypes.Array] = {}
        self.capturing: list | None = None
        self.capture_modes: list[int] = []
        self.launches = 0
        self.last_error = cudaError_t.cudaSuccess
        self.graphs_alive = 0

    def _result(self, name: str, *values):
        if name in self.fail:
            self.last_error = cudaError_t(self.fail[name])
            return (self.last_error, *(None for _ in values))
        return (cudaError_t.cudaSuccess, *values)

    def cudaGetErrorName(self, err):  # noqa: N802 - the real names
        return cudaError_t.cudaSuccess, CUDA_ERRORS[int(err)][0].encode()

    def cudaGetErrorString(self, err):  # noqa: N802
        return cudaError_t.cudaSuccess, CUDA_ERRORS[int(err)][1].encode()

    def cudaGetLastError(self):  # noqa: N802
        err, self.last_error = self.last_error, cudaError_t.cudaSuccess
        return (err,)

    def cudaGetDeviceCount(self):  # noqa: N802
        return self._result("cudaGetDeviceCount", self.device_count)

    def cudaGetDeviceProperties(self, device):  # noqa: N802
        return self._result(
            "cudaGetDeviceProperties",
            types.SimpleNamespace(name=self.gpu[0].encode() + b"\x00\x00", major=self.gpu[1], minor=self.gpu[2]),
        )

    def _alloc(self, size):
        buffer = ctypes.create_string_buffer(size)
        self.buffers[ctypes.addressof(buffer)] = buffer
        return self._result("cudaMalloc", ctypes.addressof(buffer))

    cudaMalloc = cudaMallocHost = _alloc  # noqa: N815

    def cudaFree(self, pointer):  # noqa: N802
        self.buffers.pop(pointer)
        return self._result("cudaFree")

    cudaFreeHost = cudaFree  # noqa: N815

    def cudaMemcpy(self, dst, src, count, kind):  # noqa: N802
        ctypes.memmove(dst, src, count)
        return self._result("cudaMemcpy")

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):  # noqa: N802
        ctypes.memmove(dst, src, count)
        return self._result("cudaMemcpyAsync")

    def cudaStreamCreate(self):  # noqa: N802
        return self._result("cudaStreamCreate", 7)

    def cudaStreamBeginCapture(self, stream, mode):  # noqa: N802
        self.capture_modes.append(int(mode))
        self.capturing = []
        return self._result("cudaStreamBeginCapture")

    def cudaStreamEndCapture(self, stream):  # noqa: N802
        work, self.capturing = self.capturing, None
        if "cudaStreamEndCapture" not in self.fail:
            self.graphs_alive += 1
        return self._result("cudaStreamEndCapture", work)

    def cudaGraphInstantiate(self, graph, flags):  # noqa: N802
        return self._result("cudaGraphInstantiate", list(graph))

    def cudaGraphLaunch(self, graph_exec, stream):  # noqa: N802
        self.launches += 1
        for work in graph_exec:
            work()
        return self._result("cudaGraphLaunch")

    def cudaGraphDestroy(self, graph):  # noqa: N802
        self.graphs_alive -= 1
        return self._result("cudaGraphDestroy")

    def cudaSetDevice(self, device):  # noqa: N802
        return self._result("cudaSetDevice")

    def cudaStreamSynchronize(self, stream):  # noqa: N802
        return self._result("cudaStreamSynchronize")

    def cudaStreamDestroy(self, stream):  # noqa: N802
        return self._result("cudaStreamDestroy")

    def cudaGraphExecDestroy(self, graph_exec):  # noqa: N802
        return self._result("cudaGraphExecDestroy")


def device_array(pointer: int, count: int, dtype=np.float32) -> np.ndarray:
    """A numpy view of stand-in "device" memory."""
    return np.ctypeslib.as_array((ctypes.c_uint8 * (count * np.dtype(dtype).itemsize)).from_address(pointer)).view(
        dtype
    )


# --- tensorrt -------------------------------------------------------------------------------------------
# (layer / ONNX node name, TensorRT layer type) of the network every stand-in parser produces.
NETWORK_LAYERS = (("/attn/MatMul", "MATRIX_MULTIPLY"), ("/attn/Softmax", "SOFTMAX"), ("/head/Sigmoid", "ACTIVATION"))
OTHER_GPU_CACHE = b"other-gpu"  # a timing cache whose contents start so was "made elsewhere"


def fake_tensorrt(
    version: str = "10.3.0",
    cudart: FakeCudart | None = None,
    engine_batches: tuple[int, int] = (1, 4),
    build_fails: bool = False,
    record: dict | None = None,
) -> types.ModuleType:
    """A `tensorrt` module of this major version; `record` collects what the builder was asked to do."""
    major = int(version.split(".")[0])
    record = record if record is not None else {}
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # importlib.util.find_spec looks at it
    trt.__version__ = version
    trt.float32, trt.float16 = "float32", "float16"
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, severity: None})
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
    trt.nptype = np.dtype
    trt.HardwareCompatibilityLevel = types.SimpleNamespace(
        NONE="NONE", AMPERE_PLUS="AMPERE_PLUS", SAME_COMPUTE_CAPABILITY="SAME_COMPUTE_CAPABILITY"
    )
    if major < 11:
        trt.BuilderFlag = types.SimpleNamespace(
            FP16="FP16", INT8="INT8", OBEY_PRECISION_CONSTRAINTS="OBEY", TF32="TF32",
            VERSION_COMPATIBLE="VERSION_COMPATIBLE",
        )  # fmt: skip
        trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0, STRONGLY_TYPED=1)

        class IInt8EntropyCalibrator2:
            def __init__(self):
                self.base_initialised = True

        trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
    else:
        trt.BuilderFlag = types.SimpleNamespace(TF32="TF32", VERSION_COMPATIBLE="VERSION_COMPATIBLE")
        trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)

    class Layer:
        # TensorRT 11 has no layer.precision: assigning it fails like on the real bindings.
        __slots__ = ("name", "type", "num_outputs", "output_types", *(("precision",) if major < 11 else ()))

        def __init__(self, name, kind):
            self.name, self.type, self.num_outputs, self.output_types = name, types.SimpleNamespace(name=kind), 1, {}
            if major < 11:
                self.precision = None

        def get_output(self, index):
            return types.SimpleNamespace(dtype=trt.float32)

        def set_output_type(self, index, dtype):
            self.output_types[index] = dtype

    class Network:
        def __init__(self, flags):
            record["network_flags"] = flags
            self.layers = [Layer(name, kind) for name, kind in NETWORK_LAYERS]
            record["layers"] = self.layers
            self.num_inputs = 1

        num_layers = property(lambda self: len(self.layers))

        def get_layer(self, index):
            return self.layers[index]

        def get_input(self, index):
            return types.SimpleNamespace(name="image")

    class Parser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            record.setdefault("parsed", []).append(str(path))
            return True

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, low, opt, high):
            self.shapes[name] = (tuple(low), tuple(opt), tuple(high))

    class TimingCache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return self.data + b"+tuned"

    class Config:
        def __init__(self):
            self.flags, self.cleared, self.profiles = set(), set(), []
            self.timing_cache = None
            self.hardware_compatibility_level = trt.HardwareCompatibilityLevel.NONE
            record["config"] = self

        def set_memory_pool_limit(self, pool, size):
            self.workspace = (pool, size)

        def set_flag(self, flag):
            self.flags.add(flag)

        def clear_flag(self, flag):
            self.cleared.add(flag)

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)

        def create_timing_cache(self, data):
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):
            if cache.data.startswith(OTHER_GPU_CACHE) and not ignore_mismatch:
                return False
            self.timing_cache = cache
            return True

        def get_timing_cache(self):
            return self.timing_cache

    if major < 11:

        def set_calibration_profile(self, profile):
            self.calibration_profile = profile

        Config.set_calibration_profile = set_calibration_profile
        Config.int8_calibrator = None

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calibrator = getattr(config, "int8_calibrator", None)
            if calibrator is not None:
                _calibrate(calibrator, network, record)
            if build_fails:
                return None
            level = config.hardware_compatibility_level
            return (
                b"plan:" + ",".join(sorted(config.flags)).encode() + (b"" if level == "NONE" else f";{level}".encode())
            )

    trt.Builder, trt.OnnxParser = Builder, Parser
    trt.Runtime = _runtime(trt, cudart, *engine_batches)
    return trt


def _calibrate(calibrator, network, record: dict) -> None:
    """What TensorRT does with an entropy calibrator: use its cache, else read batches and write one."""
    if calibrator.read_calibration_cache() is not None:
        record["calibration"] = "from cache"
        return
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    size = calibrator.get_batch_size()
    batches = []
    while (pointers := calibrator.get_batch(names)) is not None:
        batches.append(device_array(pointers[0], size * int(np.prod(SHAPE))).reshape(size, *SHAPE).copy())
    record["calibration"] = batches
    calibrator.write_calibration_cache(b"calibration table")


def _runtime(trt, cudart: FakeCudart | None, low: int, high: int):
    class Context:
        def __init__(self):
            self.shapes, self.addresses, self.executions = {}, {}, 0

        def set_input_shape(self, name, shape):
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            return self.shapes["image"]

        def set_tensor_address(self, name, pointer):
            self.addresses[name] = pointer
            return True

        def _run(self):
            self.executions += 1
            count = int(np.prod(self.shapes["image"]))
            device_array(self.addresses["mask"], count)[:] = 2 * device_array(self.addresses["image"], count)

        def execute_async_v3(self, stream):
            if cudart is not None and cudart.capturing is not None:
                cudart.capturing.append(self._run)
            else:
                self._run()
            return True

    class Engine:
        num_io_tensors = 2

        def __init__(self):
            self.context = Context()

        def get_tensor_name(self, index):
            return ("image", "mask")[index]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == "image" else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return "float32"

        def get_tensor_profile_shape(self, name, profile_index):
            return [(low, *SHAPE), (low, *SHAPE), (high, *SHAPE)]

        def create_execution_context(self):
            return self.context

    class Runtime:
        def __init__(self, logger):
            self.engine_host_code_allowed = False

        def deserialize_cuda_engine(self, plan):
            lean_runtime_allowed = plan == VERSION_COMPATIBLE_PLAN and self.engine_host_code_allowed
            return Engine() if plan == ENGINE_PLAN or lean_runtime_allowed else None

    return Runtime


def install(monkeypatch, version: str = "10.3.0", cudart: FakeCudart | None = None, **options) -> types.SimpleNamespace:
    """Make `import tensorrt` and the project's cuda-python import return stand-ins for this test.

    Returns (trt, cudart, record): the modules and what the builder recorded."""
    import maskclip_runtime.backends.tensorrt as runtime_backend

    cudart = cudart or FakeCudart()
    record: dict = {}
    trt = fake_tensorrt(version, cudart, record=record, **options)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(runtime_backend, "import_cudart", lambda: cudart)
    try:
        import maskclip_export.tensorrt as export_tensorrt
    except ImportError:  # a runtime-only environment: nothing to patch on the export side
        pass
    else:
        monkeypatch.setattr(export_tensorrt, "import_cudart", lambda: cudart)
    return types.SimpleNamespace(trt=trt, cudart=cudart, record=record)


def onnx_engine_runner(broken: bool = False, check_target: bool = False):
    """A TensorRTRunner stand-in for the engine gate and the Detector: it checks the engine file and its
    sidecar, then runs the ONNX graph the engine was built from on ONNX Runtime (CPU); `broken` inverts
    its mask, like a miscompiled engine. The class lists the (engine file name, device) it was opened with.
    check_target: also check the engine against the installed stand-ins' TensorRT version and GPU, as the
    real runner does."""
    import platform

    from maskclip_runtime.backends.onnxruntime import OnnxRuntimeRunner
    from maskclip_runtime.backends.tensorrt import gpu_identity, import_tensorrt
    from maskclip_runtime.contract.engine_header import check_engine_compatible, read_engine_metadata, read_plan

    class OnnxEngineRunner(OnnxRuntimeRunner):
        opened: list[tuple[str, int]] = []

        def __init__(self, engine_path, device=0):
            OnnxEngineRunner.opened.append((Path(engine_path).name, device))
            metadata = read_engine_metadata(engine_path)
            if check_target:
                version = import_tensorrt().__version__
                check_engine_compatible(metadata, version, *gpu_identity(device), platform.machine())
            read_plan(engine_path, metadata)
            super().__init__(Path(engine_path).with_name(metadata["onnx_file"]))
            self.backend = "tensorrt"

        def infer(self, feed):
            out = super().infer(feed)
            return {**out, "mask": 1 - out["mask"]} if broken else out

    return OnnxEngineRunner
