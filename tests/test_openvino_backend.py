"""The OpenVINO backend on the embedded demo model: parity with ONNX Runtime, device names, the self-check,
and the probe when OpenVINO is not installed. No torch: the demo artifact's graphs and canaries are enough."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from maskclip_runtime import cli as run_cli
from maskclip_runtime.backends import openvino as ov_backend
from maskclip_runtime.backends.registry import BackendChoiceError
from maskclip_runtime.contract.artifact import MANIFEST_NAME, write_manifest
from maskclip_runtime.contract.manifest import Manifest
from maskclip_runtime.detect.detector import DEMO_DIR, Detector
from maskclip_runtime.detect.selfcheck import SelfCheckFailed
from maskclip_runtime.errors import EXIT_BACKEND_UNAVAILABLE, EXIT_USAGE, BackendUnavailable
from maskclip_runtime.kernel.devices import DeviceError, check_device_name, openvino_device

pytest.importorskip("openvino")

EXAMPLES = sorted((DEMO_DIR / "examples").glob("*.jpg"))


def _batch(n: int = 4, seed: int = 0) -> np.ndarray:
    """Normalised images the model has not seen: the demo examples and seeded noise."""
    detector = Detector(backend="onnxruntime", device="cpu", self_check=False)
    tensors = [detector.prepare(Image.open(p).convert("RGB")).tensor for p in EXAMPLES]
    rng = np.random.default_rng(seed)
    size = detector.artifact.preprocess.size
    tensors += [rng.standard_normal((3, size, size), dtype=np.float32) for _ in range(n - len(tensors))]
    detector.close()
    return np.stack(tensors[:n])


def test_fp32_parity_with_onnxruntime_on_the_demo_model():
    batch = _batch()
    with (
        Detector(backend="openvino", device="cpu", batch=4, self_check=False) as ov,
        Detector(backend="onnxruntime", device="cpu", batch=4, self_check=False) as ort,
    ):
        assert ov.backend == "openvino-cpu" and ort.backend == "onnxruntime-cpu"
        ov_prob, ov_mask = ov.forward(batch)
        ort_prob, ort_mask = ort.forward(batch)
    # Two engines, the same fp32 graph: agreement to fp32 rounding, far inside the fp32 gate (1e-4, 1e-3).
    assert np.abs(ov_prob - ort_prob).max() < 1e-5
    assert np.abs(ov_mask - ort_mask).max() < 1e-4
    # ... and not trivially: the images give different answers.
    assert np.ptp(ort_prob) > 1e-3


def test_an_fp32_artifact_is_pinned_to_fp32_arithmetic():
    runner = ov_backend.openvino_runners(Detector(self_check=False).artifact, "cpu", 1)[0]
    assert runner.inference_precision == "f32"


def test_the_self_check_runs_on_openvino_and_refuses_wrong_canaries(tmp_path):
    with Detector(backend="openvino", device="CPU") as detector:
        assert detector.self_check.status == "passed"
        assert detector.self_check.backend == "openvino-cpu"
        assert detector.self_check.max_prob_diff < 1e-4
    # The same artifact with its canaries' reference probabilities moved by 0.2: the check must fail on OpenVINO.
    copy = tmp_path / "demo"
    shutil.copytree(DEMO_DIR, copy)
    data = json.loads((copy / MANIFEST_NAME).read_text())
    for canary in data["self_check"]["canaries"]:
        canary["fake_prob"] = (
            min(1.0, canary["fake_prob"] + 0.2) if canary["fake_prob"] < 0.5 else canary["fake_prob"] - 0.2
        )
    write_manifest(copy, Manifest.from_dict(data))
    with pytest.raises(SelfCheckFailed):
        Detector(copy, backend="openvino", device="cpu")


@pytest.mark.parametrize("device", ["GPU", "npu", "GPU.1"])
def test_a_device_this_machine_lacks_fails_in_one_line(device):
    available = ov_backend._core().available_devices
    if any(a.split(".")[0] == device.upper().split(".")[0] for a in available):
        pytest.skip(f"this machine has {device}")
    with pytest.raises(BackendUnavailable, match=r"OpenVINO has no device .* \(available: .*CPU"):
        Detector(backend="openvino", device=device, self_check=False)


def test_device_names():
    assert openvino_device(None) == "CPU"
    assert openvino_device(" gpu.1 ") == "GPU.1"
    for bad in ("cuda:0", "GPU.x", "../CPU", "", "C P U"):
        with pytest.raises(DeviceError):
            openvino_device(bad)
    check_device_name("NPU")  # accepted by the CLI grammar; the backend decides
    check_device_name("cuda:1")
    with pytest.raises(DeviceError):
        check_device_name("gpu:one")


def test_cli_exit_statuses_for_devices():
    image = str(EXAMPLES[0])
    result = CliRunner().invoke(run_cli.main, [image, "--backend", "openvino", "--device", "NPU.7"])
    assert result.exit_code == EXIT_BACKEND_UNAVAILABLE, result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(run_cli.main, [image, "--backend", "openvino", "--device", "npu:seven"])
    assert result.exit_code == EXIT_USAGE, result.output
    result = CliRunner().invoke(run_cli.main, [image, "--backend", "openvino", "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[0])["backend"] == "openvino-cpu"


def test_an_onnxruntime_only_precision_is_refused_on_openvino(tmp_path):
    copy = tmp_path / "demo"
    shutil.copytree(DEMO_DIR, copy)
    manifest = Manifest.from_dict(json.loads((copy / MANIFEST_NAME).read_text()))
    write_manifest(copy, manifest.replace(identity=dataclasses.replace(manifest.identity, precision="int8-cpu")))
    with pytest.raises(BackendChoiceError, match="int8-cpu artifacts run on onnxruntime"):
        Detector(copy, backend="openvino", self_check=False)


@pytest.fixture
def without_openvino(monkeypatch):
    """As if OpenVINO were not installed: `import openvino` raises ImportError."""
    ov_backend._core.cache_clear()
    monkeypatch.setitem(sys.modules, "openvino", None)
    yield
    ov_backend._core.cache_clear()


def test_the_probe_says_what_is_missing_and_how_to_install_it(without_openvino):
    message = ov_backend.probe()
    assert message is not None and "\n" not in message
    assert 'pip install -c constraints.txt -e ".[openvino]"' in message
    with pytest.raises(BackendUnavailable):
        Detector(backend="openvino", self_check=False)
    result = CliRunner().invoke(run_cli.main, [str(EXAMPLES[0]), "--backend", "openvino"])
    assert result.exit_code == EXIT_BACKEND_UNAVAILABLE
    # ONNX Runtime and auto on an fp32 artifact do not need it.
    assert Detector(self_check=False).backend == "onnxruntime-cpu"


def test_the_probe_is_none_where_openvino_is_installed():
    assert ov_backend.probe() is None
