"""maskclip-bench pieces: statistics, FLOP arithmetic, targets, report rendering, and a tiny end-to-end run."""

import dataclasses
import importlib.util
import json
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from maskclip_bench.cli import main
from maskclip_bench.memory import PeakMemory
from maskclip_bench.report import _row_line, evaluate_targets, render_markdown, write_markdown
from maskclip_bench.roofline import GemmCeiling, best_ceiling, gflops, matmul_flops
from maskclip_bench.samples import sample_images
from maskclip_bench.timing import achieved_gflops, percentiles, time_calls
from maskclip_runtime.command import write_json
from maskclip_runtime.errors import EXIT_BACKEND_UNAVAILABLE, EXIT_USAGE


def test_percentiles_match_numpy():
    samples = np.random.default_rng(0).gamma(2.0, 10.0, size=101)
    stats = percentiles(samples)
    for key, q in (("p50", 50), ("p90", 90), ("p99", 99)):
        assert stats[key] == pytest.approx(np.percentile(samples, q))
    assert stats["mean"] == pytest.approx(samples.mean())
    assert stats["n"] == 101


def test_time_calls_counts_warmup_and_iterations():
    calls = []
    samples = time_calls(lambda: calls.append(1), warmup=2, iters=5)
    assert len(calls) == 7 and len(samples) == 5 and all(s >= 0 for s in samples)


def test_gflops_arithmetic():
    assert matmul_flops(1000) == 2_000_000_000
    assert gflops(2e9, 0.5) == pytest.approx(4.0)
    # 500 GFLOP per image, batch 8, 4 s per batch -> 1000 GFLOP/s
    assert achieved_gflops(500_000_000_000, 8, 4000.0) == pytest.approx(1000.0)


def test_image_flops_are_one_cached_eager_forward(tiny_model):
    """The per-image count equals FlopCounterMode on an eager forward once the text embeddings are cached
    (what the graphs compute: T is a constant there), and leaves the one-off text pass out."""
    from torch.utils.flop_counter import FlopCounterMode

    from maskclip_bench.bench import image_flops

    x = torch.zeros(1, 3, tiny_model.config.image_size, tiny_model.config.image_size)
    with torch.inference_mode():
        tiny_model(x)  # fills the text cache
        with FlopCounterMode(display=False) as counter:
            tiny_model(x)
        with FlopCounterMode(display=False) as text:
            tiny_model.compute_text_embeddings()
    assert image_flops(tiny_model) == counter.get_total_flops()
    assert text.get_total_flops() > 0


def test_best_ceiling_picks_fastest_of_dtype_and_device():
    ceilings = [
        GemmCeiling("numpy", "float32", "cpu", 2048, 0.1, 170.0),
        GemmCeiling("torch", "float32", "cpu", 2048, 0.1, 160.0),
        GemmCeiling("torch", "bfloat16", "cpu", 2048, 0.05, 400.0),
        GemmCeiling("torch", "float16", "cuda:0", 8192, 0.01, 250_000.0),
    ]
    assert best_ceiling(ceilings, "float32", "cpu").library == "numpy"
    assert best_ceiling(ceilings, "float16", "cuda").gflops == 250_000.0
    assert best_ceiling(ceilings, "float16", "cpu") is None


