"""maskclip-triton: model repositories for Triton (config.pbtxt, version folder, model file), ensembles for
split artifacts, plain plans from engines, and the uint8 graph with the preprocessing baked in, checked
against the numpy preprocessing and against an independent numpy computation of the stand-in model."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from standin_artifact import build_standin_artifact, expected_standin_output, sample_photos, sha256_of

from maskclip_export import triton as triton_repo
from maskclip_runtime import cli as run_cli
from maskclip_runtime.backends.onnxruntime import OnnxRuntimeRunner
from maskclip_runtime.contract.engine_header import write_engine
from maskclip_runtime.errors import EXIT_VERIFICATION_FAILED
from maskclip_runtime.kernel.preprocess import PreprocessSpec, resize_rgb8


def invoke(*args) -> tuple[int, str]:
    result = CliRunner().invoke(triton_repo.main, [str(a) for a in args] + ["--quiet"])
    return result.exit_code, result.stderr


def config_fields(text: str) -> dict:
    """The top-level scalar fields and tensor names of a config.pbtxt."""
    return {
        "name": re.search(r'^name: "(.*)"', text, re.M).group(1),
        "platform": re.search(r'^platform: "(.*)"', text, re.M).group(1),
        "max_batch_size": int(re.search(r"^max_batch_size: (\d+)", text, re.M).group(1)),
        "tensors": re.findall(r'^    name: "(.*)"', text, re.M),
    }


def parse_with_tritons_proto(text: str):
    """Triton's own ModelConfig message, where tritonclient is installed (the triton extra)."""
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient not installed")
    from google.protobuf import text_format

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_demo_artifact_becomes_an_onnxruntime_model(tmp_path):
    code, stderr = invoke(run_cli.DEMO_DIR, "--out", tmp_path)
    assert code == 0, stderr
    manifest = json.loads((run_cli.DEMO_DIR / "manifest.json").read_text())
    model = tmp_path / "maskclip" / "1" / "model.onnx"
    assert hashlib.sha256(model.read_bytes()).hexdigest() == manifest["files"]["model.onnx"]
    text = (tmp_path / "maskclip" / "config.pbtxt").read_text()
    fields = config_fields(text)
    assert fields == {
        "name": "maskclip",
        "platform": "onnxruntime_onnx",
        "max_batch_size": manifest["batch"]["max"],
        "tensors": ["image", "logits", "fake_prob", "mask"],
    }
    assert "dims: [ 3, 128, 128 ]" in text and "dims: [ 1, 128, 128 ]" in text
    assert "max_queue_delay_microseconds: 5000" in text
    assert not list(tmp_path.rglob("*.tmp"))


def test_configs_parse_as_tritons_model_config(tmp_path):
    demo = triton_repo.load_artifact(run_cli.DEMO_DIR)
    split = triton_repo.load_artifact(build_standin_artifact(tmp_path / "split", "split"))
    batching = triton_repo.Batching.from_artifact(demo)
    fused = parse_with_tritons_proto(
        triton_repo.model_config("maskclip", "onnxruntime_onnx", demo.graphs[0], batching, False, 5.0)
    )
    assert [list(t.dims) for t in fused.output] == [[2], [1], [1, 128, 128]]
    assert list(fused.output[1].reshape.shape) == [] and fused.output[1].HasField("reshape")
    assert fused.dynamic_batching.max_queue_delay_microseconds == 5000
    ensemble = parse_with_tritons_proto(
        triton_repo.ensemble_config("standin", split.graphs, triton_repo.Batching.from_artifact(split), True)
    )
    assert ensemble.platform == "ensemble"
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == ["standin_features", "standin_heads"]
    assert dict(ensemble.ensemble_scheduling.step[0].input_map) == {"image_rgb8": "image_rgb8"}
    assert ensemble.input[0].name == "image_rgb8" and list(ensemble.input[0].dims) == [32, 32, 3]


