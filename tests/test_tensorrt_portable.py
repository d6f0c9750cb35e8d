"""Portable TensorRT engines (maskclip-export --trt-compat version / hardware): what the builder is asked
for on TensorRT 10 and 11, what the sidecar and manifest record, what the runtime then accepts (exactly what
each kind promises, never more), and the refusals (Jetson, a pre-Ampere builder, a foreign platform).
The stand-ins are tests/trt_standin.py."""

import json
import platform

import pytest
import trt_standin
from tiny_onnx import SHAPES, tiny_onnx
from tiny_onnx import onnx_artifact as _artifact
from trt_standin import ENGINE_PLAN, VERSION_COMPATIBLE_PLAN, FakeCudart

import maskclip_runtime.backends.tensorrt as runtime_backend
from maskclip_export import tensorrt as export_tensorrt
from maskclip_export.tensorrt import PortabilityError, build_engines, build_plan, check_compat, plan_precision
from maskclip_runtime.backends.tensorrt import TensorRTRunner
from maskclip_runtime.contract.artifact import MANIFEST_NAME, load_artifact
from maskclip_runtime.contract.engine_header import (
    EngineFileError,
    EngineIncompatibleError,
    check_engine_compatible,
    read_engine_metadata,
    write_engine,
)
from maskclip_runtime.contract.manifest import ArtifactError, engine_source_problem

quiet = {"log": lambda _: None}

BUILT = {
    "tensorrt_version": "10.3.0",
    "gpu_name": "NVIDIA A100-SXM4-80GB",
    "compute_capability": "8.0",
    "precision": "fp16",
    "profile": {},
    "machine": "x86_64",
}
A100, H100, RTX3090, T4 = ("NVIDIA A100-SXM4-80GB", "8.0"), ("NVIDIA H100", "9.0"), ("RTX 3090", "8.6"), ("T4", "7.5")


# --- what the runtime accepts -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("compat", "version", "gpu", "accepted"),
    [
        ([], "10.3.1", A100, True),  # a plain engine: same major.minor, same GPU
        ([], "10.8.0", A100, False),
        ([], "10.3.0", H100, False),
        (["version"], "10.3.0", A100, True),
        (["version"], "10.8.0", A100, True),  # newer runtime of the same major
        (["version"], "10.2.0", A100, False),  # older runtime
        (["version"], "11.0.0", A100, False),  # another major
        (["version"], "10.8.0", H100, False),  # version compatibility does not move a plan to another GPU
        (["hardware"], "10.3.0", H100, True),
        (["hardware"], "10.3.0", RTX3090, True),
        (["hardware"], "10.3.0", T4, False),  # Turing is older than Ampere
        (["hardware"], "10.8.0", H100, False),  # hardware compatibility does not move it to another TensorRT
        (["hardware", "version"], "10.8.0", H100, True),
        (["hardware", "version"], "10.8.0", T4, False),
    ],
)
def test_the_runtime_accepts_exactly_what_the_compat_promises(compat, version, gpu, accepted):
    metadata = {**BUILT, "compat": compat}
    if accepted:
        check_engine_compatible(metadata, version, *gpu, "x86_64")
    else:
        with pytest.raises(EngineIncompatibleError):
            check_engine_compatible(metadata, version, *gpu, "x86_64")


def test_no_plan_crosses_platforms_whatever_its_compat():
    with pytest.raises(EngineIncompatibleError, match="x86_64.*aarch64"):
        check_engine_compatible({**BUILT, "compat": ["hardware", "version"]}, "10.3.0", *A100, "aarch64")


@pytest.mark.parametrize("compat", ["version", ["anything"], [["version"]], {"version": 1}])
def test_a_hostile_compat_in_the_sidecar_is_refused_as_a_bad_file(compat):
    with pytest.raises(EngineFileError):
        check_engine_compatible({**BUILT, "compat": compat}, "10.3.0", *A100, "x86_64")


# --- the runner -----------------------------------------------------------------------------------------


def _engine(tmp_path, plan, **changes):
    path = tmp_path / "model.fp16.engine"
    write_engine(path, {**BUILT, "machine": platform.machine(), **changes}, plan)
    return path


def test_a_version_compatible_plan_runs_on_a_newer_tensorrt_with_its_lean_runtime_allowed(tmp_path, monkeypatch):
    trt_standin.install(monkeypatch, "10.8.0", FakeCudart(gpu=("NVIDIA A100-SXM4-80GB", 8, 0)))
    runner = TensorRTRunner(_engine(tmp_path, VERSION_COMPATIBLE_PLAN, compat=["version"]))
    assert runner._runtime.engine_host_code_allowed  # else TensorRT cannot deserialise it
    runner.close()
    with pytest.raises(EngineIncompatibleError):  # the same plan recorded as a plain one
        TensorRTRunner(_engine(tmp_path, VERSION_COMPATIBLE_PLAN))


