"""A tiny ONNX graph named as the exporter names nodes, and an artifact around it: what the TensorRT stand-ins build."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper
from trt_standin import NETWORK_LAYERS

from maskclip_runtime.contract.artifact import write_manifest
from maskclip_runtime.contract.manifest import Manifest
from maskclip_runtime.kernel.preprocess import PreprocessSpec

SHAPES = {"image": ((1, 3, 4, 4), (2, 3, 4, 4), (8, 3, 4, 4))}


def tiny_onnx(path, weight: float = 0.25):
    """image [batch,3,4,4] -> MatMul -> Softmax -> Sigmoid -> mask, fake_prob, logits; named as the exporter
    names nodes (so the stand-in network's layers match them)."""
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 4, 4])
    mask = helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", 3, 4, 4])
    prob = helper.make_tensor_value_info("fake_prob", TensorProto.FLOAT, ["batch"])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, 4, 4])
    nodes = [
        helper.make_node("MatMul", ["image", "w"], ["logits"], name=NETWORK_LAYERS[0][0]),
        helper.make_node("Softmax", ["logits"], ["sm"], name=NETWORK_LAYERS[1][0], axis=-1),
        helper.make_node("Sigmoid", ["sm"], ["mask"], name=NETWORK_LAYERS[2][0]),
        helper.make_node("ReduceMax", ["mask"], ["fake_prob"], name="/head/ReduceMax", axes=[1, 2, 3], keepdims=0),
    ]
    weights = [helper.make_tensor("w", TensorProto.FLOAT, [4, 4], [weight] * 16)]
    graph = helper.make_graph(nodes, "g", [image], [logits, prob, mask], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def onnx_artifact(folder, precision="fp16"):
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
                "outputs": [{**tensor, "name": name} for name in ("logits", "fake_prob", "mask")],
            }
        ],
    }
    write_manifest(folder, Manifest.from_dict(manifest))
    return folder
