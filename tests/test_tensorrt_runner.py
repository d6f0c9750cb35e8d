"""TensorRTRunner end to end against the TensorRT and cuda-python stand-ins (tests/trt_standin.py).

The stand-ins keep "device" memory in host buffers and run a fixed engine (mask = 2 x image), so the
runner's own logic runs for real: sidecar, plan hash and compatibility checks, named-tensor binding,
buffers sized for the profile max, pinned staging, shape checks, CUDA-graph capture and replay, and
CUDA's error codes.
"""

import numpy as np
import pytest
import trt_standin
from trt_standin import ENGINE_PLAN, SHAPE, FakeCudart

from maskclip_runtime.backends.tensorrt import ShapeOutsideProfile, TensorRTRunner
from maskclip_runtime.contract.engine_header import EngineFileError, EngineIncompatibleError, sidecar_path, write_engine
from maskclip_runtime.errors import BackendUnavailable


@pytest.fixture
def standins(monkeypatch):
    def install(low=1, high=4, cudart=None):
        return trt_standin.install(monkeypatch, "10.3.0", cudart, engine_batches=(low, high)).cudart

    return install


def _engine(tmp_path, plan=ENGINE_PLAN, **changes):
    metadata = {
        "tensorrt_version": "10.3.0",
        "gpu_name": "Fake GPU",
        "compute_capability": "8.0",
        "precision": "fp16",
        "profile": {},
        **changes,
    }
    path = tmp_path / "model.fp16.engine"
    write_engine(path, metadata, plan)
    return path


def _image(batch, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, *SHAPE), dtype=np.float32)


def test_dynamic_batches_run_and_outside_profile_is_refused(tmp_path, standins):
    cudart = standins(1, 4)
    with TensorRTRunner(_engine(tmp_path)) as runner:
        assert runner.input_names == ["image"] and runner.output_names == ["mask"]
        for batch in (3, 1, 4):
            image = _image(batch, batch)
            out = runner.infer({"image": image})
            np.testing.assert_array_equal(out["mask"], 2 * image)
            assert out["mask"].dtype == np.float32
        with pytest.raises(ShapeOutsideProfile, match=r"\[5, 3, 4, 4\]"):
            runner.infer({"image": np.zeros((5, *SHAPE), np.float32)})
        with pytest.raises(KeyError, match="missing inputs"):
            runner.infer({"pixels": image})
    assert cudart.launches == 0 and not cudart.capture_modes  # dynamic shapes: no CUDA graph
    assert not cudart.buffers  # every device and pinned buffer freed


def test_static_profile_replays_a_thread_local_cuda_graph(tmp_path, standins):
    cudart = standins(2, 2)
    runner = TensorRTRunner(_engine(tmp_path))
    for seed in range(3):
        image = _image(2, seed)
        np.testing.assert_array_equal(runner.infer({"image": image.astype(np.float64)})["mask"], 2 * image)
    # First call: a plain warm-up run (its outputs are returned) and the capture; then every call replays.
    assert cudart.launches == 2
    # Thread-local: a memory sampler calling CUDA from another thread cannot invalidate the capture.
    assert cudart.capture_modes == [int(cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)]
    runner.close()
    assert not cudart.buffers and cudart.graphs_alive == 0


def test_failed_capture_clears_cuda_error_and_runs_without_graphs(tmp_path, standins):
    invalidated = trt_standin.cudaError_t.cudaErrorStreamCaptureInvalidated
    cudart = standins(2, 2, FakeCudart(fail={"cudaStreamEndCapture": invalidated}))
    with TensorRTRunner(_engine(tmp_path)) as runner:
        with pytest.warns(UserWarning, match="cudaErrorStreamCaptureInvalidated"):
            first = runner.infer({"image": _image(2, 0)})
        assert cudart.last_error == trt_standin.cudaError_t.cudaSuccess  # cleared, as trtexec does
        np.testing.assert_array_equal(first["mask"], 2 * _image(2, 0))
        for seed in (1, 2):
            np.testing.assert_array_equal(runner.infer({"image": _image(2, seed)})["mask"], 2 * _image(2, seed))
    assert cudart.launches == 0 and len(cudart.capture_modes) == 1  # one try, then plain execution
    assert cudart.graphs_alive == 0


@pytest.mark.parametrize(
    ("fail", "device_count", "reason"),
    [
        ({"cudaGetDeviceCount": 35}, 1, "CUDA error 35 (cudaErrorInsufficientDriver)"),
        ({"cudaGetDeviceCount": 100}, 0, "CUDA error 100 (cudaErrorNoDevice)"),
        ({}, 0, "no CUDA GPU is visible"),
    ],
)
def test_unusable_cuda_says_cudas_reason(tmp_path, standins, fail, device_count, reason):
    standins(1, 4, FakeCudart(device_count=device_count, fail=fail))
    with pytest.raises(BackendUnavailable) as caught:
        TensorRTRunner(_engine(tmp_path))
    assert reason in str(caught.value) and "\n" not in str(caught.value)


def test_cuda_errors_after_start_carry_cudas_code(tmp_path, standins):
    standins(1, 4, FakeCudart(fail={"cudaMalloc": 2}))
    with pytest.raises(RuntimeError, match=r"CUDA error 2 \(cudaErrorMemoryAllocation\): out of memory"):
        TensorRTRunner(_engine(tmp_path))


def test_refuses_engine_from_another_tensorrt_or_gpu(tmp_path, standins):
    standins(1, 4)
    with pytest.raises(EngineIncompatibleError, match="TensorRT 10.1.0 but TensorRT 10.3.0"):
        TensorRTRunner(_engine(tmp_path, tensorrt_version="10.1.0"))
    with pytest.raises(EngineIncompatibleError, match="built for NVIDIA H100.*this GPU is Fake GPU"):
        TensorRTRunner(_engine(tmp_path, gpu_name="NVIDIA H100", compute_capability="9.0"))


def test_refuses_a_plan_without_its_sidecar_or_with_another_plan(tmp_path, standins):
    standins(1, 4)
    path = _engine(tmp_path)
    path.write_bytes(ENGINE_PLAN + b" replaced")
    with pytest.raises(EngineFileError, match="sha256"):
        TensorRTRunner(path)
    sidecar_path(path).unlink()
    with pytest.raises(EngineFileError, match="no model.fp16.engine.json"):
        TensorRTRunner(path)


def test_unreadable_plan_is_reported(tmp_path, standins):
    standins(1, 4)
    with pytest.raises(RuntimeError, match="could not deserialise"):
        TensorRTRunner(_engine(tmp_path, plan=b"corrupt"))
