"""Engine files: a plain plan plus a JSON sidecar; round trip and every refusal (runs without TensorRT)."""

import hashlib
import json

import pytest

from maskclip_runtime.contract.engine_header import (
    MAX_SIDECAR_BYTES,
    EngineFileError,
    EngineIncompatibleError,
    check_engine_compatible,
    normalize_compute_capability,
    read_engine_metadata,
    read_plan,
    sidecar_path,
    write_engine,
)

METADATA = {
    "tensorrt_version": "10.3.0",
    "gpu_name": "NVIDIA A100-SXM4-80GB",
    "compute_capability": "8.0",
    "precision": "fp16",
    "profile": {"image": {"min": [1, 3, 128, 128], "opt": [1, 3, 128, 128], "max": [8, 3, 128, 128]}},
    "onnx_sha256": "ab" * 32,
}
PLAN = bytes(range(256)) * 4


def test_round_trip_keeps_the_plan_byte_for_byte(tmp_path):
    path = tmp_path / "model.fp16.engine"
    write_engine(path, METADATA, PLAN)
    assert path.read_bytes() == PLAN  # what TensorRT serialised, nothing in front: stock loaders take it
    assert sidecar_path(path) == tmp_path / "model.fp16.engine.json"
    metadata = read_engine_metadata(path)
    assert {k: metadata[k] for k in METADATA} == METADATA
    assert metadata["plan_sha256"] == hashlib.sha256(PLAN).hexdigest()
    assert read_plan(path) == PLAN
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.fp16.engine", "model.fp16.engine.json"]


def test_write_replaces_both_files(tmp_path):
    path = tmp_path / "e.engine"
    write_engine(path, METADATA, b"old plan")
    write_engine(path, METADATA, PLAN)
    assert read_plan(path) == PLAN


def test_write_refuses_incomplete_metadata_and_empty_plan(tmp_path):
    with pytest.raises(ValueError, match="lacks gpu_name"):
        write_engine(tmp_path / "e", {k: v for k, v in METADATA.items() if k != "gpu_name"}, PLAN)
    with pytest.raises(ValueError, match="empty plan"):
        write_engine(tmp_path / "e", METADATA, b"")
    assert not list(tmp_path.iterdir())


@pytest.fixture
def engine(tmp_path):
    path = tmp_path / "model.fp16.engine"
    write_engine(path, METADATA, PLAN)
    return path


def test_refuses_plan_without_sidecar(engine):
    sidecar_path(engine).unlink()
    with pytest.raises(EngineFileError, match="no model.fp16.engine.json"):
        read_engine_metadata(engine)


def test_refuses_missing_engine(tmp_path):
    with pytest.raises(EngineFileError, match="no such engine"):
        read_engine_metadata(tmp_path / "absent.engine")


def test_refuses_plan_that_is_not_the_sidecars(engine, tmp_path):
    engine.write_bytes(PLAN[:-1] + b"\x00")
    with pytest.raises(EngineFileError, match="sha256"):
        read_plan(engine)
    other = tmp_path / "other.engine"
    write_engine(other, METADATA, b"another plan")
    sidecar_path(other).replace(sidecar_path(engine))  # another engine's sidecar beside this plan
    engine.write_bytes(PLAN)
    with pytest.raises(EngineFileError, match="sha256"):
        read_plan(engine)


@pytest.mark.parametrize("body", [b"\xff\xfe", b"{not json", b"[1, 2]", b'{"format": "something-else"}'])
def test_refuses_bad_sidecar(engine, body):
    sidecar_path(engine).write_bytes(body)
    with pytest.raises(EngineFileError):
        read_engine_metadata(engine)


def test_refuses_oversize_sidecar(engine):
    sidecar_path(engine).write_bytes(b" " * (MAX_SIDECAR_BYTES + 1))
    with pytest.raises(EngineFileError, match="larger than"):
        read_engine_metadata(engine)


def test_refuses_sidecar_without_required_keys(engine):
    sidecar = json.loads(sidecar_path(engine).read_text())
    del sidecar["tensorrt_version"], sidecar["plan_sha256"]
    sidecar_path(engine).write_text(json.dumps(sidecar))
    with pytest.raises(EngineFileError, match="lacks tensorrt_version, plan_sha256"):
        read_engine_metadata(engine)


def test_compatible_same_major_minor_and_gpu():
    check_engine_compatible(METADATA, "10.3.1", "NVIDIA A100-SXM4-80GB", (8, 0))


@pytest.mark.parametrize("version", ["10.4.0", "11.0.0", "8.6.1"])
def test_refuses_other_tensorrt(version):
    with pytest.raises(EngineIncompatibleError, match=f"TensorRT 10.3.0 but TensorRT {version}"):
        check_engine_compatible(METADATA, version, METADATA["gpu_name"], "8.0")


def test_refuses_other_compute_capability():
    with pytest.raises(EngineIncompatibleError, match="compute capability 8.0.*H100.*compute capability 9.0"):
        check_engine_compatible(METADATA, "10.3.0", "NVIDIA H100 80GB HBM3", "9.0")


def test_refuses_other_gpu_same_compute_capability():
    with pytest.raises(EngineIncompatibleError, match="rebuild it here"):
        check_engine_compatible(METADATA, "10.3.0", "NVIDIA A800 80GB PCIe", "8.0")


@pytest.mark.parametrize("cc", [(8, 7), [8, 7], "8.7", "sm_87", "87"])
def test_compute_capability_forms(cc):
    assert normalize_compute_capability(cc) == "8.7"
