"""Static TensorRT compatibility check: every node of a graph must be an ONNX op that TensorRT parses.

The operator list (export/tensorrt_onnx_ops.json) is TensorRT's own support matrix, with its version.
Checking it here means an export that TensorRT would reject fails on a CPU-only machine, at export
time, naming the ops, instead of on the deployment target.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import onnx
from onnx import numpy_helper

from maskclip_runtime.errors import VerificationFailed

DEFAULT_DOMAINS = ("", "ai.onnx")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


class UnsupportedOpsError(VerificationFailed, RuntimeError):
    """A graph uses ops (or op settings) that TensorRT's ONNX parser does not support."""


@dataclass(frozen=True)
class OpIssue:
    graph: str
    node: str
    op_type: str
    reason: str

    def __str__(self) -> str:
        return f"{self.graph}: {self.op_type} ({self.node or 'unnamed'}): {self.reason}"


@cache
def tensorrt_op_table() -> dict:
    """The bundled support matrix: {"tensorrt_version", "opset_range", "supported": {op: {...}}, "unsupported"}."""
    text = resources.files("maskclip_export").joinpath("tensorrt_onnx_ops.json").read_text()
    return json.loads(text)


def _zero_point_is_zero(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto], base_dir: str) -> bool:
    """TensorRT needs symmetric quantisation: a Q/DQ zero point, when given, must be all zeros."""
    if len(node.input) < 3 or not node.input[2]:
        return True
    tensor = constants.get(node.input[2])
    return tensor is not None and not numpy_helper.to_array(tensor, base_dir).any()


def _resize_issue(node: onnx.NodeProto) -> str | None:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    mode = attrs.get("mode", b"nearest").decode()
    if mode not in ("nearest", "linear"):
        return f"Resize mode {mode!r} (TensorRT: nearest, linear)"
    if attrs.get("antialias", 0):
        return "Resize with antialiasing"
    return None


def _node_constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    constants = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    constants[node.output[0]] = attr.t
    return constants


def find_unsupported_ops(model: onnx.ModelProto, graph_name: str = "graph", base_dir: str = "") -> list[OpIssue]:
    """Every node (subgraphs included) whose op or settings TensorRT would reject.

    base_dir: the model file's folder, for tensors kept in external data (large per-channel zero points)."""
    table = tensorrt_op_table()
    supported = table["supported"]
    opset = next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), None)
    issues: list[OpIssue] = []
    low, high = table["opset_range"]
    if opset is not None and not low <= opset <= high:
        issues.append(OpIssue(graph_name, "", "opset", f"opset {opset} outside TensorRT's {low}..{high}"))

    def visit(graph: onnx.GraphProto) -> None:
        constants = _node_constants(graph)
        for node in graph.node:
            if node.domain not in DEFAULT_DOMAINS:
                issues.append(OpIssue(graph_name, node.name, f"{node.domain}.{node.op_type}", "custom domain"))
            elif node.op_type not in supported:
                issues.append(OpIssue(graph_name, node.name, node.op_type, "not in TensorRT's ONNX operator list"))
            elif node.op_type in QDQ_OPS and not _zero_point_is_zero(node, constants, base_dir):
                issues.append(OpIssue(graph_name, node.name, node.op_type, "non-zero zero point"))
            elif node.op_type == "Resize" and (reason := _resize_issue(node)):
                issues.append(OpIssue(graph_name, node.name, node.op_type, reason))
            for attr in node.attribute:
                for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                    visit(sub)

    visit(model.graph)
    return issues


def check_tensorrt_ops(paths: dict[str, Path]) -> None:
    """Raise UnsupportedOpsError naming every offending op across the graphs {graph name: onnx path}."""
    issues: list[OpIssue] = []
    for name, path in paths.items():
        issues += find_unsupported_ops(onnx.load(str(path), load_external_data=False), name, str(path.parent))
    if issues:
        version = tensorrt_op_table()["tensorrt_version"]
        ops = sorted({f"{i.graph}: {i.op_type}" for i in issues})
        raise UnsupportedOpsError(
            f"TensorRT {version} cannot parse {len(issues)} node(s): {', '.join(ops)} (first: {issues[0]})"
        )
