"""benchmarks/polygraphy_check.py offline: Polygraphy's Comparator and OnnxrtRunner for real, the engine's
runner a stand-in (Polygraphy's OnnxrtRunner on the graph the engine was built from, optionally
miscompiled): the report's per-output figures against an independent numpy computation, the verdict, the
exit statuses."""

import dataclasses
import json

import numpy as np
import onnxruntime
import pytest
import trt_standin
from click.testing import CliRunner
from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
from tiny_onnx import onnx_artifact as _artifact

import maskclip_runtime.backends.tensorrt as runtime_backend
from maskclip_bench import polygraphy_check
from maskclip_export.exporter import calibration_feeds
from maskclip_export.tensorrt import build_engines
from maskclip_export.verify import verification_batch
from maskclip_runtime.contract.artifact import load_artifact
from maskclip_runtime.contract.engine_header import read_engine_metadata
from maskclip_runtime.contract.precision_table import PRECISIONS
from maskclip_runtime.errors import EXIT_BACKEND_UNAVAILABLE, EXIT_USAGE, EXIT_VERIFICATION_FAILED

SHIFT = 0.003  # what the "miscompiled" engine adds to its mask: within fp16's 0.01, over fp32's 1e-4


def engine_standin(shift: float = 0.0):
    def make(engine_path, name):
        graph = engine_path.with_name(read_engine_metadata(engine_path)["onnx_file"])

        class Engine(OnnxrtRunner):
            def infer_impl(self, feed_dict):
                outputs = super().infer_impl(feed_dict)
                outputs["mask"] = outputs["mask"] + np.float32(shift)
                return outputs

        return Engine(SessionFromOnnx(str(graph), providers=["CPUExecutionProvider"]), name=name)

    return make


@pytest.fixture
def artifact(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime_backend, "TensorRTRunner", trt_standin.onnx_engine_runner())
    trt_standin.install(monkeypatch, "10.3.0")
    folder = _artifact(tmp_path / "a", precision="fp32")
    build_engines(folder, "fp16", compat=("version",), log=lambda _: None)
    return folder


def test_a_faithful_engine_has_zero_error_on_every_output(artifact):
    report = polygraphy_check.compare_engines(artifact, engine_runner=engine_standin())
    assert report["precision"] == "fp16" and report["atol"] == report["rtol"] == 0.01
    assert report["compat"] == ["version"] and report["engine_gate_passed"] is True
    assert set(report["graphs"]["fused"]) == {"logits", "fake_prob", "mask"}
    assert all(f["max_absdiff"] == 0.0 and f["passed"] for f in report["graphs"]["fused"].values())
    assert report["passed"] and report["images"] > 2
    assert polygraphy_check.compare_engines(artifact, engine_runner=engine_standin(), limit=2)["images"] == 2


def test_the_figures_are_the_engines_error_and_the_verdict_follows_the_tolerance(artifact, monkeypatch):
    report = polygraphy_check.compare_engines(artifact, engine_runner=engine_standin(SHIFT))
    figures = report["graphs"]["fused"]["mask"]
    # Independently: the mask over the same feeds, on ONNX Runtime directly.
    art = load_artifact(artifact)
    _, batch = verification_batch(art.preprocess, None)
    feeds = calibration_feeds(art.graphs, {"fused": art.file("model.onnx")}, batch, art.batch)["fused"]
    session = onnxruntime.InferenceSession(str(art.file("model.onnx")), providers=["CPUExecutionProvider"])
    masks = np.concatenate([session.run(["mask"], feed)[0] for feed in feeds])
    assert figures["max_absdiff"] == pytest.approx(SHIFT, rel=1e-3)
    assert figures["mean_absdiff"] == pytest.approx(SHIFT, rel=1e-3)
    assert figures["max_reldiff"] == pytest.approx(SHIFT / np.abs(masks).min(), rel=1e-2)
    assert figures["passed"] and report["passed"]  # within fp16's 0.01
    assert report["graphs"]["fused"]["fake_prob"]["max_absdiff"] == 0.0
    # The same engine judged at fp32's tolerance (1e-4) is over it.
    fp16 = PRECISIONS["fp16"]
    monkeypatch.setitem(PRECISIONS, "fp16", dataclasses.replace(fp16, gate=PRECISIONS["fp32"].gate))
    report = polygraphy_check.compare_engines(artifact, engine_runner=engine_standin(SHIFT))
    assert not report["graphs"]["fused"]["mask"]["passed"] and not report["passed"]
    assert report["graphs"]["fused"]["logits"]["passed"]


def test_command_writes_the_report_and_exits_3_over_tolerance(artifact, tmp_path, monkeypatch):
    monkeypatch.setattr(polygraphy_check, "trt_runner", engine_standin(0.5))
    result = CliRunner().invoke(polygraphy_check.main, [str(artifact), "--json", str(tmp_path / "p.json")])
    assert result.exit_code == EXIT_VERIFICATION_FAILED, result.output
    assert json.loads((tmp_path / "p.json").read_text())["graphs"]["fused"]["mask"]["max_absdiff"] == 0.5


def test_an_artifact_without_engines_is_a_usage_error(tmp_path):
    folder = _artifact(tmp_path / "plain", precision="fp32")
    result = CliRunner().invoke(polygraphy_check.main, [str(folder)])
    assert result.exit_code == EXIT_USAGE and "Traceback" not in result.output


def test_without_tensorrt_the_command_says_what_to_install(artifact, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt fails, as where it is not installed
    result = CliRunner().invoke(polygraphy_check.main, [str(artifact)])
    assert result.exit_code == EXIT_BACKEND_UNAVAILABLE and ".[gpu]" in result.output
    assert "Traceback" not in result.output
