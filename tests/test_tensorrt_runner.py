"""TensorRTRunner end to end against stand-ins for `tensorrt` and cuda-python's runtime.

The stand-ins keep "device" memory in host buffers and run a fixed engine (mask = 2 x image), so the
runner's own logic runs for real: header and compatibility check, named-tensor binding, buffers
sized for the profile max, pinned staging, shape checks, and CUDA-graph capture and replay.
"""

import ctypes
import sys
import types

import numpy as np
import pytest

import maskclip_runtime.backends.tensorrt as trt_backend
from maskclip_runtime.backends.tensorrt import ShapeOutsideProfile, TensorRTRunner
from maskclip_runtime.engine_header import EngineIncompatibleError, write_engine

SHAPE = (3, 4, 4)


class FakeCudart:
    """cuda.bindings.runtime's calling convention: every call returns (error, *values)."""

    class cudaError_t:  # noqa: N801 - the real enum's name
        cudaSuccess = 0

    cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeGlobal=0)

    def __init__(self):
        self.buffers = {}
        self.capturing = None
        self.launches = 0

    def _alloc(self, size):
        buffer = ctypes.create_string_buffer(size)
        self.buffers[ctypes.addressof(buffer)] = buffer
        return 0, ctypes.addressof(buffer)

    cudaMalloc = cudaMallocHost = _alloc

    def cudaFree(self, pointer):
        self.buffers.pop(pointer)
        return (0,)

    cudaFreeHost = cudaFree

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        ctypes.memmove(dst, src, count)
        return (0,)

    def cudaGetDeviceCount(self):
        return 0, 1

    def cudaGetDeviceProperties(self, device):
        return 0, types.SimpleNamespace(name=b"Fake GPU\x00\x00", major=8, minor=0)

    def cudaGetErrorString(self, err):
        return 0, b"fake failure"

    def cudaStreamCreate(self):
        return 0, 7

    def cudaStreamBeginCapture(self, stream, mode):
        self.capturing = []
        return (0,)

    def cudaStreamEndCapture(self, stream):
        graph, self.capturing = self.capturing, None
        return 0, graph

    def cudaGraphInstantiate(self, graph, flags):
        return 0, list(graph)

    def cudaGraphLaunch(self, graph_exec, stream):
        self.launches += 1
        for work in graph_exec:
            work()
        return (0,)

    def _ok(self, *args):
        return (0,)

    cudaSetDevice = cudaStreamSynchronize = cudaStreamDestroy = cudaGraphDestroy = cudaGraphExecDestroy = _ok


def fake_tensorrt(cudart: FakeCudart, low: int, high: int):
    """A `tensorrt` module whose only engine computes mask = 2 * image for batches low..high."""

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
            image = np.ctypeslib.as_array((ctypes.c_float * count).from_address(self.addresses["image"]))
            mask = np.ctypeslib.as_array((ctypes.c_float * count).from_address(self.addresses["mask"]))
            mask[:] = 2 * image

        def execute_async_v3(self, stream):
            if cudart.capturing is not None:
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
            return module.TensorIOMode.INPUT if name == "image" else module.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return "float32"

        def get_tensor_profile_shape(self, name, profile_index):
            return [(low, *SHAPE), (low, *SHAPE), (high, *SHAPE)]

        def create_execution_context(self):
            return self.context

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, plan):
            return Engine() if plan == b"fake plan" else None

    module = types.ModuleType("tensorrt")
    module.__version__ = "10.3.0"
    module.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, severity: None})
    module.Runtime = Runtime
    module.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
    module.nptype = np.dtype
    return module


@pytest.fixture
def fakes(monkeypatch):
    cudart = FakeCudart()
    monkeypatch.setattr(trt_backend, "import_cudart", lambda: cudart)

    def install(low, high):
        monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(cudart, low, high))
        return cudart

    return install


def _engine(tmp_path, **changes):
    header = {
        "tensorrt_version": "10.3.0",
        "gpu_name": "Fake GPU",
        "compute_capability": "8.0",
        "precision": "fp16",
        "profile": {},
        **changes,
    }
    path = tmp_path / "model.fp16.engine"
    write_engine(path, header, b"fake plan")
    return path


def test_dynamic_batches_run_and_outside_profile_is_refused(tmp_path, fakes):
    cudart = fakes(1, 4)
    with TensorRTRunner(_engine(tmp_path)) as runner:
        assert runner.input_names == ["image"] and runner.output_names == ["mask"]
        for batch in (3, 1, 4):
            image = np.random.default_rng(batch).standard_normal((batch, *SHAPE), dtype=np.float32)
            out = runner.infer({"image": image})
            np.testing.assert_array_equal(out["mask"], 2 * image)
            assert out["mask"].dtype == np.float32
        with pytest.raises(ShapeOutsideProfile, match=r"\[5, 3, 4, 4\]"):
            runner.infer({"image": np.zeros((5, *SHAPE), np.float32)})
        with pytest.raises(KeyError, match="missing inputs"):
            runner.infer({"pixels": image})
    assert cudart.launches == 0  # dynamic shapes: no CUDA graph
    assert not cudart.buffers  # every device and pinned buffer freed


def test_static_profile_replays_a_captured_cuda_graph(tmp_path, fakes):
    cudart = fakes(2, 2)
    runner = TensorRTRunner(_engine(tmp_path))
    for seed in range(3):
        image = np.random.default_rng(seed).standard_normal((2, *SHAPE), dtype=np.float32)
        np.testing.assert_array_equal(runner.infer({"image": image.astype(np.float64)})["mask"], 2 * image)
    assert cudart.launches == 3  # first call: warm-up run + capture, then every call replays the graph
    runner.close()
    assert not cudart.buffers


def test_refuses_engine_from_another_tensorrt_or_gpu(tmp_path, fakes):
    fakes(1, 4)
    with pytest.raises(EngineIncompatibleError, match="TensorRT 10.1.0 but TensorRT 10.3.0"):
        TensorRTRunner(_engine(tmp_path, tensorrt_version="10.1.0"))
    with pytest.raises(EngineIncompatibleError, match="built for NVIDIA H100.*this GPU is Fake GPU"):
        TensorRTRunner(_engine(tmp_path, gpu_name="NVIDIA H100", compute_capability="9.0"))


def test_unreadable_plan_is_reported(tmp_path, fakes):
    fakes(1, 4)
    path = tmp_path / "bad.engine"
    write_engine(path, {"tensorrt_version": "10.3", "gpu_name": "Fake GPU", "compute_capability": "8.0",
                        "precision": "fp32", "profile": {}}, b"corrupt")  # fmt: skip
    with pytest.raises(RuntimeError, match="could not deserialise"):
        TensorRTRunner(path)