def test_split_artifact_becomes_an_ensemble_chained_by_tensor_name(tmp_path):
    artifact = build_standin_artifact(
        tmp_path / "split", "split", batch={"dynamic": True, "min": 1, "opt": 4, "max": 8}
    )
    written = triton_repo.write_repository(artifact, tmp_path / "repo", name="det")
    assert sorted(p.name for p in written) == ["det", "det_features", "det_heads"]
    assert (tmp_path / "repo" / "det" / "1").is_dir()  # Triton wants the ensemble's version folder too
    ensemble = (tmp_path / "repo" / "det" / "config.pbtxt").read_text()
    assert config_fields(ensemble) == {
        "name": "det",
        "platform": "ensemble",
        "max_batch_size": 8,
        "tensors": ["image", "logits", "fake_prob", "mask"],
    }
    steps = re.findall(r'model_name: "(\w+)"', ensemble)
    assert steps == ["det_features", "det_heads"]
    assert (
        'output_map { key: "feat" value: "feat" }' in ensemble and 'input_map { key: "feat" value: "feat" }' in ensemble
    )
    features = (tmp_path / "repo" / "det_features" / "config.pbtxt").read_text()
    assert config_fields(features)["tensors"] == ["image", "feat"] and "preferred_batch_size: [ 4 ]" in features
    for graph in ("features", "heads"):
        model = tmp_path / "repo" / f"det_{graph}" / "1" / "model.onnx"
        assert sha256_of(model) == sha256_of(artifact / f"{graph}.onnx")


@pytest.mark.parametrize(("batch", "expected"), [({"size": 1}, 1), ({"size": 4}, 0)])
def test_fixed_batch_artifacts(tmp_path, batch, expected):
    artifact = build_standin_artifact(tmp_path / "a", "fused", batch={"dynamic": False, **batch})
    triton_repo.write_repository(artifact, tmp_path / "repo")
    text = (tmp_path / "repo" / "maskclip" / "config.pbtxt").read_text()
    assert config_fields(text)["max_batch_size"] == expected
    assert "dynamic_batching" not in text
    # With max_batch_size 0 Triton sees the graph's whole fixed shape, batch dim included.
    assert ("dims: [ 4, 3, 32, 32 ]" in text) == (expected == 0)


def test_baked_graph_takes_pixels_and_computes_the_same(tmp_path):
    artifact = build_standin_artifact(tmp_path / "a", "fused")
    triton_repo.write_repository(artifact, tmp_path / "repo", raw_input=True)
    runner = OnnxRuntimeRunner(tmp_path / "repo" / "maskclip" / "1" / "model.onnx")
    assert runner.input_names == ["image_rgb8"]
    photos = list(sample_photos().values())
    pixels = np.stack([resize_rgb8(photo, PreprocessSpec(size=32)) for photo in photos])
    assert pixels.dtype == np.uint8 and pixels.shape[1:] == (32, 32, 3)
    outputs = runner.infer({"image_rgb8": pixels})
    for photo, prob, mask in zip(photos, outputs["fake_prob"], outputs["mask"], strict=True):
        expected_prob, expected_mask = expected_standin_output(photo)
        assert prob == pytest.approx(expected_prob, abs=1e-5)
        np.testing.assert_allclose(mask[0], expected_mask, atol=1e-5)


def test_demo_baked_graph_passes_the_gate_bit_exactly(tmp_path):
    code, stderr = invoke(run_cli.DEMO_DIR, "--out", tmp_path, "--raw-input")
    assert code == 0, stderr
    artifact = triton_repo.load_artifact(run_cli.DEMO_DIR)
    report = triton_repo.gate_baked_graphs(artifact, {"fused": tmp_path / "maskclip" / "1" / "model.onnx"})
    assert report["failures"] == [] and report["images"] >= 20
    # The graph repeats the runtime's numpy arithmetic op for op, so nothing differs at all.
    assert report["max_prob_diff"] == 0.0 and report["outputs"]["mask"]["max_abs"] == 0.0


