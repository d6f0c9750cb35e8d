"""The TensorRT op-list check and the gate's statistics, on hand-made graphs and arrays (no model)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from maskclip_export.op_support import UnsupportedOpsError, check_tensorrt_ops, find_unsupported_ops, tensorrt_op_table
from maskclip_export.quantize import int8_excluded_nodes
from maskclip_export.verify import run_batched
from maskclip_runtime.contract.manifest import BatchSpec
from maskclip_runtime.contract.precision_table import PRECISIONS
from maskclip_runtime.detect.compare import compare, gate_failures, mask_iou


def _graph(nodes, initializers=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=list(initializers),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_op_table_names_its_tensorrt_version_and_covers_the_model_ops():
    table = tensorrt_op_table()
    assert table["tensorrt_version"].startswith("10.")
    used = {"Conv", "ConvTranspose", "MatMul", "Gemm", "LayerNormalization", "Softmax", "Sigmoid", "Resize", "Erf",
            "Reshape", "Transpose", "Concat", "Slice", "Pad", "MaxPool", "ReduceMean", "QuantizeLinear",
            "DequantizeLinear", "Cast"}  # fmt: skip
    assert used <= set(table["supported"])
    assert "Unique" in table["unsupported"] and "Unique" not in table["supported"]


def test_supported_graph_passes(tmp_path):
    model = _graph([helper.make_node("Sigmoid", ["x"], ["y"])])
    assert find_unsupported_ops(model) == []
    onnx.save(model, str(tmp_path / "ok.onnx"))
    check_tensorrt_ops({"ok": tmp_path / "ok.onnx"})


def test_unsupported_ops_are_named(tmp_path):
    model = _graph(
        [
            helper.make_node("Unique", ["x"], ["u"]),
            helper.make_node("FastGelu", ["u"], ["y"], domain="com.microsoft"),
        ]
    )
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    issues = find_unsupported_ops(model, "fused")
    assert {i.op_type for i in issues} == {"Unique", "com.microsoft.FastGelu"}
    onnx.save(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(UnsupportedOpsError, match="fused: Unique") as caught:
        check_tensorrt_ops({"fused": tmp_path / "bad.onnx"})
    assert "com.microsoft.FastGelu" in str(caught.value) and "\n" not in str(caught.value)


def test_asymmetric_quantisation_and_old_opsets_are_rejected():
    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    zero = helper.make_tensor("z", TensorProto.INT8, [], [3])
    model = _graph([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])], [scale, zero])
    assert [i.reason for i in find_unsupported_ops(model)] == ["non-zero zero point"]
    old = _graph([helper.make_node("Sigmoid", ["x"], ["y"])], opset=7)
    assert "opset 7" in find_unsupported_ops(old)[0].reason


def test_resize_modes_tensorrt_cannot_run():
    model = _graph([helper.make_node("Resize", ["x", "", "", ""], ["y"], mode="cubic")])
    assert "cubic" in find_unsupported_ops(model)[0].reason


def test_mask_iou_two_empty_masks_agree():
    empty = np.zeros((2, 1, 4, 4), np.float32)
    half = empty.copy()
    half[1, 0, :2] = 0.9
    np.testing.assert_allclose(mask_iou(empty, empty, 0.5), [1.0, 1.0])
    np.testing.assert_allclose(mask_iou(empty, half, 0.5), [1.0, 0.0])


def test_run_batched_pads_static_batches_and_drops_the_padding():
    seen = []

    def predict(x):
        seen.append(len(x))
        return {"fake_prob": x[:, 0, 0, 0]}

    images = np.arange(5, dtype=np.float32).reshape(5, 1, 1, 1)
    out = run_batched(predict, images, BatchSpec.fixed(2))
    assert seen == [2, 2, 2]
    np.testing.assert_array_equal(out["fake_prob"], np.arange(5))
    seen.clear()
    run_batched(predict, images, BatchSpec.up_to(4))
    assert seen == [4, 1]


def _outputs(probs, masks):
    probs = np.asarray(probs, np.float32)
    return {"logits": np.stack([1 - probs, probs], 1), "fake_prob": probs, "mask": np.asarray(masks, np.float32)}


def test_gate_counts_flips_and_judges_by_precision():
    masks = np.zeros((4, 1, 2, 2))
    reference = _outputs([0.1, 0.49, 0.6, 0.9], masks)
    candidate = _outputs([0.1, 0.51, 0.6, 0.9], masks)
    stats = compare(reference, candidate, ["a", "b", "c", "d"], 0.5)
    assert stats["flips"] == 1 and stats["flip_rate"] == 0.25
    assert stats["per_image"][1]["flip"] and stats["max_prob_diff"] == pytest.approx(0.02, abs=1e-6)
    assert len(gate_failures(stats, PRECISIONS["fp32"].gate)) == 2  # prob diff and flips (masks agree)
    assert len(gate_failures(stats, PRECISIONS["int8"].gate)) == 1  # flips only


def test_gate_rejects_non_finite_outputs():
    masks = np.zeros((1, 1, 2, 2))
    candidate = _outputs([0.2], masks)
    candidate["logits"][0, 0] = np.nan
    stats = compare(_outputs([0.2], masks), candidate, ["a"], 0.5)
    assert "logits: non-finite values" in gate_failures(stats, PRECISIONS["fp16"].gate)


def test_int8_quantises_only_linear_layer_matmuls():
    """Linear layers (x @ 2-D weight) and convolutions are quantised; attention products, Softmax inputs,
    products with 3-D position tables (the MAE's relative-position bias) and 1-channel prediction heads
    stay fp32."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], [0.1] * 16)
    table = helper.make_tensor("rel_pos", TensorProto.FLOAT, [2, 4, 2], [0.1] * 16)
    kernel = helper.make_tensor("k", TensorProto.FLOAT, [4, 4, 1, 1], [0.1] * 16)
    head = helper.make_tensor("k_head", TensorProto.FLOAT, [1, 4, 1, 1], [0.1] * 4)
    nodes = [
        helper.make_node("Conv", ["img", "k"], ["c"], name="conv"),
        helper.make_node("Conv", ["c", "k_head"], ["mask"], name="mask_head"),
        helper.make_node("MatMul", ["x", "w"], ["h"], name="linear"),
        helper.make_node("MatMul", ["h", "h_t"], ["scores"], name="q_k"),
        helper.make_node("MatMul", ["x", "w"], ["logits"], name="head"),
        helper.make_node("Softmax", ["logits"], ["p"], name="softmax"),
        helper.make_node("MatMul", ["h", "rel_pos"], ["bias"], name="position"),
        helper.make_node("Transpose", ["h"], ["h_t"], name="t"),
    ]
    model = _graph(nodes, [weight, table, kernel, head])
    assert sorted(int8_excluded_nodes(model)) == ["head", "mask_head", "position", "q_k"]


def test_the_default_gate_images_are_shared_read_only():
    """Made once per process and handed to every gate: a caller that altered one would alter every later gate,
    so writing into them fails, and dropping entries from the list handed out leaves the next list whole."""
    from maskclip_export.verify import default_verification_images

    first = default_verification_images()
    assert len(first) == 64 and len({name for name, _ in first}) == 64
    with pytest.raises(ValueError, match="read-only"):
        first[0][1][0, 0, 0] = 1
    first.clear()
    again = default_verification_images()
    assert len(again) == 64 and all(image.dtype == np.uint8 and image.shape[2] == 3 for _, image in again)
