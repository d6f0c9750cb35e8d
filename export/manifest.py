"""Build an artifact's manifest (maskclip_runtime.contract.manifest owns its types and keys) from what export made.

The parts only export can see: the graphs' tensor shapes and dtypes as written into the ONNX files,
and the tool versions.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime
import onnxslim
import torch

import maskclip_core
from maskclip_core.model import MaskCLIP
from maskclip_runtime.contract.manifest import BatchSpec, GraphSpec, Manifest, ModelIdentity, TensorSpec


def _dim(dim: onnx.TensorShapeProto.Dimension) -> int | str:
    return dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "?")


def tensor_specs(values) -> dict[str, TensorSpec]:
    """ONNX ValueInfos -> {name: TensorSpec} (symbolic dims as their names, e.g. "batch")."""
    return {
        v.name: TensorSpec(
            v.name,
            tuple(_dim(d) for d in v.type.tensor_type.shape.dim),
            onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
        )
        for v in values
    }


def written_graph(spec: GraphSpec, path: Path) -> GraphSpec:
    """The graph as written: its tensors' shapes and dtypes read back from the ONNX file."""
    graph = onnx.load(str(path), load_external_data=False).graph
    inputs, outputs = tensor_specs(graph.input), tensor_specs(graph.output)
    # Listed in the wrapper's order (the runtime feeds by name, people read by order).
    return GraphSpec(
        spec.name,
        spec.file,
        tuple(inputs[name] for name in spec.input_names),
        tuple(outputs[name] for name in spec.output_names),
    )


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
    identity: ModelIdentity,
    fp32_ops: list[str],
    batch: BatchSpec,
    graphs: list[tuple[GraphSpec, Path]],
    opset: int,
    int8: dict | None = None,
) -> Manifest:
    """Everything but the files' hashes (added by write_manifest) and the reports (added as they are made)."""
    return Manifest(
        identity=identity,
        config=model.config.to_dict(),
        source=source,
        preprocess=model.preprocess_spec(),
        threshold=model.config.threshold,
        batch=batch,
        graphs=tuple(written_graph(spec, path) for spec, path in graphs),
        package_version=maskclip_core.__version__,
        versions=versions(opset),
        fp32_ops=tuple(fp32_ops),
        int8=int8,
    )
