"""maskclip-export on `tiny`: every topology/precision passes its gate, and the gate catches a broken graph.

Exports are module-scoped and shared: each one costs seconds, the checks on it milliseconds.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from maskclip_core.checkpoint import weights_digest
from maskclip_export.exporter import ExportOptions, GateFailed, export_artifact
from maskclip_export.onnx_export import torch_reference
from maskclip_export.verify import chain_predictor, default_verification_images, verify
from maskclip_runtime.backends.onnxruntime import OnnxRuntimeRunner
from maskclip_runtime.contract.artifact import file_sha256, load_artifact
from maskclip_runtime.contract.manifest import FORMAT_VERSION, MANIFEST_NAME, BatchSpec, ModelIdentity
from maskclip_runtime.kernel.preprocess import PreprocessSpec, preprocess_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def images(tiny_model):
    """A few preprocessed sample images (feeds for direct graph comparisons)."""
    return preprocess_batch([image for _, image in default_verification_images()[:6]], tiny_model.preprocess_spec())


def _export(source, out, **kw) -> dict:
    """The manifest as written (the document a runtime reads)."""
    export_artifact(source, ExportOptions(out=out, **kw), progress=False)
    return json.loads((out / MANIFEST_NAME).read_text())


# The exports every test below reads (tests/conftest.py's tiny_export: each made once per session).
@pytest.fixture
def fused_dynamic(tiny_export):
    return tiny_export(batch=BatchSpec.up_to(4))


@pytest.fixture
def split_static(tiny_export):
    return tiny_export(topology="split", batch=BatchSpec.fixed(2))


@pytest.fixture
def fused_fp16(tiny_export):
    return tiny_export(precision="fp16")


@pytest.fixture
def fused_int8(tiny_export, calib_dir):
    return tiny_export(precision="int8", calib=str(calib_dir))


@pytest.fixture
def fused_int8_cpu(tiny_export, calib_dir):
    return tiny_export(precision="int8-cpu", calib=str(calib_dir), batch=BatchSpec.up_to(4))


@pytest.fixture
def split_int8(tiny_export, calib_dir):
    return tiny_export(topology="split", precision="int8", calib=str(calib_dir), calib_count=4)


@pytest.fixture
def split_int8_cpu(tiny_export, calib_dir):
    return tiny_export(
        topology="split", precision="int8-cpu", calib=str(calib_dir), calib_count=5, batch=BatchSpec.up_to(2)
    )


@pytest.fixture
def split_fp16(tiny_export):
    return tiny_export(topology="split", precision="fp16", batch=BatchSpec.up_to(2))


ALL = [
    "fused_dynamic",
    "split_static",
    "fused_fp16",
    "fused_int8",
    "fused_int8_cpu",
    "split_int8",
    "split_int8_cpu",
    "split_fp16",
]
MIN_MASK_IOU = {"fp32": 0.999, "fp16": 0.98, "int8": 0.90, "int8-cpu": 0.90}


@pytest.mark.parametrize("name", ALL)
def test_each_export_passes_its_gate_and_loads_in_the_runtime(name, request):
    out, manifest = request.getfixturevalue(name)
    report = manifest["verification"]
    assert report["passed"], report["failures"]
    assert report["images"] >= 64
    assert report["flips"] == 0
    assert report["mask_iou_mean"] >= MIN_MASK_IOU[manifest["precision"]]
    if manifest["precision"] == "fp32":
        assert report["max_prob_diff"] <= 1e-4
    artifact = load_artifact(out)  # hashes, chain and format accepted by the runtime
    assert artifact.model_id == manifest["model"]["model_id"]
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == on_disk - {"manifest.json"}
    for graph in manifest["graphs"]:
        for tensor in graph["inputs"] + graph["outputs"]:
            assert tensor["dtype"] == "float32", (graph["name"], tensor)  # reduced precision stays inside
    assert not list(out.parent.glob(f".{out.name}.*")), "staging folders left behind"


def test_manifest_records_the_contract_fields(fused_dynamic, tiny_model):
    out, manifest = fused_dynamic
    assert manifest["format"] == "maskclip-artifact" and manifest["format_version"] == FORMAT_VERSION
    assert manifest["model"]["config"] == json.loads(tiny_model.config.to_json())
    assert manifest["model"]["weights_sha256"] == weights_digest(tiny_model)
    assert manifest["model"]["model_id"] == ModelIdentity("tiny", weights_digest(tiny_model), "fp32", "fused").model_id
    assert PreprocessSpec.from_dict(manifest["preprocess"]) == tiny_model.preprocess_spec()
    assert manifest["threshold"] == 0.5 and manifest["topology"] == "fused" and manifest["precision"] == "fp32"
    assert manifest["batch"] == {"dynamic": True, "min": 1, "opt": 1, "max": 4}
    assert set(manifest["versions"]) >= {"torch", "onnx", "onnxruntime", "opset", "maskclip"}
    assert manifest["versions"]["opset"] == 17
    assert manifest["files"]["model.onnx"] == file_sha256(out / "model.onnx")
    (graph,) = manifest["graphs"]
    assert graph["inputs"] == [{"name": "image", "shape": ["batch", 3, 128, 128], "dtype": "float32"}]
    assert [(t["name"], t["shape"]) for t in graph["outputs"]] == [
        ("logits", ["batch", 2]),
        ("fake_prob", ["batch"]),
        ("mask", ["batch", 1, 128, 128]),
    ]


def test_no_text_tower_in_the_graph(fused_dynamic, tiny_model):
    """T is a constant: no token embedding table (vocab x width) among the initializers."""
    out, _ = fused_dynamic
    model = onnx.load(str(out / "model.onnx"))
    vocab = tiny_model.config.clip.vocab_size
    assert not [t.name for t in model.graph.initializer if vocab in t.dims]


def test_dynamic_batch_1_and_3_through_the_same_graph(fused_dynamic, tiny_model, images):
    out, _ = fused_dynamic
    runner = OnnxRuntimeRunner(out / "model.onnx")
    reference = torch_reference(tiny_model, "fused")
    for batch in (1, 3):
        got = runner.infer({"image": images[:batch]})
        want = reference(images[:batch])
        assert got["mask"].shape == (batch, 1, 128, 128) and got["fake_prob"].shape == (batch,)
        np.testing.assert_allclose(got["fake_prob"], want["fake_prob"], atol=1e-5)
        np.testing.assert_allclose(got["mask"], want["mask"], atol=1e-5)


def test_static_batch_is_pinned_in_every_graph(split_static):
    out, manifest = split_static
    for graph in manifest["graphs"]:
        model = onnx.load(str(out / graph["file"]))
        assert [i.type.tensor_type.shape.dim[0].dim_value for i in model.graph.input] == [2] * len(graph["inputs"])


def test_split_chain_equals_fused(split_static, fused_dynamic, images):
    split_out, split_manifest = split_static
    fused_out, _ = fused_dynamic
    chain = chain_predictor([OnnxRuntimeRunner(split_out / g["file"]) for g in split_manifest["graphs"]])
    fused = OnnxRuntimeRunner(fused_out / "model.onnx")
    for start in range(0, 6, 2):
        batch = images[start : start + 2]
        got, want = chain(batch), fused.infer({"image": batch})
        for name in ("logits", "fake_prob", "mask"):
            np.testing.assert_allclose(got[name], want[name], atol=2e-5, err_msg=name)


def test_split_report_has_per_graph_errors(split_static):
    _, manifest = split_static
    outputs = manifest["verification"]["outputs"]
    assert {"clip_cls", "clip_maps", "features", "logits", "fake_prob", "mask"} <= set(outputs)


def test_fp16_keeps_sensitive_ops_in_fp32(fused_fp16):
    out, manifest = fused_fp16
    assert {"LayerNormalization", "Softmax", "Sigmoid"} <= set(manifest["fp32_ops"])
    model = onnx.load(str(out / "model.onnx"))
    fp16_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert fp16_weights, "no fp16 weights: conversion did nothing"


def test_int8_graph_is_symmetric_qdq(fused_int8):
    out, manifest = fused_int8
    model = onnx.load(str(out / "model.onnx"))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    zero_points = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if "zero_point" in t.name}
    assert zero_points and all(not z.any() for z in zero_points.values())
    assert manifest["int8"]["calibration_images"] == 6
    assert {"LayerNormalization", "Softmax", "Sigmoid"} <= set(manifest["fp32_ops"])


def _optimized_op_types(path, tmp_path) -> set[str]:
    """Op types after ONNX Runtime's load-time optimisation (what actually runs)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}


