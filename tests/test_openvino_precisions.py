"""The OpenVINO precisions on the embedded demo model, in the cascade topology: int8-openvino (NNCF IR, its
gate, its files hashed like every file) and bf16 (the fp32 graph, run in bf16 where the CPU has it).

Two exports shared by the module; the gate's figures are recomputed here from PyTorch and the runtime."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import sys
from dataclasses import asdict
from importlib.util import find_spec

import numpy as np
import pytest
import torch
from PIL import Image

from maskclip_core.checkpoint import weights_digest
from maskclip_core.demo import load_demo_model
from maskclip_export import triton as triton_repo
from maskclip_export.exporter import ExportOptions, ModelSource, export_artifact
from maskclip_export.quantize import OPENVINO_INT8_RECIPE
from maskclip_export.verify import default_verification_images
from maskclip_runtime.backends.registry import BackendChoiceError
from maskclip_runtime.contract.artifact import ArtifactError, load_artifact
from maskclip_runtime.contract.manifest import MANIFEST_NAME, BatchSpec, ManifestError
from maskclip_runtime.contract.precision_table import precision_row
from maskclip_runtime.detect.compare import mask_iou
from maskclip_runtime.detect.detector import Detector
from maskclip_runtime.errors import BackendUnavailable
from maskclip_runtime.kernel.host import Host, current_host
from maskclip_runtime.kernel.preprocess import preprocess_batch

pytest.importorskip("nncf")
pytestmark = [pytest.mark.torch, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def demo():
    model = load_demo_model().eval()
    return model, ModelSource(model, "embedded demo model", weights_digest(model))


@pytest.fixture(scope="module")
def int8_cascade(demo, tmp_path_factory):
    calib = tmp_path_factory.mktemp("calib")
    for name, image in default_verification_images():
        Image.fromarray(image).save(calib / f"{name}.png")
    out = tmp_path_factory.mktemp("art") / "cascade-int8-openvino"
    options = ExportOptions(
        out=out, topology="cascade", precision="int8-openvino", calib=str(calib), calib_count=64,
        batch=BatchSpec.up_to(4),
    )  # fmt: skip
    export_artifact(demo[1], options, progress=False)
    return out


@pytest.fixture(scope="module")
def bf16_cascade(demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("art") / "cascade-bf16"
    notes = []
    export_artifact(
        demo[1],
        ExportOptions(out=out, topology="cascade", precision="bf16", batch=BatchSpec.up_to(4)),
        False,
        notes.append,
    )
    return out, notes


def _photos() -> list[np.ndarray]:
    """Images the calibration never saw: the gate set mirrored and rotated."""
    return [np.ascontiguousarray(np.rot90(image[:, ::-1])) for _, image in default_verification_images()[::4]]


def _independent_gate(model, artifact) -> tuple[float, float]:
    """(max |fake_prob| diff, mean mask IoU) of the artifact on OpenVINO against the PyTorch model."""
    batch = preprocess_batch([Image.fromarray(p) for p in _photos()], model.preprocess_spec())
    with torch.no_grad():
        out = model(torch.from_numpy(batch))
    with Detector(artifact, backend="openvino", device="cpu", batch=4, self_check=False) as detector:
        probs, masks = zip(*(detector.forward(batch[i : i + 4]) for i in range(0, len(batch), 4)), strict=True)
    prob, mask = np.concatenate(probs), np.concatenate(masks)
    reference_prob = out["fake_prob"].numpy().reshape(-1)
    reference_mask = out["mask_prob"].numpy().reshape(mask.shape)
    threshold = model.config.threshold
    return float(np.abs(prob - reference_prob).max()), float(mask_iou(reference_mask, mask, threshold).mean())


def test_int8_openvino_passes_its_gate_with_the_recorded_recipe(demo, int8_cascade):
    manifest = load_artifact(int8_cascade).manifest
    assert manifest.gate_passed is True
    assert manifest.verification["candidate_backend"] == "openvino-cpu"
    assert manifest.int8["recipe"] == asdict(OPENVINO_INT8_RECIPE)
    assert manifest.int8["fp32_nodes"]["screen"]  # attention products, detection head ...
    gate = precision_row("int8-openvino").gate
    max_diff, iou = _independent_gate(demo[0], int8_cascade)
    assert max_diff <= gate.max_prob_diff and iou >= gate.min_mask_iou


def test_the_ir_is_listed_and_hashed_like_every_file(int8_cascade, tmp_path):
    manifest = load_artifact(int8_cascade).manifest
    assert [g.file for g in manifest.graphs] == ["screen.xml", "localise.xml"]
    for name in ("screen.xml", "screen.bin", "localise.xml", "localise.bin"):
        assert manifest.files[name] == hashlib.sha256((int8_cascade / name).read_bytes()).hexdigest()
    # A changed weights file is refused...
    copy = tmp_path / "tampered"
    shutil.copytree(int8_cascade, copy)
    data = bytearray((copy / "screen.bin").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "screen.bin").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="screen.bin"):
        load_artifact(copy)
    # ... and so is a manifest that stops listing it (it would never be hash-checked).
    shutil.copy(int8_cascade / "screen.bin", copy / "screen.bin")
    document = json.loads((copy / MANIFEST_NAME).read_text())
    del document["files"]["screen.bin"]
    (copy / MANIFEST_NAME).write_text(json.dumps(document))
    with pytest.raises(ManifestError, match="screen.bin"):
        load_artifact(copy)


def test_int8_openvino_runs_on_openvino_only(int8_cascade):
    with pytest.raises(BackendChoiceError, match="int8-openvino artifacts run on openvino"):
        Detector(int8_cascade, backend="onnxruntime", self_check=False)
    with Detector(int8_cascade) as detector:  # auto
        assert detector.backend == "openvino-cpu" and detector.self_check.status == "passed"


@pytest.mark.parametrize("precision", ["int8-openvino", "bf16"])
def test_the_cascade_gives_every_verdict_and_masks_only_where_asked(precision, int8_cascade, bf16_cascade):
    artifact = int8_cascade if precision == "int8-openvino" else bf16_cascade[0]
    images = _photos()[:6]
    with Detector(artifact, backend="openvino", batch=4) as detector:
        assert detector.cascade
        everything = detector.detect(images, masks_for="all")
        verdicts_only = detector.detect(images, masks_for="none")
    assert [d.fake_prob for d in everything] == pytest.approx([d.fake_prob for d in verdicts_only], abs=1e-6)
    assert all(d.mask is not None for d in everything) and all(d.mask is None for d in verdicts_only)


def test_bf16_is_the_fp32_graph_gated_on_openvino(bf16_cascade, demo):
    artifact, notes = bf16_cascade
    manifest = load_artifact(artifact).manifest
    assert manifest.gate_passed is True and manifest.verification["candidate_backend"] == "openvino-cpu"
    assert [g.file for g in manifest.graphs] == ["screen.onnx", "localise.onnx"]
    measured = manifest.verification["inference_precision"]
    assert measured == ("bf16" if current_host().native_bf16 else "f32")
    # Where the CPU has no bf16 the export says the gate measured fp32 and leaves it to the device's self-check.
    assert any("gate measured fp32" in note for note in notes) != current_host().native_bf16
    max_diff, iou = _independent_gate(demo[0], artifact)
    gate = precision_row("bf16").gate
    assert max_diff <= gate.max_prob_diff and iou >= gate.min_mask_iou


def test_triton_serves_openvino_artifacts_with_its_openvino_backend(int8_cascade, tmp_path):
    written = triton_repo.write_repository(int8_cascade, tmp_path, name="mc")
    assert sorted(p.name for p in written) == ["mc", "mc_localise", "mc_screen"]
    config = (tmp_path / "mc_screen" / "config.pbtxt").read_text()
    assert 'backend: "openvino"' in config and "platform:" not in config and "default_model_filename" not in config
    assert 'key: "HINT_BF16"' in config
    for suffix in (".xml", ".bin"):
        assert (tmp_path / "mc_screen" / "1" / f"model{suffix}").read_bytes() == (
            int8_cascade / f"screen{suffix}"
        ).read_bytes()
    for backend in ("onnxruntime", "tensorrt"):
        with pytest.raises(triton_repo.TritonExportError):
            triton_repo.write_repository(int8_cascade, tmp_path / backend, backend=backend)
    with pytest.raises(triton_repo.TritonExportError, match="OpenVINO IR"):
        triton_repo.write_repository(int8_cascade, tmp_path / "raw", raw_input=True)


def test_auto_picks_the_backend_that_runs_the_precision(monkeypatch):
    from types import SimpleNamespace

    from maskclip_runtime.backends import openvino as ov_backend
    from maskclip_runtime.backends import registry

    avx2 = Host("x86_64", "AVX2-only", 2, ("avx", "avx2", "fma"), True)
    bf16_cpu = Host("x86_64", "AVX-512-bf16", 2, ("avx2", "avx512f", "avx512_vnni", "avx512_bf16"), True)

    def first_cpu_backend(precision, host):
        monkeypatch.setattr(ov_backend, "current_host", lambda: host)
        order = [b.name for b in registry.auto_order(SimpleNamespace(precision=precision)) if not b.gpu_only]
        return order[0]

    for host in (avx2, bf16_cpu):
        assert first_cpu_backend("fp32", host) == "onnxruntime"
        assert first_cpu_backend("int8-cpu", host) == "onnxruntime"
        assert first_cpu_backend("int8-openvino", host) == "openvino"
    assert first_cpu_backend("bf16", bf16_cpu) == "openvino"
    assert first_cpu_backend("bf16", avx2) == "onnxruntime"  # the same fp32 arithmetic, faster there


@pytest.mark.parametrize(
    ("blocked", "precision"), [("openvino", "bf16"), ("openvino", "int8-openvino"), ("nncf", "int8-openvino")]
)
def test_an_export_that_needs_openvino_says_so_before_any_work(blocked, precision, demo, tmp_path, monkeypatch):
    from maskclip_runtime.backends import openvino as ov_backend

    monkeypatch.setitem(sys.modules, blocked, None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == blocked else find_spec(name, *a))
    ov_backend._core.cache_clear()
    options = ExportOptions(
        out=tmp_path / "a", precision=precision, calib=str(tmp_path) if precision != "bf16" else None
    )
    with pytest.raises(BackendUnavailable, match=r'pip install -c constraints.txt -e "\.\[openvino\]"'):
        export_artifact(demo[1], options, progress=False)
    assert not list(tmp_path.iterdir())


def _four_layer_graph(path, rng) -> tuple[list[np.ndarray], int]:
    """x [8,64] -> 4 x (MatMul, Tanh), one weight column 40x the rest (its int8 range stretches): the weights
    and the width, for an independent numpy forward pass."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    width, weights, nodes, tensor = 64, [], [], "image"
    for i in range(4):
        weight = rng.normal(0, 1 / np.sqrt(width), (width, width)).astype(np.float32)
        weight[:, 0] *= 40 if i == 1 else 1
        weights.append(weight)
        nodes += [
            helper.make_node("MatMul", [tensor, f"w{i}"], [f"m{i}"], name=f"/block{i}/MatMul"),
            helper.make_node("Tanh", [f"m{i}"], [f"t{i}"], name=f"/block{i}/Tanh"),
        ]
        tensor = f"t{i}"
    nodes.append(helper.make_node("Identity", [tensor], ["logits"], name="/out"))
    io = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [8, width]) for name in ("image", "logits")]
    initializers = [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)]
    graph = helper.make_graph(nodes, "g", io[:1], io[1:], initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return weights, width


def test_accuracy_control_keeps_the_ir_within_its_drop_measured_independently(tmp_path):
    """The recipe's accuracy_drop lever (nncf.quantize_with_accuracy_control with `_agreement` as its metric):
    plain quantisation of this graph falls below 1 - max_drop; accuracy control returns the ops that cost most
    to fp32 until the IR is within it, and keeps the rest int8. Agreement is recomputed from a numpy forward."""
    import openvino

    from maskclip_export.quantize import FeedCalibrationReader, OpenVinoRecipe, quantize_for_openvino

    rng = np.random.default_rng(0)
    weights, width = _four_layer_graph(tmp_path / "g.onnx", rng)
    feeds = [{"image": rng.normal(0, 1, (8, width)).astype(np.float32)} for _ in range(8)]

    def agreement(ir) -> float:
        compiled = openvino.Core().compile_model(str(ir), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        worst = 0.0
        for feed in feeds:
            expected = feed["image"]
            for weight in weights:
                expected = np.tanh(expected.astype(np.float64) @ weight)
            worst = max(worst, np.abs(compiled(feed)[0] - expected).max() / np.abs(expected).max())
        return 1 - worst

    max_drop, results = 0.03, {}
    for name, drop in (("plain", None), ("controlled", max_drop)):
        ir = tmp_path / f"{name}.xml"
        recipe = OpenVinoRecipe(name, accuracy_drop=drop, activation_ranges="minmax")
        quantize_for_openvino(tmp_path / "g.onnx", ir, FeedCalibrationReader(feeds), reduce_range=True, recipe=recipe)
        results[name] = (agreement(ir), ir.read_text().count('type="FakeQuantize"'))
    (plain, plain_quantized), (controlled, controlled_quantized) = results["plain"], results["controlled"]
    assert plain < 1 - max_drop, plain
    assert controlled >= 1 - max_drop - 1e-4, controlled  # 1e-4: numpy float64 against OpenVINO's f32
    assert 0 < controlled_quantized < plain_quantized  # some ops back in fp32, not all of them


def test_the_accuracy_control_metric_is_the_worst_relative_error():
    """`_agreement` against a hand count: 1 - max|out - ref| / max|ref|, worst over outputs and feeds."""
    from maskclip_export.quantize import _agreement

    class Port:
        def __init__(self, name):
            self.name = name

        def get_any_name(self):
            return self.name

    feeds = [{"x": np.zeros(1)}, {"x": np.ones(1)}]
    expected = {
        id(feeds[0]): {"a": np.array([2.0, -4.0]), "b": np.array([1.0])},
        id(feeds[1]): {"a": np.array([10.0]), "b": np.array([0.0])},
    }
    outputs = {
        id(feeds[0]): {"a": np.array([2.0, -3.0]), "b": np.array([1.0])},
        id(feeds[1]): {"a": np.array([9.0]), "b": np.array([0.0])},
    }

    def compiled(feed):
        return {Port(name): value for name, value in outputs[id(feed)].items()}

    worst, per_feed = _agreement(expected, compiled, feeds)
    assert per_feed == pytest.approx([1 - 1 / 4, 1 - 1 / 10])  # feed 0: |-3 - -4| / 4; feed 1: 1 / 10 ("b" is exact)
    assert worst == pytest.approx(0.75)