def test_peak_memory_sees_an_allocation():
    with PeakMemory() as memory:
        block = np.ones(64 * 1024 * 1024 // 8)  # 64 MB, touched
        block.sum()
    assert memory.peak_mb > 30
    del block


def _row(backend, p50, gflop_s=None, status="ok", reason=""):
    row = {"model": "opensdi-vitl14", "backend": backend, "batch": 1, "status": status}
    if status != "ok":
        return {**row, "reason": reason}
    stats = {"p50": p50, "p90": p50 * 1.1, "p99": p50 * 1.2, "mean": p50, "n": 5}
    return {
        **row,
        "model_ms": stats,
        "e2e_ms": stats,
        "images_per_s": 1e3 / p50,
        "gflops": gflop_s,
        "ceiling_fraction": gflop_s / 200.0 if gflop_s else None,
        "peak_memory_mb": 100.0,
        "artifact_mb": 2000.0,
        "build_s": 60.0,
        "parity": {"max_prob_diff": 1e-6, "flips": 0, "mask_iou": 1.0} if backend != "torch" else None,
    }


def _report(rows):
    return {
        "date": "2026-11-29T00:00:00+00:00",
        "command": "maskclip-bench opensdi-vitl14",
        "environment": {
            "device": "CPU (2 cores)",
            "cpu": "Test CPU",
            "cpu_cores": 2,
            "gpu": None,
            "versions": {"torch": "x", "onnxruntime": "y"},
        },
        "warmup": 1,
        "iters": 5,
        "batch_sizes": [1],
        "ceilings": [GemmCeiling("numpy", "float32", "cpu", 2048, 0.1, 200.0).to_dict()],
        "ceiling_fp32_gflops": 200.0,
        "models": [{"name": "opensdi-vitl14", "description": "random", "image_size": 512, "gflop_per_image": 500.0}],
        "rows": rows,
        "notes": ["weights are random"],
    }


def test_targets_met_and_missed():
    report = _report([_row("torch", 3000.0), _row("ort-fp32", 2400.0, 180.0), _row("ort-int8", 1200.0)])
    checks = {c["name"]: c for c in evaluate_targets(report)}
    speedup = checks["ORT fp32 speed-up over PyTorch eager"]
    assert speedup["measured"] == pytest.approx(1.25) and speedup["met"]
    int8 = checks["ORT int8 (ort-int8) speed-up over ORT fp32"]
    assert int8["measured"] == pytest.approx(2.0) and not int8["met"]
    assert int8["note"] == "missed by 1.25x (rows' p50 ratio)"
    ceiling = checks["fp32 GEMM ceiling / ORT fp32 achieved GFLOP/s"]
    assert ceiling["measured"] == pytest.approx(1.111, abs=1e-3) and ceiling["met"]


def test_int8_target_takes_the_faster_int8_graph():
    rows = [_row("ort-fp32", 3000.0, 180.0), _row("ort-int8", 1800.0), _row("ort-int8-cpu", 1150.0)]
    checks = evaluate_targets(_report(rows))
    int8 = next(c for c in checks if c["name"].startswith("ORT int8"))
    assert int8["name"] == "ORT int8 (ort-int8-cpu) speed-up over ORT fp32"
    assert int8["measured"] == pytest.approx(3000 / 1150, abs=1e-3) and int8["met"]


def test_targets_prefer_the_paired_measurement():
    report = _report([_row("ort-fp32", 3000.0, 180.0), _row("ort-int8-cpu", 1250.0)])  # rows: 2.4x
    pair = {"slow": "ort-fp32", "fast": "ort-int8-cpu", "batch": 1, "pairs": 9, "speedup_median": 2.6,
            "speedup_min": 2.3, "speedup_max": 2.8, "slow_ms_median": 2900.0, "fast_ms_median": 1115.0}  # fmt: skip
    report["models"][0]["paired"] = [pair]
    int8 = next(c for c in evaluate_targets(report) if c["name"].startswith("ORT int8"))
    assert int8["measured"] == 2.6 and int8["met"]
    assert int8["note"] == "met (median of 9 paired calls; rows' p50 ratio 2.40)"
    markdown = render_markdown({**report, "targets": [int8]})
    assert "| opensdi-vitl14 | ort-fp32 | ort-int8-cpu | 1 | 9 | 2,900.0 | 1,115.0 | 2.60 (2.30 - 2.80) |" in markdown


def test_paired_speedup_alternates_and_takes_the_median_ratio():
    from maskclip_bench.timing import paired_speedup

    calls = []

    def fake(name, seconds):
        def call():
            calls.append(name)
            time.sleep(seconds)

        return call

    result = paired_speedup(fake("slow", 0.02), fake("fast", 0.005), pairs=4)
    assert calls[:2] == ["slow", "fast"]  # the warm-up
    assert calls[2:] == ["slow", "fast", "fast", "slow", "slow", "fast", "fast", "slow"]
    assert result["pairs"] == 4 and 2.0 < result["speedup_median"] < 4.5
    assert result["speedup_min"] <= result["speedup_median"] <= result["speedup_max"]


def test_a_refused_artifact_is_marked_in_its_row_and_the_notes():
    refused = _row("ort-int8", 1200.0)
    refused["parity"] = {"max_prob_diff": 0.01, "flips": 0, "mask_iou": 0.86, "passed": False,
                         "failures": ["mask IoU mean 0.8600 < 0.9"]}  # fmt: skip
    markdown = render_markdown(_report([_row("ort-fp32", 2400.0, 180.0), refused]))
    assert "| ort-int8 | 1 | ok, gate refused | 1,200.0" in markdown
    assert "opensdi-vitl14 ort-int8: the export gate refused this artifact (mask IoU mean 0.8600 < 0.9)" in markdown
    assert "| ort-fp32 | 1 | ok |" in markdown


def test_bench_times_an_artifact_its_gate_refused(tmp_path, monkeypatch):
    """A refused export is installed in the work folder with its refusal, loads, and reports passed: false."""
    from maskclip_bench.artifacts import export_artifact, gate_parity
    from maskclip_core.model import build_model
    from maskclip_runtime.contract.artifact import load_artifact
    from maskclip_runtime.contract.precision_table import PRECISIONS, Tolerances

    refusing = Tolerances(max_prob_diff=-1.0, max_flip_rate=0.0, min_mask_iou=None)
    monkeypatch.setitem(PRECISIONS, "fp32", dataclasses.replace(PRECISIONS["fp32"], gate=refusing))
    torch.manual_seed(0)
    out = tmp_path / "tiny-fp32"
    export_artifact(build_model("tiny").eval(), "fp32", out, 1, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-fp32"]
    load_artifact(out)
    parity = gate_parity(out, "onnxruntime")
    assert parity["passed"] is False and parity["failures"][0].startswith("max |fake_prob| diff")


def test_targets_with_missing_row():
    checks = evaluate_targets(_report([_row("torch", 3000.0)]))
    assert all(not c["met"] and c["measured"] is None for c in checks)


def test_markdown_has_every_row_and_the_unavailable_reason(tmp_path):
    rows = [
        _row("torch", 3000.0, 166.0),
        _row("ort-fp32", 2400.0, 180.0),
        _row("trt-fp16", None, status="unavailable", reason="TensorRT is not installed: pip install 'maskclip[gpu]'"),
    ]
    report = _report(rows)
    report["targets"] = evaluate_targets(report)
    markdown = render_markdown(report)
    assert "| trt-fp16 | 1 | unavailable: TensorRT is not installed" in markdown
    assert "| ort-fp32 | 1 | ok | 2,400.0 / 2,640.0 / 2,880.0 |" in markdown
    assert "Test CPU (2 cores)" in markdown and "`maskclip-bench opensdi-vitl14`" in markdown
    assert "## Targets" in markdown and "weights are random" in markdown
    table_lines = [line for line in markdown.splitlines() if line.startswith("| t") or line.startswith("| o")]
    assert len({line.count("|") for line in table_lines}) == 1  # every row has the header's column count
    write_json(report, str(tmp_path / "r.json"))
    write_markdown(tmp_path / "r.md", markdown)
    assert json.loads((tmp_path / "r.json").read_text())["rows"][2]["status"] == "unavailable"
    assert (tmp_path / "r.md").read_text() == markdown
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.md"]


def test_sample_images_are_decodable_jpegs(tmp_path):
    from maskclip_runtime.kernel.preprocess import load_image

    paths = sample_images(tmp_path, 2)
    assert [load_image(p).size for p in paths] == [(640, 480), (640, 480)]


def test_cli_on_tiny_torch_row(tmp_path):
    torch.manual_seed(0)
    args = ["tiny", "--backends", "torch", "--batch-sizes", "1,2", "--warmup", "0", "--iters", "2"]
    args += ["--out", str(tmp_path / "r"), "--json", str(tmp_path / "r.json"), "--workdir", str(tmp_path / "w")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    rows = {(r["backend"], r["batch"]): r for r in report["rows"]}
    assert rows["torch", 1]["status"] == "ok" and rows["torch", 2]["status"] == "ok"
    assert rows["torch", 2]["gflops"] > 0 and rows["torch", 2]["ceiling_fraction"] > 0
    assert json.loads((tmp_path / "r" / "bench.json").read_text()) == report  # --name's default
    assert "## tiny" in (tmp_path / "r" / "bench.md").read_text()


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="checks the row without TensorRT")
def test_unavailable_tensorrt_row_says_why(tmp_path):
    from maskclip_bench.bench import BenchSettings, ModelBench
    from maskclip_core.model import build_model

    settings = BenchSettings(["trt-fp16"], [1], warmup=0, iters=1, device="cpu", workdir=tmp_path / "w")
    rows = ModelBench("tiny", build_model("tiny"), "test", settings).rows(lambda _: None)
    assert [(r["backend"], r["status"]) for r in rows] == [("trt-fp16", "unavailable")]
    assert 'pip install -c constraints.txt -e ".[gpu]"' in rows[0]["reason"]
    assert not (tmp_path / "w" / "tiny-fp16").exists()  # refused before the export
    assert "unavailable: TensorRT is not installed" in _row_line(rows[0])


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="checks the refusal without TensorRT")
def test_cli_refuses_named_tensorrt_rows_before_any_work(tmp_path):
    started = time.perf_counter()
    args = ["tiny", "--backends", "torch,trt-fp16", "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "r")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == EXIT_BACKEND_UNAVAILABLE and result.output.count("\n") == 1, result.output
    assert "pip install" in result.output and not (tmp_path / "w").exists() and not (tmp_path / "r").exists()
    assert time.perf_counter() - started < 10


def test_cli_rejects_unknown_backend():
    result = CliRunner().invoke(main, ["tiny", "--backends", "torch,tflite"])
    assert result.exit_code == EXIT_USAGE and "Traceback" not in result.output


def test_cli_refuses_an_unknown_model_before_any_work(tmp_path):
    result = CliRunner().invoke(main, ["nope", "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "r")])
    assert result.exit_code == EXIT_USAGE and result.output.count("\n") == 1, result.output
    assert list(tmp_path.iterdir()) == []


def test_int8_target_follows_the_measured_cpu(monkeypatch):
    from maskclip_bench import roofline
    from maskclip_bench.report import ORT_INT8_SPEEDUP, ORT_INT8_SPEEDUP_WITHOUT_VNNI, int8_speedup_target
    from maskclip_runtime.kernel.host import Host

    assert int8_speedup_target({"environment": {"cpu_features": ["avx2", "avx512_vnni"]}}) == ORT_INT8_SPEEDUP
    assert int8_speedup_target({"environment": {"cpu_features": ["avx2", "fma"]}}) == ORT_INT8_SPEEDUP_WITHOUT_VNNI
    # The ceiling step measures bf16 only where the CPU runs it natively (emulated it takes minutes).
    measured = []
    monkeypatch.setattr(roofline, "numpy_ceiling", lambda n, r: measured.append("numpy"))
    monkeypatch.setattr(roofline, "torch_ceiling", lambda dtype, device, n, r: measured.append(dtype))
    monkeypatch.setattr(roofline, "current_host", lambda: Host("x86_64", "c", 2, ("avx2",), True))
    roofline.measure_ceilings("cpu")
    assert measured == ["numpy", "float32"]
    monkeypatch.setattr(roofline, "current_host", lambda: Host("x86_64", "c", 2, ("avx512_bf16",), True))
    roofline.measure_ceilings("cpu")
    assert measured[2:] == ["numpy", "float32", "bfloat16"]
