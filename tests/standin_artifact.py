"""A stand-in artifact built with onnx.helper, so the runtime is tested without torch or the exporter.

The graphs follow the artifact contract (image [B,3,S,S] -> logits [B,2], fake_prob [B],
mask [B,1,S,S]) with a few constant ops: the mask is sigmoid(4 * channel mean) per pixel, so it
follows the image content (bright = "generated") and rotates with it; fake_prob comes from the
global mean. The split version computes the same in two graphs chained by the tensor name "feat".
The runtime test modules import the builders from here (a helper module, not a test module).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from maskclip_runtime import __version__
from maskclip_runtime.kernel.preprocess import PreprocessSpec

SIZE = 32
OPSET = 17


def _tensor(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _feature_nodes() -> list:
    return [helper.make_node("ReduceMean", ["image"], ["feat"], axes=[1], keepdims=1)]  # [B,1,S,S]


def _head_nodes() -> tuple[list, list]:
    nodes = [
        helper.make_node("Mul", ["feat", "mask_gain"], ["mask_logit"]),
        helper.make_node("Sigmoid", ["mask_logit"], ["mask"]),
        helper.make_node("ReduceMean", ["feat"], ["pooled"], axes=[2, 3], keepdims=0),  # [B,1]
        helper.make_node("Mul", ["pooled", "class_weight"], ["scaled"]),  # [B,2]
        helper.make_node("Add", ["scaled", "class_bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        helper.make_node("Gather", ["probs", "fake_index"], ["fake_prob"], axis=1),  # [B]
    ]
    constants = [
        numpy_helper.from_array(np.array(4.0, np.float32), "mask_gain"),
        numpy_helper.from_array(np.array([[-3.0, 3.0]], np.float32), "class_weight"),
        numpy_helper.from_array(np.array([[0.2, -0.2]], np.float32), "class_bias"),
        numpy_helper.from_array(np.array(1, np.int64), "fake_index"),
    ]
    return nodes, constants


def _io(batch) -> dict[str, list]:
    return {
        "image": [batch, 3, SIZE, SIZE],
        "feat": [batch, 1, SIZE, SIZE],
        "logits": [batch, 2],
        "fake_prob": [batch],
        "mask": [batch, 1, SIZE, SIZE],
    }


def _save(path: Path, name: str, nodes: list, constants: list, inputs: list[str], outputs: list[str], batch) -> dict:
    shapes = _io(batch)
    graph = helper.make_graph(
        nodes, name, [_tensor(n, shapes[n]) for n in inputs], [_tensor(n, shapes[n]) for n in outputs], constants
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)

    def spec(n):
        return {"name": n, "shape": shapes[n], "dtype": "float32"}

    return {"name": name, "file": path.name, "inputs": [spec(n) for n in inputs], "outputs": [spec(n) for n in outputs]}


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_standin_artifact(folder: Path, topology: str = "fused", batch: dict | None = None) -> Path:
    """Write a complete artifact folder (graphs + manifest with correct hashes); returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    batch = batch or {"dynamic": True, "min": 1, "opt": 4, "max": 8}
    dim = "batch" if batch["dynamic"] else batch["size"]
    heads, constants = _head_nodes()
    if topology == "fused":
        graphs = [
            _save(
                folder / "model.onnx",
                "fused",
                _feature_nodes() + heads,
                constants,
                ["image"],
                ["logits", "fake_prob", "mask"],
                dim,
            )
        ]
    elif topology == "split":
        graphs = [
            _save(folder / "features.onnx", "features", _feature_nodes(), [], ["image"], ["feat"], dim),
            _save(folder / "heads.onnx", "heads", heads, constants, ["feat"], ["logits", "fake_prob", "mask"], dim),
        ]
    else:
        raise ValueError(topology)
    manifest = {
        "format": "maskclip-artifact",
        "format_version": 1,
        "package_version": __version__,
        "model": {"config_name": "standin", "config": {}, "model_id": f"standin-{topology}", "source": "test"},
        "preprocess": PreprocessSpec(size=SIZE).to_dict(),
        "threshold": 0.5,
        "precision": "fp32",
        "fp32_ops": [],
        "topology": topology,
        "batch": batch,
        "graphs": graphs,
        "versions": {"onnx": onnx.__version__, "opset": OPSET},
        "files": {g["file"]: sha256_of(folder / g["file"]) for g in graphs},
    }
    write_manifest(folder, manifest)
    return folder


def write_manifest(folder: Path, manifest: dict) -> None:
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))


def read_manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def sample_photos() -> dict[str, Image.Image]:
    """scikit-image's bundled photos (no download) as RGB PIL images of different sizes."""
    from skimage import data

    return {name: Image.fromarray(getattr(data, name)()) for name in ("astronaut", "coffee", "chelsea", "rocket")}


def expected_standin_output(image: Image.Image) -> tuple[float, np.ndarray]:
    """The stand-in model computed independently in numpy: (fake_prob, mask [S,S])."""
    spec = PreprocessSpec(size=SIZE)
    resized = np.asarray(image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR), np.float32) / 255.0
    x = (resized - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    feat = x.mean(axis=2)
    mask = 1.0 / (1.0 + np.exp(-4.0 * feat))
    pooled = feat.mean()
    logits = np.array([-3.0 * pooled + 0.2, 3.0 * pooled - 0.2])
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    return float(probs[1]), mask
