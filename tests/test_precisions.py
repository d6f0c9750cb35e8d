"""The precision table is the one place precisions are defined: everything that offers or handles one follows it."""

from __future__ import annotations

import pytest

from maskclip_runtime.contract.precision_table import (
    DEFAULT_PRECISION,
    ONNXRUNTIME,
    PRECISIONS,
    TENSORRT,
    UnknownPrecision,
    precision_row,
    precisions_for,
)


def test_an_unknown_precision_is_refused_with_its_own_error():
    with pytest.raises(UnknownPrecision):
        precision_row("bf8")


def test_every_row_can_be_exported():
    """A row needs a graph conversion: none for the fp32 graph's rows, calibrated quantisation or a float conversion."""
    from maskclip_export.quantize import FLOAT_CONVERSIONS, INT8_SCHEMES

    for name, row in PRECISIONS.items():
        if row.fp32_graph:
            continue
        assert name in (INT8_SCHEMES if row.calibrated else FLOAT_CONVERSIONS), name


def test_benchmark_artifact_rows_are_the_tables_backends():
    from maskclip_bench.backends import BACKENDS, RUNTIME_PREFIXES

    artifact_rows = {pair for pair in BACKENDS.values() if pair[0] in RUNTIME_PREFIXES}
    assert artifact_rows == {(backend, name) for name, row in PRECISIONS.items() for backend in row.backends}


def test_only_rows_that_list_tensorrt_go_to_tensorrt():
    assert set(precisions_for(TENSORRT)) == {name for name, row in PRECISIONS.items() if row.tensorrt}
    # every ONNX graph runs on ONNX Runtime; an OpenVINO IR does not
    assert set(precisions_for(ONNXRUNTIME)) == {n for n, row in PRECISIONS.items() if row.graph_suffix == ".onnx"}
    assert "int8-cpu" not in precisions_for(TENSORRT)


def test_a_gate_is_no_looser_than_the_default_precisions():
    strict = PRECISIONS[DEFAULT_PRECISION].gate
    for row in PRECISIONS.values():
        assert row.gate.max_prob_diff >= strict.max_prob_diff and row.gate.max_flip_rate >= strict.max_flip_rate


def test_bf16_engines_are_the_fp32_graph_with_the_bf16_flag():
    """bf16 artifacts hold the fp32 graph: TensorRT 10 builds it with BF16 (never strongly typed as fp32);
    TensorRT 11 has no flag for it and says so."""
    from maskclip_export.tensorrt import PrecisionPlanError, plan_precision

    for graph in ("bf16", "fp32"):
        plan = plan_precision("10.3.0", "bf16", graph)
        assert not plan.strongly_typed and "BF16" in plan.builder_flags
    with pytest.raises(PrecisionPlanError, match="TensorRT 10"):
        plan_precision("11.4.0", "bf16", "bf16")
