"""Engine file header: round trip and every refusal (runs without TensorRT)."""

import json
import struct

import pytest

from maskclip_runtime.engine_header import (
    MAGIC,
    MAX_HEADER_BYTES,
    EngineFileError,
    EngineIncompatibleError,
    check_engine_compatible,
    normalize_compute_capability,
    read_engine_header,
    read_plan,
    write_engine,
)

HEADER = {
    "tensorrt_version": "10.3.0",
    "gpu_name": "NVIDIA A100-SXM4-80GB",
    "compute_capability": "8.0",
    "precision": "fp16",
    "profile": {"image": {"min": [1, 3, 128, 128], "opt": [1, 3, 128, 128], "max": [8, 3, 128, 128]}},
    "manifest_files": {"model.onnx": "ab" * 32},
}
PLAN = bytes(range(256)) * 4


def test_round_trip(tmp_path):
    path = tmp_path / "model.fp16.engine"
    write_engine(path, HEADER, PLAN)
    header, offset = read_engine_header(path)
    assert header == HEADER
    assert path.read_bytes()[offset:] == PLAN
    assert read_plan(path) == PLAN
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_write_replaces_atomically(tmp_path):
    path = tmp_path / "e.engine"
    write_engine(path, HEADER, b"old plan")
    write_engine(path, HEADER, PLAN)
    assert read_plan(path) == PLAN


def test_write_refuses_incomplete_header_and_empty_plan(tmp_path):
    with pytest.raises(ValueError, match="lacks gpu_name"):
        write_engine(tmp_path / "e", {k: v for k, v in HEADER.items() if k != "gpu_name"}, PLAN)
    with pytest.raises(ValueError, match="empty plan"):
        write_engine(tmp_path / "e", HEADER, b"")


def _raw(tmp_path, data: bytes):
    path = tmp_path / "raw.engine"
    path.write_bytes(data)
    return path


def test_refuses_bad_magic(tmp_path):
    with pytest.raises(EngineFileError, match="not a maskclip engine file"):
        read_engine_header(_raw(tmp_path, b"\x00plain TensorRT plan bytes"))


def test_refuses_empty_file(tmp_path):
    with pytest.raises(EngineFileError, match="not a maskclip engine file"):
        read_engine_header(_raw(tmp_path, b""))


def test_refuses_missing_length(tmp_path):
    with pytest.raises(EngineFileError, match="header length missing"):
        read_engine_header(_raw(tmp_path, MAGIC + b"\x01"))


def test_refuses_oversize_length(tmp_path):
    data = MAGIC + struct.pack("<I", MAX_HEADER_BYTES + 1) + b"{}"
    with pytest.raises(EngineFileError, match="exceeds"):
        read_engine_header(_raw(tmp_path, data))


def test_refuses_truncated_header(tmp_path):
    body = json.dumps(HEADER).encode()
    data = MAGIC + struct.pack("<I", len(body)) + body[:10]
    with pytest.raises(EngineFileError, match="truncated engine file \\(header"):
        read_engine_header(_raw(tmp_path, data))


def test_refuses_missing_plan(tmp_path):
    body = json.dumps(HEADER).encode()
    with pytest.raises(EngineFileError, match="no plan"):
        read_engine_header(_raw(tmp_path, MAGIC + struct.pack("<I", len(body)) + body))


@pytest.mark.parametrize("body", [b"\xff\xfe", b"{not json", b"[1, 2]"])
def test_refuses_bad_json(tmp_path, body):
    with pytest.raises(EngineFileError, match="engine header is not"):
        read_engine_header(_raw(tmp_path, MAGIC + struct.pack("<I", len(body)) + body + PLAN))


def test_refuses_header_without_required_keys(tmp_path):
    body = json.dumps({"precision": "fp32"}).encode()
    with pytest.raises(EngineFileError, match="lacks tensorrt_version"):
        read_engine_header(_raw(tmp_path, MAGIC + struct.pack("<I", len(body)) + body + PLAN))


def test_compatible_same_major_minor_and_gpu():
    check_engine_compatible(HEADER, "10.3.1", "NVIDIA A100-SXM4-80GB", (8, 0))


@pytest.mark.parametrize("version", ["10.4.0", "11.0.0", "8.6.1"])
def test_refuses_other_tensorrt(version):
    with pytest.raises(EngineIncompatibleError, match=f"TensorRT 10.3.0 but TensorRT {version}"):
        check_engine_compatible(HEADER, version, HEADER["gpu_name"], "8.0")


def test_refuses_other_compute_capability():
    with pytest.raises(EngineIncompatibleError, match="compute capability 8.0.*H100.*compute capability 9.0"):
        check_engine_compatible(HEADER, "10.3.0", "NVIDIA H100 80GB HBM3", "9.0")


def test_refuses_other_gpu_same_compute_capability():
    with pytest.raises(EngineIncompatibleError, match="rebuild it here"):
        check_engine_compatible(HEADER, "10.3.0", "NVIDIA A800 80GB PCIe", "8.0")


@pytest.mark.parametrize("cc", [(8, 7), [8, 7], "8.7", "sm_87", "87"])
def test_compute_capability_forms(cc):
    assert normalize_compute_capability(cc) == "8.7"
