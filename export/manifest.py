"""The artifact manifest (CONTRACTS.md): everything the runtime needs travels with the graphs.

Model config and id, preprocessing, threshold, precision and the ops kept in fp32, the graph chain
with tensor names/shapes/dtypes, batch profile, tool versions, the sha256 of every file, and the
verification report.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx
import onnxruntime
import onnxslim
import torch

import maskclip_core
from maskclip_core.model import MaskCLIP
from maskclip_runtime.artifact import FORMAT, MANIFEST_NAME
from maskclip_runtime.atomic import write_text_atomic
from maskclip_runtime.hashing import file_sha256

from .onnx_export import BatchSpec, GraphSpec

FORMAT_VERSION = 1


def state_dict_digest(model: MaskCLIP) -> str:
    """sha256 over the model's tensors (names, dtypes, shapes, bytes): the same weights give the same id."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_id(config_name: str, weights_digest: str) -> str:
    return f"{config_name}-{weights_digest[:12]}"


def _dim(dim: onnx.TensorShapeProto.Dimension) -> int | str:
    return dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "?")


def tensor_entries(values) -> list[dict]:
    """ONNX ValueInfos -> [{"name", "shape", "dtype"}] (symbolic dims as their names, e.g. "batch")."""
    return [
        {
            "name": v.name,
            "shape": [_dim(d) for d in v.type.tensor_type.shape.dim],
            "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
        }
        for v in values
    ]


def graph_entry(spec: GraphSpec, path: Path) -> dict:
    graph = onnx.load(str(path), load_external_data=False).graph
    inputs = {e["name"]: e for e in tensor_entries(graph.input)}
    outputs = {e["name"]: e for e in tensor_entries(graph.output)}
    # Listed in the wrapper's order (the runtime feeds by name, people read by order).
    return {
        "name": spec.name,
        "file": spec.file,
        "inputs": [inputs[name] for name in spec.inputs],
        "outputs": [outputs[name] for name in spec.outputs],
    }


def versions(opset: int) -> dict:
    return {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxslim": onnxslim.__version__,
        "opset": opset,
        "maskclip": maskclip_core.__version__,
    }


def build_manifest(
    model: MaskCLIP,
    source: str,
    weights_digest: str,
    precision: str,
    fp32_ops: list[str],
    topology: str,
    batch: BatchSpec,
    graphs: list[tuple[GraphSpec, Path]],
    opset: int,
    extra: dict | None = None,
) -> dict:
    """Everything but "files" and "verification" (added when the folder is complete)."""
    cfg = model.config
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": maskclip_core.__version__,
        "model": {
            "config_name": cfg.name,
            "config": cfg.to_dict(),
            "model_id": model_id(cfg.name, weights_digest),
            "source": source,
        },
        "preprocess": model.preprocess_spec().to_dict(),
        "threshold": cfg.threshold,
        "precision": precision,
        "fp32_ops": fp32_ops,
        "topology": topology,
        "batch": batch.to_manifest(),
        "graphs": [graph_entry(spec, path) for spec, path in graphs],
        "versions": versions(opset),
        **(extra or {}),
    }


def hash_files(directory: Path) -> dict[str, str]:
    """sha256 of every file under directory (relative POSIX paths), manifest.json excepted."""
    return {
        path.relative_to(directory).as_posix(): file_sha256(path)
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != MANIFEST_NAME
    }


def write_manifest(directory: Path, manifest: dict) -> Path:
    """Hash the folder's files into the manifest and write it (atomically)."""
    manifest = {**manifest, "files": hash_files(directory)}
    path = directory / MANIFEST_NAME
    write_text_atomic(path, json.dumps(manifest, indent=2) + "\n")
    return path