def test_int8_cpu_graph_runs_linear_layers_dynamic_and_convolutions_static(fused_int8_cpu, fused_int8, tmp_path):
    out, manifest = fused_int8_cpu
    model = onnx.load(str(out / "model.onnx"))
    ops = {n.op_type for n in model.graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger", "QuantizeLinear", "DequantizeLinear"} <= ops
    assert "ConvInteger" not in ops  # dynamic convolutions are slower than fp32 in ORT
    excluded = manifest["int8"]["fp32_nodes"]["fused"]
    assert sorted(excluded) == sorted(fused_int8[1]["int8"]["fp32_nodes"]["fused"])  # the same products stay fp32
    # Every other product with a 2-D weight matrix (a linear layer) became a MatMulInteger.
    weights = {t.name: len(t.dims) for t in model.graph.initializer}
    fp32_linear = [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul" and [weights[i] for i in n.input if i in weights] == [2] and n.name not in excluded
    ]
    assert not fp32_linear, f"linear layers left in fp32: {fp32_linear}"
    assert sum(n.op_type == "MatMulInteger" for n in model.graph.node) > len(excluded) / 2
    assert not manifest["int8"]["symmetric"] and manifest["int8"]["calibration_images"] == 6
    assert manifest["int8"]["calibration_method"] == "Percentile 99.999"
    assert {"Conv", "ConvTranspose", "LayerNormalization", "MatMul", "Softmax", "Sigmoid"} <= set(manifest["fp32_ops"])
    assert "/decoder/head/Conv" in excluded  # the mask logits are not snapped to 256 levels
    # Convolutions: uint8 activations (asymmetric), int8 weights.
    activation_q = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in weights]
    zero_points = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert activation_q and all(zero_points[n.input[2]].dtype == np.uint8 for n in activation_q)
    # What ONNX Runtime runs: the fused u8 x s8 kernels.
    assert {"DynamicQuantizeMatMul", "QLinearConv"} <= _optimized_op_types(out / "model.onnx", tmp_path)


