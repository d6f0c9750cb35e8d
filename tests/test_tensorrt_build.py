"""TensorRT build planning, profiles and the missing-TensorRT errors: everything that runs without TensorRT."""

import importlib.util

import numpy as np
import pytest

from maskclip_export.tensorrt import (
    PrecisionPlanError,
    build_engines,
    engine_file_name,
    plan_precision,
    profile_shapes,
    select_fp32_layers,
)
from maskclip_runtime.backends.tensorrt import (
    TENSORRT_HINT,
    ShapeOutsideProfile,
    TensorRTRunner,
    check_input_shape,
    is_static_profile,
)
from maskclip_runtime.contract.manifest import BatchSpec, GraphSpec, TensorSpec
from maskclip_runtime.contract.precision_table import PRECISIONS
from maskclip_runtime.errors import BackendUnavailable

FP32_OPS = ("LayerNormalization", "Softmax", "Sigmoid")
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
needs_no_tensorrt = pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed; this checks the error without it")


def test_trt10_fp16_from_fp32_graph_uses_flags_and_pins():
    plan = plan_precision("10.3.0", "fp16", "fp32", FP32_OPS)
    assert not plan.strongly_typed
    assert plan.builder_flags == ("FP16", "OBEY_PRECISION_CONSTRAINTS")
    assert plan.cleared_flags == ("TF32",)
    assert plan.fp32_ops == FP32_OPS
    assert not plan.calibrate


def test_trt10_int8_from_fp32_graph_calibrates():
    plan = plan_precision("10.3.0", "int8", "fp32", FP32_OPS)
    assert plan.builder_flags == ("INT8", "OBEY_PRECISION_CONSTRAINTS")
    assert plan.calibrate and not plan.strongly_typed


@pytest.mark.parametrize("version", ["10.3.0", "11.0.0"])
def test_fp32_engine_clears_tf32(version):
    plan = plan_precision(version, "fp32", "fp32", FP32_OPS)
    assert plan.builder_flags == () and plan.cleared_flags == ("TF32",) and plan.fp32_ops == ()


@pytest.mark.parametrize("precision", ["fp16", "int8"])
@pytest.mark.parametrize("version", ["10.3.0", "11.0.0"])
def test_reduced_precision_graph_builds_strongly_typed_without_flags(version, precision):
    plan = plan_precision(version, precision, precision, FP32_OPS)
    assert plan.strongly_typed
    assert plan.builder_flags == () and not plan.calibrate and plan.fp32_ops == ()
    assert plan.cleared_flags == ("TF32",)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_trt11_refuses_flags_from_fp32_graph(precision):
    with pytest.raises(PrecisionPlanError):
        plan_precision("11.0.0", precision, "fp32", FP32_OPS)


def test_mismatched_graph_precision_and_unknown_names():
    with pytest.raises(PrecisionPlanError):
        plan_precision("10.3.0", "int8", "fp16")
    with pytest.raises(PrecisionPlanError):
        plan_precision("10.3.0", "bf8", "fp32")


@pytest.mark.parametrize("engine", ["fp32", "int8"])
def test_int8_cpu_graphs_are_refused_for_engines(engine):
    with pytest.raises(PrecisionPlanError):
        plan_precision("10.3.0", engine, "int8-cpu")


@pytest.mark.parametrize("name", list(PRECISIONS))
def test_the_precision_table_decides_what_tensorrt_builds(name):
    """A row's backends alone say whether its graphs (and engines of it) can be planned."""
    row = PRECISIONS[name]
    if row.tensorrt:
        assert plan_precision("10.3.0", name, name).precision == name
        assert plan_precision("10.3.0", name, "fp32", FP32_OPS).calibrate == row.calibrated
    else:
        for engine in ("fp32", name):
            with pytest.raises(PrecisionPlanError):
                plan_precision("10.3.0", engine, name)