def test_a_plain_plan_is_loaded_without_host_code(tmp_path, monkeypatch):
    trt_standin.install(monkeypatch, "10.3.0", FakeCudart(gpu=("NVIDIA A100-SXM4-80GB", 8, 0)))
    runner = TensorRTRunner(_engine(tmp_path, ENGINE_PLAN))
    assert not runner._runtime.engine_host_code_allowed
    runner.close()


def test_a_hardware_compatible_plan_runs_on_another_ampere_plus_gpu(tmp_path, monkeypatch):
    trt_standin.install(monkeypatch, "10.3.0", FakeCudart(gpu=("NVIDIA H100 80GB HBM3", 9, 0)))
    TensorRTRunner(_engine(tmp_path, ENGINE_PLAN, compat=["hardware"])).close()
    with pytest.raises(EngineIncompatibleError, match="H100"):
        TensorRTRunner(_engine(tmp_path, ENGINE_PLAN))


# --- the builder ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["10.3.0", "11.4.0"])
def test_build_plan_asks_tensorrt_for_each_kind(tmp_path, monkeypatch, version):
    record = trt_standin.install(monkeypatch, version).record
    tiny_onnx(tmp_path / "model.onnx")
    plan = plan_precision(version, "fp32", "fp32")
    assert build_plan(tmp_path / "model.onnx", plan, SHAPES, 1.0, None, **quiet) == b"plan:"
    assert record["config"].hardware_compatibility_level == "NONE"
    built = build_plan(tmp_path / "model.onnx", plan, SHAPES, 1.0, None, compat=("hardware", "version"), **quiet)
    assert built == b"plan:VERSION_COMPATIBLE;AMPERE_PLUS"


def test_build_engines_records_the_compat_in_sidecar_and_manifest(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime_backend, "TensorRTRunner", trt_standin.onnx_engine_runner())
    trt_standin.install(monkeypatch, "10.3.0")
    folder = _artifact(tmp_path / "a")
    (engine,) = build_engines(folder, compat=("version", "hardware", "version"), **quiet)
    assert engine.compat == ("hardware", "version")
    artifact = load_artifact(folder)  # the manifest's entry, checked against the sidecar on load
    assert artifact.manifest.engines[0].compat == ("hardware", "version")
    metadata = read_engine_metadata(artifact.engines["fused"])
    assert metadata["compat"] == ["hardware", "version"] and metadata["machine"] == platform.machine()


def test_hardware_compat_on_a_pre_ampere_builder_is_refused_before_any_build(tmp_path, monkeypatch):
    record = trt_standin.install(monkeypatch, "10.3.0", FakeCudart(gpu=("Tesla T4", 7, 5))).record
    folder = _artifact(tmp_path / "a")
    with pytest.raises(PortabilityError, match="Ampere"):
        build_engines(folder, compat=("hardware",), **quiet)
    assert "parsed" not in record
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no staging left behind
    build_engines(folder, compat=("version",), verify=False, **quiet)  # version compatibility needs no Ampere


def test_on_jetson_compat_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(export_tensorrt, "on_jetson", lambda: True)
    assert check_compat(()) == ()
    with pytest.raises(PortabilityError, match="Jetson") as caught:
        check_compat(("version",))
    assert "\n" not in str(caught.value)


def test_unknown_kinds_are_refused():
    with pytest.raises(PortabilityError, match="known: version, hardware"):
        check_compat(("everything",))


@pytest.mark.parametrize("compat", [["anything"], [["version"]], "version"])
def test_a_manifest_recording_an_unknown_compat_is_refused(tmp_path, monkeypatch, compat):
    monkeypatch.setattr(runtime_backend, "TensorRTRunner", trt_standin.onnx_engine_runner())
    trt_standin.install(monkeypatch, "10.3.0")
    folder = _artifact(tmp_path / "a")
    build_engines(folder, compat=("version",), verify=False, **quiet)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["engines"][0]["compat"] = compat
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="compat"):
        load_artifact(folder)


def test_a_sidecar_whose_compat_differs_from_the_manifest_is_not_run(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime_backend, "TensorRTRunner", trt_standin.onnx_engine_runner())
    trt_standin.install(monkeypatch, "10.3.0")
    folder = _artifact(tmp_path / "a")
    build_engines(folder, compat=("version",), verify=False, **quiet)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    del manifest["engines"][0]["compat"]  # the manifest says "this GPU only", the sidecar "version"
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    artifact = load_artifact(folder)
    metadata = read_engine_metadata(artifact.engines["fused"])
    problem = engine_source_problem(artifact.manifest, artifact.graphs[0], metadata)
    assert problem and "compat" in problem
