"""The precisions an artifact can be exported at, as one table (Ultralytics' `export_formats()`).

Every place that needs to know about precisions reads this table: maskclip-export's --precision
choices and its steps (calibration), the verification gate's tolerances (also the self-check
canaries'), which backends a graph may be deployed to (TensorRT plans, Triton, benchmark rows) and
the TensorRT builder flags. Adding a precision is adding a row (and its graph conversion in
export/quantize.py). It lives in the runtime because export depends on the runtime, never back.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError

ONNXRUNTIME = "onnxruntime"
TENSORRT = "tensorrt"
OPENVINO = "openvino"


@dataclass(frozen=True)
class Tolerances:
    """Gate limits; None = recorded, not gated.

    max_prob_diff bounds max |fake_prob - PyTorch| over the images; min_mask_iou the mean mask IoU,
    min_worst_mask_iou the worst image's (where IoU is well-conditioned, see compare.IOU_MIN_REFERENCE_AREA),
    min_pixel_agreement the worst image's share of mask pixels on the same side of the threshold.
    """

    max_prob_diff: float | None
    max_flip_rate: float | None
    min_mask_iou: float | None
    min_worst_mask_iou: float | None = None
    min_pixel_agreement: float | None = None
    max_mask_diff: float | None = None


@dataclass(frozen=True)
class Precision:
    """One row: what a graph of this precision is, where it may run and how it is judged."""

    name: str
    help: str  # one line for --help
    calibrated: bool  # built from calibration images (--calib)
    # Runtimes its graphs may be deployed to; the first CPU runtime among them runs the export gate.
    backends: tuple[str, ...]
    # trt.BuilderFlag names that make this precision from an fp32 graph (TensorRT 10's weak typing).
    tensorrt_flags: tuple[str, ...]
    gate: Tolerances
    # The graphs are the fp32 export unchanged: the backend picks the arithmetic (bf16 where the hardware has it).
    fp32_graph: bool = False
    graph_suffix: str = ".onnx"  # the graph files' format: ONNX, or ".xml" for an OpenVINO IR (+ its .bin)

    @property
    def tensorrt(self) -> bool:
        return TENSORRT in self.backends


# fp32 also gates the mask: fake_prob depends on the CLIP branch only, so without a mask limit a
# broken MAE/decoder path would pass an fp32 export. The reduced-precision limits were set from
# measurements on the embedded demo model over the 67 default images, on AVX-512-VNNI and on
# AVX2-only x86 (README, "Export gate"): each sits well outside what a faithful graph shows and
# well inside what a degraded one (e.g. int8 GEMMs saturating on a CPU without VNNI) shows.
_FP32_GATE = Tolerances(
    max_prob_diff=1e-4,
    max_flip_rate=0.0,
    min_mask_iou=0.99,
    min_worst_mask_iou=0.95,
    min_pixel_agreement=0.999,
    max_mask_diff=1e-3,
)
_FP16_GATE = Tolerances(
    max_prob_diff=0.01, max_flip_rate=0.0, min_mask_iou=0.98, min_worst_mask_iou=0.90, min_pixel_agreement=0.99
)
_INT8_GATE = Tolerances(
    max_prob_diff=0.05, max_flip_rate=0.02, min_mask_iou=0.90, min_worst_mask_iou=0.75, min_pixel_agreement=0.95
)

PRECISIONS: dict[str, Precision] = {
    row.name: row
    for row in (
        Precision(
            "fp32", "full precision (the default)", False, (ONNXRUNTIME, TENSORRT, OPENVINO), (), _FP32_GATE,
            fp32_graph=True,
        ),
        # The fp32 graph, run in bf16 by OpenVINO's CPU on AVX-512-bf16 / AMX CPUs and by TensorRT's BF16 flag on
        # Ampere and newer; fp16's bounds. Where the hardware has no bf16 it runs as fp32 (which passes them):
        # ONNX Runtime, last, runs it so (its CPU kernels have no bf16), faster than OpenVINO's fp32 on AVX2.
        Precision(
            "bf16", "the fp32 graph run in bf16 where the hardware has it (OpenVINO CPU, TensorRT)", False,
            (OPENVINO, TENSORRT, ONNXRUNTIME), ("BF16",), _FP16_GATE, fp32_graph=True,
        ),
        Precision(
            "fp16", "mixed-precision fp16 graph (sensitive ops kept in fp32)", False, (ONNXRUNTIME, TENSORRT),
            ("FP16",), _FP16_GATE,
        ),
        Precision(
            "int8", "static int8 QDQ graph, symmetric: the TensorRT int8 graph", True, (ONNXRUNTIME, TENSORRT),
            ("INT8",), _INT8_GATE,
        ),
        # ONNX Runtime's dynamic quantisation (DynamicQuantizeLinear + MatMulInteger): TensorRT cannot build it.
        Precision(
            "int8-cpu", "int8 graph for ONNX Runtime on CPU (dynamic linear layers, static convolutions)", True,
            (ONNXRUNTIME,), (), _INT8_GATE,
        ),
        # NNCF's post-training quantisation into an OpenVINO IR (model.xml + model.bin); the recipe is in the
        # manifest's int8 record (export/quantize.py: OPENVINO_INT8_RECIPE).
        Precision(
            "int8-openvino", "NNCF int8 OpenVINO IR for OpenVINO (its float remainder in bf16 where native)", True,
            (OPENVINO,), (), _INT8_GATE, graph_suffix=".xml",
        ),
    )
}  # fmt: skip
DEFAULT_PRECISION = "fp32"


class UnknownPrecision(InputError, ValueError):
    """A precision name that is not a row of the table."""


def precision_row(name: str) -> Precision:
    """The table's row for `name`; UnknownPrecision names the known ones."""
    try:
        return PRECISIONS[name]
    except (KeyError, TypeError):
        raise UnknownPrecision(f"unknown precision {name!r} (known: {', '.join(PRECISIONS)})") from None


def gate_backend(row: Precision) -> str:
    """The runtime the export gate runs a precision's graphs on: the first of its backends that runs on a CPU."""
    return next(backend for backend in row.backends if backend != TENSORRT)


def precisions_for(backend: str) -> tuple[str, ...]:
    """Names of the precisions whose graphs may be deployed to `backend`, in table order."""
    return tuple(row.name for row in PRECISIONS.values() if backend in row.backends)