def test_profile_shapes_dynamic_batch():
    inputs = (TensorSpec("image", ("batch", 3, 128, 128), "float32"), {"name": "clip_maps", "shape": ["batch", 7, 8]})
    shapes = profile_shapes(inputs, BatchSpec(dynamic=True, min=1, opt=4, max=8))
    assert shapes["image"] == ((1, 3, 128, 128), (4, 3, 128, 128), (8, 3, 128, 128))
    assert shapes["clip_maps"] == ((1, 7, 8), (4, 7, 8), (8, 7, 8))


def test_profile_shapes_static_batch_and_fixed_dims():
    shapes = profile_shapes([TensorSpec("image", (2, 3, 64, 64), "float32")], BatchSpec(False, 2, 2, 2))
    assert shapes["image"] == ((2, 3, 64, 64),) * 3
    shapes = profile_shapes([TensorSpec("image", ("batch", 3, 64, 64), "float32")], BatchSpec(False, 2, 2, 2))
    assert is_static_profile(shapes)


def test_profile_shapes_refuses_other_symbolic_dims():
    with pytest.raises(ValueError, match="only a leading batch"):
        profile_shapes([TensorSpec("image", ("batch", 3, "height", 64), "float32")], BatchSpec(True, 1, 1, 4))


def test_select_fp32_layers_by_node_name_and_layer_type():
    layers = [
        ("/clip/blocks.0/ln_2/LayerNormalization", "NORMALIZATION"),
        ("/clip/blocks.0/attn/MatMul", "MATRIX_MULTIPLY"),
        ("/clip/blocks.0/attn/Softmax", "SOFTMAX"),
        ("(Unnamed Layer* 7) [Softmax]", "SOFTMAX"),
        ("/Sigmoid", "ACTIVATION"),
        ("/decoder/act/Gelu", "ACTIVATION"),
    ]
    chosen = select_fp32_layers(layers, {"/Sigmoid", "/clip/blocks.0/attn/Softmax"}, FP32_OPS)
    assert chosen == [
        "/clip/blocks.0/ln_2/LayerNormalization",
        "/clip/blocks.0/attn/Softmax",
        "(Unnamed Layer* 7) [Softmax]",
        "/Sigmoid",
    ]
    assert select_fp32_layers(layers, set(), ()) == []


def test_engine_file_name():
    graph = GraphSpec("fused", "model.onnx", (), ())
    assert engine_file_name(graph, "fp16") == "model.fp16.engine"
    assert engine_file_name(GraphSpec("clip", "clip.int8.onnx", (), ()), "int8") == "clip.int8.engine"


def test_input_shape_checked_against_profile():
    profile = ((1, 3, 64, 64), (4, 3, 64, 64), (8, 3, 64, 64))
    check_input_shape("image", (8, 3, 64, 64), profile)
    with pytest.raises(ShapeOutsideProfile, match=r"\[9, 3, 64, 64\].*\[1, 3, 64, 64\] \.\. \[8, 3, 64, 64\]"):
        check_input_shape("image", (9, 3, 64, 64), profile)
    with pytest.raises(ShapeOutsideProfile, match="wider --batch"):
        check_input_shape("image", (1, 3, 32, 32), profile)
    with pytest.raises(ShapeOutsideProfile):
        check_input_shape("image", (1, 3, 64), profile)
    assert not is_static_profile({"image": profile})


@needs_no_tensorrt
def test_build_engines_without_tensorrt_says_what_to_install(tmp_path):
    with pytest.raises(BackendUnavailable) as err:
        build_engines(tmp_path, "fp16")
    message = str(err.value)
    assert "\n" not in message
    assert TENSORRT_HINT in message


@needs_no_tensorrt
def test_export_trt_without_tensorrt_is_refused_before_any_work(tmp_path):
    import time

    from click.testing import CliRunner

    from maskclip_export.cli import main as export_main
    from maskclip_runtime.errors import EXIT_BACKEND_UNAVAILABLE

    out = tmp_path / "tiny"
    started = time.perf_counter()
    result = CliRunner().invoke(export_main, ["--config", "tiny", "--out", str(out), "--no-verify", "--quiet", "--trt"])
    assert result.exit_code == EXIT_BACKEND_UNAVAILABLE, result.output
    assert [line for line in result.output.splitlines() if "error:" in line] == result.output.splitlines()
    assert TENSORRT_HINT in result.output
    assert not out.exists() and time.perf_counter() - started < 10  # no export, no model built


