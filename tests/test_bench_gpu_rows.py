"""maskclip-bench's GPU-path rows, checked on the CPU: the early CUDA check, reduced-precision PyTorch rows and
their gate, TensorRT rows whose engine gate refused (stand-ins), and rows that say what actually ran."""

import json

import numpy as np
import pytest
import torch
import trt_standin
from click.testing import CliRunner

from maskclip_bench import memory
from maskclip_bench.bench import BenchSettings, ModelBench
from maskclip_bench.cli import main
from maskclip_bench.pytorch import torch_forward, torch_predictor
from maskclip_bench.report import render_markdown
from maskclip_runtime.errors import EXIT_BACKEND_UNAVAILABLE


def _settings(tmp_path, backends, device="cpu"):
    return BenchSettings(backends, [1], warmup=0, iters=1, device=device, workdir=tmp_path / "work")


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One work folder for the rows that need the tiny fp32 export: it is exported once and reused."""
    return tmp_path_factory.mktemp("bench")


@pytest.fixture(scope="module")
def model():
    from maskclip_core.model import build_model

    torch.manual_seed(0)
    return build_model("tiny").eval()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_cuda_device_without_cuda_fails_first_with_one_line(tmp_path):
    result = CliRunner().invoke(main, ["opensdi-vitl14", "--device", "cuda", "--workdir", str(tmp_path)])
    assert result.exit_code == EXIT_BACKEND_UNAVAILABLE
    assert len([line for line in result.output.splitlines() if "error:" in line]) == 1
    assert not list(tmp_path.iterdir())  # refused before building a model or exporting anything


def test_reduced_precision_torch_rows_and_their_gate(tmp_path, model, one_torch_thread):
    rows = ModelBench("tiny", model, "test", _settings(tmp_path, ["torch", "torch-bf16", "torch-graph"])).rows(
        lambda _: None
    )
    by_backend = {row["backend"]: row for row in rows}
    assert by_backend["torch"]["status"] == "ok" and by_backend["torch"]["parity"] is None
    bf16 = by_backend["torch-bf16"]
    assert bf16["status"] == "ok" and bf16["compute_dtype"] == "bfloat16" and bf16["ran_on"] == "torch-cpu"
    assert by_backend["torch-graph"]["status"] == "unavailable"  # CUDA graphs on the CPU: says why

    # The gate's numbers against an independent run of the same comparison: fp32 vs autocast bf16.
    from maskclip_export.verify import verification_batch

    _, images = verification_batch(model.preprocess_spec())
    reference = torch_predictor(torch_forward(model, "cpu"), "cpu")(images)["fake_prob"]
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        candidate = model(torch.from_numpy(images))["fake_prob"].float().numpy()
    parity = bf16["parity"]
    assert parity["images"] == len(images)
    assert parity["max_prob_diff"] == pytest.approx(float(np.abs(candidate - reference).max()), abs=1e-6)
    assert parity["max_prob_diff"] > 0  # bf16 really ran
    assert isinstance(parity["passed"], bool)


def test_ort_cuda_row_without_the_cuda_provider_is_unavailable(tmp_path, model):
    rows = ModelBench("tiny", model, "test", _settings(tmp_path, ["ort-fp32"], device="cuda")).rows(lambda _: None)
    assert rows[0]["status"] == "unavailable" and "CUDAExecutionProvider" in rows[0]["reason"]
    assert not (tmp_path / "work" / "tiny-fp32").exists()  # no export for a row that cannot run


@pytest.fixture
def fake_gpu_memory(monkeypatch):
    """PeakMemory on 'cuda' reads device memory through torch; here it reads nothing."""
    monkeypatch.setattr(memory, "_gpu_used_bytes", lambda index: 0)


def test_refused_engines_are_timed_and_marked(shared, model, monkeypatch, fake_gpu_memory, one_torch_thread):
    import maskclip_runtime.backends.tensorrt as runtime_backend

    trt_standin.install(monkeypatch, "10.3.0")
    monkeypatch.setattr(runtime_backend, "TensorRTRunner", trt_standin.onnx_engine_runner(broken=True))
    rows = ModelBench("tiny", model, "test", _settings(shared, ["trt-fp32"], device="cuda")).rows(lambda _: None)
    row = rows[0]
    assert row["status"] == "ok", row.get("reason")
    assert row["parity"]["passed"] is False and row["ran_on"] == "tensorrt" and not row["fell_back"]
    assert row["model_ms"]["n"] == 1
    manifest = json.loads((shared / "work" / "tiny-fp32" / "manifest.json").read_text())
    assert manifest["engine_verification"]["passed"] is False  # adopted in the bench's own work folder only
    report = {
        "date": "d",
        "command": "c",
        "environment": {"device": "cuda", "cpu": "c", "cpu_cores": 2, "versions": {}},
        "warmup": 0,
        "iters": 1,
        "batch_sizes": [1],
        "ceilings": [],
        "models": [{"name": "tiny", "description": "d", "image_size": 128, "gflop_per_image": 1.0}],
        "rows": rows,
    }
    assert "| trt-fp32 | 1 | ok, gate refused |" in render_markdown(report)


def test_ort_row_that_fell_back_to_the_cpu_says_so(shared, model, monkeypatch, fake_gpu_memory, one_torch_thread):
    import onnxruntime

    # The provider is offered but fails to initialise (no driver, wrong CUDA): ORT silently uses the CPU.
    offered = [*onnxruntime.get_available_providers(), "CUDAExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: offered)
    rows = ModelBench("tiny", model, "test", _settings(shared, ["ort-fp32"], device="cuda")).rows(lambda _: None)
    row = rows[0]
    assert row["status"] == "ok" and row["ran_on"] == "onnxruntime-cpu" and row["fell_back"]
