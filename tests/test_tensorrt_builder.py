"""build_plan / build_engines against a stand-in `tensorrt` builder: what is configured, written and recorded."""

import sys
import types

import onnx
import pytest
from onnx import TensorProto, helper

import maskclip_export.tensorrt as trt_export
from maskclip_export.manifest import write_manifest
from maskclip_export.tensorrt import PrecisionPlanError, build_engines, build_plan, plan_precision
from maskclip_runtime.artifact import load_artifact
from maskclip_runtime.engine_header import read_engine_header, read_plan
from maskclip_runtime.preprocess import PreprocessSpec

# (ONNX node / TensorRT layer name, ONNX op, TensorRT layer type)
NODES = [
    ("/attn/MatMul", "MatMul", "MATRIX_MULTIPLY"),
    ("/attn/Softmax", "Softmax", "SOFTMAX"),
    ("/head/Sigmoid", "Sigmoid", "ACTIVATION"),
]


def tiny_onnx(path):
    """image [batch,3,4,4] -> MatMul -> Softmax -> Sigmoid -> mask; names as the exporter would write them."""
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 4, 4])
    mask = helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", 3, 4, 4])
    prob = helper.make_tensor_value_info("fake_prob", TensorProto.FLOAT, ["batch", 3, 4, 1])
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], [0.25] * 16)
    nodes = [
        helper.make_node("MatMul", ["image", "w"], ["mm"], name=NODES[0][0]),
        helper.make_node("Softmax", ["mm"], ["sm"], name=NODES[1][0], axis=-1),
        helper.make_node("Sigmoid", ["sm"], ["mask"], name=NODES[2][0]),
        helper.make_node("ReduceMax", ["mask"], ["fake_prob"], name="/head/ReduceMax", axes=[-1]),
    ]
    graph = helper.make_graph(nodes, "g", [image], [prob, mask], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def fake_tensorrt(version: str, record: dict):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.float32, trt.float16 = "float32", "float16"
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8", OBEY_PRECISION_CONSTRAINTS="OBEY", TF32="TF32")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, severity: None})

    class Layer:
        def __init__(self, name, kind):
            self.name, self.type, self.num_outputs = name, types.SimpleNamespace(name=kind), 1
            self.precision, self.output_types = None, {}

        def get_output(self, index):
            return types.SimpleNamespace(dtype=trt.float32)

        def set_output_type(self, index, dtype):
            self.output_types[index] = dtype

    class Network:
        def __init__(self, flags):
            record["network_flags"] = flags
            self.layers = [Layer(name, kind) for name, _, kind in NODES]
            record["layers"] = self.layers

        num_layers = property(lambda self: len(self.layers))

        def get_layer(self, index):
            return self.layers[index]

    class Parser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            record["parsed"] = path
            return True

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, low, opt, high):
            self.shapes[name] = (tuple(low), tuple(opt), tuple(high))

    class TimingCache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return self.data + b"+tuned"

    class Config:
        def __init__(self):
            self.flags, self.cleared, self.profiles = set(), set(), []
            record["config"] = self

        def set_memory_pool_limit(self, pool, size):
            self.workspace = (pool, size)

        def set_flag(self, flag):
            self.flags.add(flag)

        def clear_flag(self, flag):
            self.cleared.add(flag)

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)

        def create_timing_cache(self, data):
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):
            self.timing_cache = cache
            return True

        def get_timing_cache(self):
            return self.timing_cache

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"plan:" + ",".join(sorted(config.flags)).encode()

    trt.Builder, trt.OnnxParser = Builder, Parser
    return trt


@pytest.fixture
def fake_trt(monkeypatch):
    def install(version):
        record = {}
        monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(version, record))
        return record

    return install


SHAPES = {"image": ((1, 3, 4, 4), (2, 3, 4, 4), (8, 3, 4, 4))}


def test_trt10_fp16_flags_pins_and_timing_cache(tmp_path, fake_trt):
    record = fake_trt("10.3.0")
    tiny_onnx(tmp_path / "model.onnx")
    plan = plan_precision("10.3.0", "fp16", "fp32", ["Softmax", "Sigmoid", "LayerNormalization"])
    cache = tmp_path / "timing.cache"
    serialized = build_plan(tmp_path / "model.onnx", plan, SHAPES, 2.0, cache, log=lambda _: None)
    config = record["config"]
    assert serialized == b"plan:FP16,OBEY"
    assert config.cleared == {"TF32"} and config.workspace == ("WORKSPACE", 2 << 30)
    assert record["network_flags"] == 0  # weakly typed: the flags choose precision
    assert config.profiles[0].shapes == SHAPES
    pinned = {layer.name: (layer.precision, layer.output_types) for layer in record["layers"]}
    assert pinned["/attn/Softmax"] == ("float32", {0: "float32"})
    assert pinned["/head/Sigmoid"] == ("float32", {0: "float32"})
    assert pinned["/attn/MatMul"] == (None, {})
    assert cache.read_bytes() == b"+tuned"
    build_plan(tmp_path / "model.onnx", plan, SHAPES, 2.0, cache, log=lambda _: None)
    assert record["config"].timing_cache.data == b"+tuned"  # the saved cache is loaded by the next build
    assert cache.read_bytes() == b"+tuned+tuned"