@needs_no_tensorrt
def test_runner_without_tensorrt_says_what_to_install(tmp_path):
    with pytest.raises(
        BackendUnavailable, match=r'TensorRT is not installed: pip install -c constraints.txt -e "\.\[gpu\]"'
    ):
        TensorRTRunner(tmp_path / "model.fp16.engine")


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engines_pass_the_gate_on_tiny(tmp_path, precision):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    from maskclip_core.checkpoint import weights_digest
    from maskclip_core.model import build_model
    from maskclip_export.exporter import ExportOptions, ModelSource, export_artifact
    from maskclip_export.onnx_export import torch_reference
    from maskclip_runtime.contract.artifact import load_artifact

    model = build_model("tiny").eval()
    out = tmp_path / precision
    options = ExportOptions(out=out, precision=precision, batch=BatchSpec.up_to(4))
    export_artifact(ModelSource(model, "test", weights_digest(model)), options, progress=False)
    engines = build_engines(out, reference=torch_reference(model, "fused"), log=lambda _: None)
    artifact = load_artifact(out)
    assert artifact.manifest.engine_verification["passed"]
    assert engines[0].profile["image"]["max"][0] == 4
    image = np.random.default_rng(0).standard_normal((3, 3, 128, 128), dtype=np.float32)
    with TensorRTRunner(artifact.engines["fused"]) as runner:
        assert runner.infer({"image": image})["mask"].shape == (3, 1, 128, 128)
        with pytest.raises(ShapeOutsideProfile):
            runner.infer({"image": np.zeros((5, 3, 128, 128), np.float32)})


@pytest.mark.gpu
def test_a_portable_engine_builds_runs_and_agrees_with_onnxruntime_through_polygraphy(tmp_path):
    """The real TensorRT names: BuilderFlag.VERSION_COMPATIBLE, hardware_compatibility_level = AMPERE_PLUS,
    runtime.engine_host_code_allowed; and Polygraphy's TrtRunner on the plan."""
    pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    pytest.importorskip("polygraphy", reason="Polygraphy is not installed")
    from maskclip_bench.polygraphy_check import compare_engines
    from maskclip_core.checkpoint import weights_digest
    from maskclip_core.model import build_model
    from maskclip_export.exporter import ExportOptions, ModelSource, export_artifact
    from maskclip_runtime.backends.tensorrt import gpu_identity
    from maskclip_runtime.contract.artifact import load_artifact
    from maskclip_runtime.contract.engine_header import ampere_or_newer, read_engine_metadata

    compat = ("hardware", "version") if ampere_or_newer(gpu_identity(0)[1]) else ("version",)
    model = build_model("tiny").eval()
    out = tmp_path / "portable"
    options = ExportOptions(out=out, precision="fp16", batch=BatchSpec.up_to(2))
    export_artifact(ModelSource(model, "test", weights_digest(model)), options, progress=False)
    (engine,) = build_engines(out, compat=compat, log=lambda _: None)
    artifact = load_artifact(out)
    assert engine.compat == compat and read_engine_metadata(artifact.engines["fused"])["compat"] == list(compat)
    assert artifact.manifest.engine_verification["passed"]
    with TensorRTRunner(artifact.engines["fused"]) as runner:
        assert runner._runtime.engine_host_code_allowed
        assert runner.infer({"image": np.zeros((2, 3, 128, 128), np.float32)})["mask"].shape == (2, 1, 128, 128)
    report = compare_engines(out, limit=4)
    assert report["passed"], report["graphs"]
    assert set(report["graphs"]["fused"]) == {"logits", "fake_prob", "mask"}