def test_int8_cpu_artifact_runs_any_batch_size(fused_int8_cpu, images):
    """Activation scales are computed per call over the whole batch, so an image's outputs depend a
    little on its batch mates: close to, not equal to, its batch-1 outputs."""
    out, _ = fused_int8_cpu
    runner = OnnxRuntimeRunner(out / "model.onnx")
    alone = runner.infer({"image": images[:1]})
    together = runner.infer({"image": images[:3]})
    assert together["mask"].shape == (3, *alone["mask"].shape[1:])
    assert np.abs(together["fake_prob"][0] - alone["fake_prob"][0]) < 0.02
    agree = ((together["mask"][0] > 0.5) == (alone["mask"][0] > 0.5)).mean()
    assert agree > 0.98


def test_corrupted_graph_fails_the_gate(fused_dynamic, tiny_model, tmp_path):
    out, _ = fused_dynamic
    model = onnx.load(str(out / "model.onnx"))
    weight = max(model.graph.initializer, key=lambda t: numpy_helper.to_array(t).size)
    values = numpy_helper.to_array(weight).copy()
    values.flat[: values.size // 4] *= 1.5  # a quarter of the largest weight off by 50%
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    onnx.save(model, str(tmp_path / "corrupt.onnx"))
    names, images = zip(*default_verification_images(), strict=True)
    batch = preprocess_batch(list(images), tiny_model.preprocess_spec())
    report = verify(
        torch_reference(tiny_model, "fused"),
        chain_predictor([OnnxRuntimeRunner(tmp_path / "corrupt.onnx")]),
        batch,
        names,
        "fp32",
        0.5,
        BatchSpec.up_to(4),
    )
    assert not report["passed"]
    assert any("mask" in f for f in report["failures"]), report["failures"]


def test_failed_gate_leaves_no_artifact_and_keeps_the_report(tiny_source, tmp_path, monkeypatch):
    """End to end: a graph corrupted after export -> GateFailed, nothing at --out, report in <out>.failed."""
    import maskclip_export.exporter as exporter

    real_export = exporter.export_graphs

    def export_then_corrupt(*args, **kwargs):
        paths = real_export(*args, **kwargs)
        model = onnx.load(str(paths["fused"]))
        for tensor in model.graph.initializer:
            if tensor.data_type == onnx.TensorProto.FLOAT and len(tensor.dims) == 2:
                values = numpy_helper.to_array(tensor) * 1.2
                tensor.CopyFrom(numpy_helper.from_array(values.astype(np.float32), tensor.name))
        onnx.save(model, str(paths["fused"]))
        return paths

    monkeypatch.setattr(exporter, "export_graphs", export_then_corrupt)
    out = tmp_path / "broken"
    with pytest.raises(GateFailed) as caught:
        _export(tiny_source, out)
    assert not out.exists()
    failed = tmp_path / "broken.failed"
    assert caught.value.report_path == failed / "verification.json"
    assert not (failed / "manifest.json").exists()  # nothing a runtime would load
    report = json.loads(caught.value.report_path.read_text())
    assert report["passed"] is False and report["failures"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.failed"]


def test_reexport_replaces_an_existing_artifact(fused_dynamic, tiny_source, tmp_path):
    out = tmp_path / "art"
    shutil.copytree(fused_dynamic[0], out)
    second = _export(tiny_source, out, verify=False, batch=BatchSpec.fixed(3))
    assert second["batch"] == {"dynamic": False, "size": 3}
    assert second["verification"] == {"skipped": True, "passed": None}  # not the gate record of the one replaced
    assert load_artifact(out).manifest.batch == BatchSpec.fixed(3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


@pytest.mark.parametrize("precision", ["fp16", "int8", "int8-cpu"])
def test_large_graphs_travel_with_external_data(precision, tiny_source, calib_dir, tmp_path, monkeypatch):
    """The >1 GiB path of opensdi-vitl14 (weights in <file>.data), exercised on tiny with a low limit (and a gate
    on the six calibration images: the path is under test here, the gate's statistics above)."""
    import maskclip_export.onnx_export as onnx_export

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 100_000)
    out = tmp_path / precision
    calib = str(calib_dir) if precision.startswith("int8") else None
    manifest = _export(tiny_source, out, precision=precision, calib=calib, calib_count=6, verify_images=str(calib_dir))
    assert manifest["verification"]["passed"], manifest["verification"]["failures"]
    assert {"model.onnx", "model.onnx.data"} <= set(manifest["files"])
    load_artifact(out)
    assert OnnxRuntimeRunner(out / "model.onnx").infer({"image": np.zeros((1, 3, 128, 128), np.float32)})