@pytest.mark.parametrize(("version", "flags"), [("10.3.0", 1), ("11.0.0", 0)])
def test_strongly_typed_network_flag_per_version(tmp_path, fake_trt, version, flags):
    record = fake_trt(version)
    tiny_onnx(tmp_path / "model.onnx")
    plan = plan_precision(version, "fp16", "fp16", ["Softmax"])
    assert build_plan(tmp_path / "model.onnx", plan, SHAPES, 1.0, None, log=lambda _: None) == b"plan:"
    assert record["network_flags"] == flags  # TensorRT 11: always strongly typed, the flag is deprecated
    assert all(layer.precision is None for layer in record["layers"])  # no pins in a strongly typed network


def _artifact(folder, precision="fp16"):
    folder.mkdir()
    tiny_onnx(folder / "model.onnx")
    tensor = {"name": "image", "shape": ["batch", 3, 4, 4], "dtype": "float32"}
    manifest = {
        "format": "maskclip-artifact",
        "format_version": 1,
        "package_version": "0.1.0",
        "model": {"config_name": "tiny", "model_id": "tiny-0123456789ab"},
        "preprocess": PreprocessSpec(size=4).to_dict(),
        "threshold": 0.5,
        "precision": precision,
        "fp32_ops": ["Softmax", "Sigmoid"],
        "topology": "fused",
        "batch": {"dynamic": True, "min": 1, "opt": 1, "max": 8},
        "graphs": [
            {
                "name": "fused",
                "file": "model.onnx",
                "inputs": [tensor],
                "outputs": [{**tensor, "name": "fake_prob"}, {**tensor, "name": "mask"}],
            }
        ],
    }
    write_manifest(folder, manifest)
    return folder


def test_build_engines_writes_headers_and_manifest(tmp_path, fake_trt, monkeypatch):
    fake_trt("10.3.0")
    monkeypatch.setattr(trt_export, "gpu_identity", lambda device: ("Fake GPU", "8.0"))
    monkeypatch.setattr(trt_export, "import_cudart", lambda: types.SimpleNamespace(cudaSetDevice=lambda d: (0,)))
    monkeypatch.setattr(trt_export, "cuda_call", lambda cudart, result: None)
    folder = _artifact(tmp_path / "art")
    onnx_hash = load_artifact(folder).manifest["files"]["model.onnx"]

    engines = build_engines(folder, verify=False, log=lambda _: None)
    assert [(e["graph"], e["file"], e["precision"]) for e in engines] == [("fused", "model.fp16.engine", "fp16")]
    header, _ = read_engine_header(folder / "model.fp16.engine")
    assert header["tensorrt_version"] == "10.3.0" and header["gpu_name"] == "Fake GPU"
    assert header["compute_capability"] == "8.0" and header["strongly_typed"]
    assert header["profile"] == {"image": {"min": [1, 3, 4, 4], "opt": [1, 3, 4, 4], "max": [8, 3, 4, 4]}}
    assert header["manifest_files"] == {"model.onnx": onnx_hash}
    assert read_plan(folder / "model.fp16.engine") == b"plan:"
    artifact = load_artifact(folder)  # the runtime accepts it: every file hashed, engines listed
    assert artifact.engines == {"fused": folder / "model.fp16.engine"}
    assert "timing.cache" in artifact.manifest["files"]

    build_engines(folder, verify=False, log=lambda _: None)  # a rebuild replaces, never duplicates
    assert len(load_artifact(folder).manifest["engines"]) == 1


def test_build_engines_refuses_impossible_precision(tmp_path, fake_trt, monkeypatch):
    fake_trt("11.0.0")
    folder = _artifact(tmp_path / "art", precision="fp32")
    with pytest.raises(PrecisionPlanError, match="export the fp16 graph first"):
        build_engines(folder, "fp16", verify=False, log=lambda _: None)