def test_baked_graph_that_differs_fails_the_gate_and_writes_nothing(tmp_path, monkeypatch):
    artifact = build_standin_artifact(tmp_path / "a", "fused")
    bake = triton_repo.bake_preprocessing

    def wrong_std(source, destination, spec):  # a plausible bug: the std of another normalisation
        bake(source, destination, dataclasses.replace(spec, std=(0.229, 0.224, 0.225)))

    monkeypatch.setattr(triton_repo, "bake_preprocessing", wrong_std)
    code, stderr = invoke(artifact, "--out", tmp_path / "repo", "--raw-input")
    assert code == EXIT_VERIFICATION_FAILED and stderr.count("\n") == 1
    assert not (tmp_path / "repo").exists()


def _add_engine(artifact, plan: bytes, with_header: bool, batch_max: int):
    manifest = json.loads((artifact / "manifest.json").read_text())
    profile = {"image": {"min": [1, 3, 32, 32], "opt": [4, 3, 32, 32], "max": [batch_max, 3, 32, 32]}}
    engine = artifact / "fused.engine"
    header = {"tensorrt_version": "10.0", "gpu_name": "test", "compute_capability": "8.0", "precision": "fp32"}
    if with_header:
        write_engine(engine, {**header, "profile": profile}, plan)
    else:
        engine.write_bytes(plan)
    entry = {"graph": "fused", "file": engine.name, **header, "profile": profile, "build_seconds": 1.0}
    manifest["engines"] = [entry]
    manifest["files"][engine.name] = sha256_of(engine)
    (artifact / "manifest.json").write_text(json.dumps(manifest))


def test_engines_become_plain_tensorrt_plans(tmp_path):
    artifact = build_standin_artifact(tmp_path / "a", "fused")
    plan = b"TensorRT plan bytes \x00\x01\x02" * 100
    _add_engine(artifact, plan, with_header=True, batch_max=6)
    triton_repo.write_repository(artifact, tmp_path / "repo")
    assert (tmp_path / "repo" / "maskclip" / "1" / "model.plan").read_bytes() == plan
    fields = config_fields((tmp_path / "repo" / "maskclip" / "config.pbtxt").read_text())
    assert fields["platform"] == "tensorrt_plan" and fields["max_batch_size"] == 6
    triton_repo.write_repository(artifact, tmp_path / "ort", backend="onnxruntime")
    assert config_fields((tmp_path / "ort" / "maskclip" / "config.pbtxt").read_text())["platform"] == "onnxruntime_onnx"


def test_a_plan_without_its_sidecar_is_refused(tmp_path):
    artifact = build_standin_artifact(tmp_path / "a", "fused")
    _add_engine(artifact, b"TensorRT plan bytes", with_header=False, batch_max=6)
    code, stderr = invoke(artifact, "--out", tmp_path / "repo")
    assert code == 2 and "fused.engine.json" in stderr and stderr.count("\n") == 1
    assert not (tmp_path / "repo").exists()


def test_usage_errors_exit_2(tmp_path):
    artifact = build_standin_artifact(tmp_path / "a", "fused")
    assert invoke(tmp_path / "missing", "--out", tmp_path / "r")[0] == 2
    assert invoke(artifact, "--out", tmp_path / "r", "--backend", "tensorrt")[0] == 2  # no engines
    _add_engine(artifact, b"plan", with_header=False, batch_max=8)
    assert invoke(artifact, "--out", tmp_path / "r", "--backend", "tensorrt", "--raw-input")[0] == 2
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("name", ["../x", "/tmp/abs", "a/b", 'q"uote', "new\nline", "", ".", "..", "x" * 65])
def test_unsafe_model_names_are_refused(tmp_path, name):
    artifact = build_standin_artifact(tmp_path / "a", "fused")
    code, output = invoke(artifact, "--out", tmp_path / "repo" / "r", "--name", name)
    assert code == 2 and "Traceback" not in output, output
    assert not (tmp_path / "repo").exists() and not (tmp_path / "x").exists()
