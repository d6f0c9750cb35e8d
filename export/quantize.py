"""Reduced precision baked into the ONNX graph: mixed fp16, static int8 with explicit Q/DQ nodes, or
the ONNX Runtime CPU int8 graph.

All keep fp32 graph inputs and outputs. TensorRT 11 has no fp16/int8 builder flags any more: the
precision travels in the graph and the engine is built strongly typed, so it is decided here, where
the verification gate can check it, and recorded in the manifest (`fp32_ops`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import io
import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

from maskclip_runtime.kernel.memory import release_freed_memory

from .onnx_export import graph_files, needs_external_data, save_onnx

# Ops that overflow or lose too much in fp16 in ViT encoders (the deployment hazards of this model
# family): normalisation statistics, attention softmax, and the sigmoid that makes mask probabilities.
FP16_KEEP_FP32 = ("LayerNormalization", "Softmax", "Sigmoid")
# The same normalisation when an exporter spells LayerNorm out instead of emitting the fused op.
DECOMPOSED_LAYERNORM = ("ReduceMean", "Pow", "Sqrt", "Div")

# Int8: only the weight-heavy ops are quantised; everything else stays fp32.
INT8_OP_TYPES = ("Conv", "ConvTranspose", "MatMul", "Gemm")
INT8_KEEP_FP32 = ("LayerNormalization", "Softmax", "Sigmoid", "Resize")


def op_types(model: onnx.ModelProto) -> set[str]:
    return {node.op_type for node in model.graph.node}


def fp16_block_list(model: onnx.ModelProto) -> list[str]:
    """The op types this graph keeps in fp32 under --precision fp16."""
    present = op_types(model)
    keep = list(FP16_KEEP_FP32)
    if "LayerNormalization" not in present:
        keep += DECOMPOSED_LAYERNORM
    return sorted(op for op in keep if op in present)


def convert_to_fp16(src: Path, dst: Path) -> list[str]:
    """fp32 graph -> mixed-precision graph with fp32 IO; returns the op types kept in fp32."""
    model = onnx.load(str(src))
    keep = fp16_block_list(model)
    large = needs_external_data(model)
    if large:
        # In-memory shape inference cannot serialise > 2 GiB: infer from the file, writing the result
        # beside it so its external-data reference still resolves.
        inferred = src.with_name(f"{src.stem}.shapes.onnx")
        onnx.shape_inference.infer_shapes_path(str(src), str(inferred))
        model = onnx.load(str(inferred))
        inferred.unlink()
    # ORT's default block list (ops without fp16 kernels) stays in; ours is added on top.
    fp16 = convert_float_to_float16(
        model, keep_io_types=True, op_block_list=[*DEFAULT_OP_BLOCK_LIST, *keep], disable_shape_infer=large
    )
    save_onnx(fp16, dst)
    return keep


class FeedCalibrationReader(CalibrationDataReader):
    """Feeds precomputed input dicts (one per calibration batch) to ORT's calibrator."""

    def __init__(self, feeds: Iterable[dict[str, np.ndarray]]):
        self._feeds = list(feeds)
        self._iter: Iterator[dict[str, np.ndarray]] = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)

    @property
    def feeds(self) -> list[dict[str, np.ndarray]]:
        return self._feeds


def _op_types_of(model: onnx.ModelProto, names: Iterable[str]) -> set[str]:
    wanted = set(names)
    return {node.op_type for node in model.graph.node if node.name in wanted}


def int8_excluded_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes left in fp32 by both int8 graphs.

    - MatMuls that are not linear layers: activation x activation products (attention scores and
      values, whose range changes per image), products with a constant that is not a 2-D weight matrix
      (the MAE's decomposed relative-position tables, constant-folded to [grid, head_dim, grid]);
    - MatMuls feeding a Softmax (attention logits, the detection head);
    - single-output-channel convolutions: per-pixel prediction heads (the mask logits), whose output
      would otherwise be snapped to a 256-level grid right at the decision threshold. They cost
      C multiply-adds per pixel;
    - the stem convolutions that read the image (the patch embeddings of both branches, through the
      CLIP branch's resize): quantising the image itself rounds every pixel and, with percentile
      ranges, clips the brightest and darkest ones, and the quantised image tensor is shared with the
      CLIP branch that alone makes the verdict. Measured on the demo model over the 64 default
      images: max |fake_prob - PyTorch| 0.56 with a flipped verdict when quantised, 0.006 when not.
    """
    weights = {t.name: t.dims for t in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    image_derived = _image_derived_tensors(model)
    excluded = []
    for node in model.graph.node:
        if node.op_type == "Conv":
            kernel = weights.get(node.input[1])
            if (kernel is not None and kernel[0] == 1) or node.input[0] in image_derived:
                excluded.append(node.name)
            continue
        if node.op_type != "MatMul":
            continue
        feeds_softmax = any(c.op_type == "Softmax" for c in consumers.get(node.output[0], []))
        constants = [len(weights[name]) for name in node.input if name in weights]
        linear_layer = constants == [2]
        if feeds_softmax or not linear_layer:
            excluded.append(node.name)
    return excluded


# Ops that move or resample pixels without mixing channels: a convolution fed through them still
# reads the image.
PIXEL_PLUMBING = ("Resize", "Cast", "Pad", "Slice", "Reshape", "Transpose", "Identity", "Unsqueeze", "Squeeze")


def _image_derived_tensors(model: onnx.ModelProto) -> set[str]:
    """The graph inputs and every tensor made from them by pixel plumbing alone."""
    derived = {i.name for i in model.graph.input}
    for node in model.graph.node:  # ONNX nodes are topologically sorted
        if node.op_type in PIXEL_PLUMBING and node.input and node.input[0] in derived:
            derived.update(node.output)
    return derived


RANGES_BEFOREHAND = "calibration_cache_path" in inspect.signature(quantize_static).parameters


def _min_max_ranges(model: Path, calibration: FeedCalibrationReader, large: bool, folder: Path) -> str:
    """The MinMax ranges quantize_static would compute for INT8_OP_TYPES, by the calibrator it would create,
    saved as ORT's calibration cache for it (float32 ranges, which its JSON keeps exactly)."""
    from onnxruntime.quantization.calibrate import MinMaxCalibrater, save_tensors_data

    # create_calibrator's MinMax calibrator with quantize_static's options (none of them MinMax's), then its
    # session, on a lean allocator (below).
    calibrator = MinMaxCalibrater(
        model,
        list(INT8_OP_TYPES),
        augmented_model_path=str(folder / "augmented.onnx"),
        use_external_data_format=large,
    )
    calibrator.augment_graph()
    # The graph it augmented and saved: MinMax's collect_data and compute_data read the session's outputs only,
    # so the 1.66 GB protobuf of opensdi-vitl14 need not stay beside the session.
    calibrator.model = None
    release_freed_memory()
    calibrator.infer_session = onnxruntime.InferenceSession(
        calibrator.augmented_model_path,
        sess_options=_lean_calibration_session_options(),
        providers=calibrator.execution_providers,
    )
    calibrator.collect_data(calibration)
    calibration.rewind()
    path = folder / "ranges.json"
    save_tensors_data(calibrator.compute_data(), path)
    del calibrator
    release_freed_memory()
    return str(path)


def _lean_calibration_session_options():
    """ORT's calibration session options (no graph optimisation, so every calibrated tensor exists), with its
    arena and memory pattern off. On opensdi-vitl14 (unoptimised graph, 512 px) a calibration process peaked
    at 10.7 GB with them and at 6.5 GB without. Both decide where tensors live, not what is computed: the
    ranges are the same. Pre-packing stays on: without it MLAS multiplies in another order and 1,026 of the
    1,410 ranges moved (by up to 2e-6, relative)."""
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    return options


def quantize_to_int8(
    src: Path, dst: Path, calibration: FeedCalibrationReader, reduce_range: bool
) -> tuple[list[str], list[str]]:
    """fp32 graph -> static QDQ int8 graph (symmetric int8: TensorRT needs zero points of 0).

    Returns (op types kept in fp32, names of the nodes excluded from quantisation).
    """
    large = len(graph_files(src)) > 1
    with tempfile.TemporaryDirectory(prefix="maskclip-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference + ORT's standard-op graph optimisations give the quantiser full type info.
        quant_pre_process(
            str(src),
            str(prepared),
            skip_symbolic_shape=True,
            save_as_external_data=large,
            all_tensors_to_one_file=True,
            external_data_location="prepared.onnx.data",
        )
        model = onnx.load(str(prepared), load_external_data=False)
        excluded = int8_excluded_nodes(model)
        excluded_ops = _op_types_of(model, excluded)
        # Where quantize_static takes ranges computed beforehand (ORT's calibration cache), calibrating in a call
        # of its own frees the calibrator's copies of the graph (augmented, in a session) before it loads its own.
        ranges = (
            {"calibration_cache_path": _min_max_ranges(prepared, calibration, large, Path(tmp))}
            if RANGES_BEFOREHAND
            else {}
        )
        quantized = Path(tmp) / "quantized.onnx"
        quantize_static(
            str(prepared),
            str(quantized),
            calibration,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(INT8_OP_TYPES),
            per_channel=True,
            reduce_range=reduce_range,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            use_external_data_format=large,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
            **ranges,
        )
        save_onnx(onnx.load(str(quantized)), dst)
    present = op_types(onnx.load(str(dst), load_external_data=False))
    return sorted({op for op in present if op in INT8_KEEP_FP32} | excluded_ops), excluded


@contextlib.contextmanager
def _expected_quantizer_advice():
    """Silence ORT's quantizer chatter: advice logged as warnings but expected here (pre-processing is
    not run, as ORT optimises the graph at load; the dynamic pass sees the convolutions' Q/DQ nodes
    from the static pass: "already quantized?"), and the percentile calibrator's progress, printed to
    stdout, where maskclip-export's own result goes."""
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


def collect_histograms_streaming(calibrator, reader: CalibrationDataReader) -> None:
    """`HistogramCalibrater.collect_data` of ONNX Runtime's symmetric percentile calibrator, in bounded memory.

    ORT keeps every calibrated tensor of every calibration image, then stacks, flattens and takes the absolute
    value of each tensor's values: 15-17 GB over opensdi-vitl14's convolutions from the default 32 images.
    This makes the same histograms, bin for bin, in two passes over the images that hold one image's tensors
    at a time. The first finds what np.histogram would over all of the data at once: each tensor's value range
    (kept beside its histogram) and the range of its absolute values (its bins). The second counts each
    image's absolute values into those bins; np.histogram places each value on its own, so the counts add up.
    (ORT's own incremental collection widens the bins of the first part instead: other ranges.)"""
    from onnxruntime.quantization.calibrate import HistogramCollector

    session = calibrator.infer_session
    calibrated = [(i, o.name) for i, o in enumerate(session.get_outputs()) if o.name in calibrator.tensors_to_calibrate]

    def tensors():
        while inputs := reader.get_next():  # as ORT reads it
            outputs = session.run(None, inputs)
            yield [(name, outputs[i]) for i, name in calibrated]
        reader.rewind()

    ranges: dict[str, tuple] = {}  # name -> (min, max, min |x|, max |x|)
    for image in tensors():
        for name, values in image:
            magnitudes = np.abs(values)
            low, high, abs_low, abs_high = ranges.get(name, (np.inf, -np.inf, np.inf, -np.inf))
            ranges[name] = (
                min(low, np.nanmin(values)),
                max(high, np.nanmax(values)),
                min(abs_low, magnitudes.min()),
                max(abs_high, magnitudes.max()),
            )
    if not ranges:
        raise ValueError("No data is collected.")
    histograms: dict[str, tuple] = {}
    for image in tensors():
        for name, values in image:
            low, high, abs_low, abs_high = ranges[name]
            counts, edges = np.histogram(np.abs(values).ravel(), bins=calibrator.num_bins, range=(abs_low, abs_high))
            if name in histograms:
                counts += histograms[name][0]
            histograms[name] = (counts, edges.astype(values.dtype), low, high)
    calibrator.collector = HistogramCollector(
        method=calibrator.method,
        symmetric=calibrator.symmetric,
        num_bins=calibrator.num_bins,
        num_quantized_bins=calibrator.num_quantized_bins,
        percentile=calibrator.percentile,
        scenario=calibrator.scenario,
    )
    calibrator.collector.histogram_dict = histograms


@contextlib.contextmanager
def _percentile_histograms_streamed() -> Iterator[None]:
    """While quantize_static runs: its symmetric percentile calibrator collects through
    `collect_histograms_streaming` (the calibrator's other steps are ORT's own). The factory quantize_static
    calls is replaced module-wide for the call: exports run one at a time."""
    from onnxruntime.quantization.calibrate import PercentileCalibrater

    # Imported by name: the package exports a function called quantize, which hides the module.
    ort_quantize = importlib.import_module("onnxruntime.quantization.quantize")
    create = ort_quantize.create_calibrator

    def create_streaming(*args, **kwargs):
        calibrator = create(*args, **kwargs)
        if isinstance(calibrator, PercentileCalibrater) and calibrator.symmetric:
            calibrator.collect_data = functools.partial(collect_histograms_streaming, calibrator)
        return calibrator

    ort_quantize.create_calibrator = create_streaming
    try:
        yield
    finally:
        ort_quantize.create_calibrator = create


def quantize_for_cpu(
    src: Path,
    dst: Path,
    calibration: FeedCalibrationReader,
    reduce_range: bool,
) -> tuple[list[str], list[str]]:
    """fp32 graph -> the ONNX Runtime CPU int8 graph (not for TensorRT).

    - Linear layers (weight MatMuls): dynamic quantisation. int8 per-channel weights; activations get a
      uint8 scale per call, so image-to-image range changes cost nothing, and ORT fuses each into one
      DynamicQuantizeMatMul (the u8 x s8 VNNI kernels).
    - Convolutions: static QDQ from the calibration images (uint8 activations, int8 per-channel weights),
      which ORT fuses into QLinearConv. Dynamic ConvInteger would be slower than fp32 here (measured
      3.6x slower on the opensdi-vitl14 decoder). Ranges are the 99.999th percentile of the calibration
      activations, not their min/max: on opensdi-vitl14 min/max ranges from 20 images cost 0.05 of
      mean mask IoU against the fp32 graph (0.88 vs 0.93), because a few extreme activations stretch
      the 256 levels.
    - The same nodes as the QDQ graph stay fp32 (`int8_excluded_nodes`).

    Returns (op types kept in fp32, names of the nodes excluded from quantisation).
    """
    large = len(graph_files(src)) > 1
    model = onnx.load(str(src), load_external_data=False)
    excluded = int8_excluded_nodes(model)
    excluded_ops = _op_types_of(model, excluded)
    has_conv = "Conv" in op_types(model)
    del model
    with tempfile.TemporaryDirectory(prefix="maskclip-int8-cpu-") as tmp, _expected_quantizer_advice():
        convs = Path(tmp) / "conv.onnx"
        if has_conv:
            with _percentile_histograms_streamed():  # ORT's own holds all images' conv activations
                quantize_static(
                    str(src),
                    str(convs),
                    calibration,
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["Conv"],
                    per_channel=True,
                    reduce_range=reduce_range,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=excluded,
                    use_external_data_format=large,
                    calibrate_method=CalibrationMethod.Percentile,
                )
        quantized = Path(tmp) / "quantized.onnx"
        quantize_dynamic(
            str(convs if has_conv else src),
            str(quantized),
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            use_external_data_format=large,
            extra_options={"MatMulConstBOnly": True},
        )
        save_onnx(onnx.load(str(quantized)), dst)
    present = op_types(onnx.load(str(dst), load_external_data=False))
    return sorted({op for op in present if op in (*INT8_KEEP_FP32, "ConvTranspose")} | excluded_ops), excluded


@dataclass(frozen=True)
class OpenVinoRecipe:
    """The levers of an NNCF int8 quantisation (int8-openvino), recorded in the manifest's int8 block."""

    name: str
    preset: str = "performance"  # nncf.QuantizationPreset: "performance" (symmetric) or "mixed"
    transformer: bool = False  # nncf.ModelType.TRANSFORMER: NNCF's transformer patterns (quantises more)
    smooth_quant_alpha: float | None = None  # None: NNCF's default; < 0: SmoothQuant off
    # Only Conv/MatMul quantised, and not the int8 graphs' fp32 nodes or the verdict-only head
    keep_fp32: bool = True
    accuracy_drop: float | None = None  # nncf.quantize_with_accuracy_control's max_drop, None: plain quantize
    # Activation ranges: "minmax" over all calibration images (as the int8 QDQ graph), or NNCF's default
    # (the mean of each image's min and max, which clips what the rarer images reach).
    activation_ranges: str = "nncf-default"
    bias_correction: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


# Chosen by measurement on the demo model against the int8 gate: README "int8-openvino recipes".
OPENVINO_INT8_RECIPE = OpenVinoRecipe("keep-fp32, min/max activation ranges", activation_ranges="minmax")


def verdict_only_nodes(model: onnx.ModelProto, verdict: str = "logits", mask: str = "mask") -> list[str]:
    """Nodes that make the verdict and nothing the mask needs (the detection head after the shared towers);
    empty for a graph that does not make both (the split topology's clip and trunk graphs)."""
    outputs = {o.name for o in model.graph.output}
    if verdict not in outputs or mask not in outputs:
        return []
    producer = {name: node for node in model.graph.node for name in node.output}

    def ancestors(tensor: str) -> set[str]:
        seen, stack = set(), [tensor]
        while stack:
            node = producer.get(stack.pop())
            if node is not None and node.name not in seen:
                seen.add(node.name)
                stack += list(node.input)
        return seen

    only = ancestors(verdict) - ancestors(mask)
    return [node.name for node in model.graph.node if node.name in only]


# OpenVINO's names for INT8_OP_TYPES: NNCF also quantises the inputs of LayerNorm (MVN), Add, Multiply,
# Interpolate, Concat ... by default, which our int8 graphs never do (they cost the demo model's gate).
OPENVINO_INT8_OP_TYPES = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul")


def _openvino_ignored_scope(src: Path, ov_model) -> tuple[list[str], object]:
    """The ONNX node names kept in fp32 and the nncf.IgnoredScope naming their OpenVINO ops (a biased
    convolution becomes "<name>/WithoutBiases" + an Add named after the ONNX node), with every op type
    but OPENVINO_INT8_OP_TYPES (Softmax among them)."""
    import nncf

    model = onnx.load(str(src), load_external_data=False)
    excluded = sorted(set(int8_excluded_nodes(model)) | set(verdict_only_nodes(model)))
    ops = ov_model.get_ops()
    present = {op.get_friendly_name() for op in ops}
    names = [n for name in excluded for n in (name, f"{name}/WithoutBiases") if n in present]
    types = sorted({op.get_type_name() for op in ops} - set(OPENVINO_INT8_OP_TYPES))
    return excluded, nncf.IgnoredScope(names=names, types=types, validate=False)


def quantize_for_openvino(
    src: Path,
    dst: Path,
    calibration: FeedCalibrationReader,
    reduce_range: bool,
    recipe: OpenVinoRecipe = OPENVINO_INT8_RECIPE,
) -> tuple[list[str], list[str]]:
    """fp32 ONNX graph -> NNCF post-training int8 OpenVINO IR at `dst` (.xml, weights in the .bin beside it).

    Weights 7-bit where `reduce_range` (NNCF's overflow fix: the same AVX2 int16 saturation as
    Int8Scheme.weight_bits explains); activations from the calibration feeds. Returns (op types kept
    in fp32, names of the ONNX nodes excluded from quantisation)."""
    import nncf
    import openvino
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
        OverflowFix,
    )
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    ov_model = openvino.Core().read_model(str(src))
    excluded, scope = _openvino_ignored_scope(src, ov_model) if recipe.keep_fp32 else ([], None)
    smooth = (
        AdvancedSmoothQuantParameters(convolution=recipe.smooth_quant_alpha, matmul=recipe.smooth_quant_alpha)
        if recipe.smooth_quant_alpha is not None
        else AdvancedSmoothQuantParameters()
    )
    ranges = {"minmax": RangeEstimatorParametersSet.MINMAX}.get(recipe.activation_ranges)
    advanced = AdvancedQuantizationParameters(
        overflow_fix=OverflowFix.ENABLE if reduce_range else OverflowFix.DISABLE,
        smooth_quant_alphas=smooth,
        disable_bias_correction=not recipe.bias_correction,
        **({"activations_range_estimator_params": ranges} if ranges else {}),
    )
    common = {
        "preset": nncf.QuantizationPreset(recipe.preset),
        "model_type": nncf.ModelType.TRANSFORMER if recipe.transformer else None,
        "ignored_scope": scope,
        "subset_size": len(calibration),
    }
    dataset = nncf.Dataset(calibration.feeds)
    with _expected_quantizer_advice():
        if recipe.accuracy_drop is None:
            quantized = nncf.quantize(ov_model, dataset, advanced_parameters=advanced, **common)
        else:
            reference = openvino.Core().compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            expected = {
                id(feed): {port.get_any_name(): value for port, value in reference(feed).items()}
                for feed in calibration.feeds
            }
            quantized = nncf.quantize_with_accuracy_control(
                ov_model,
                dataset,
                dataset,
                functools.partial(_agreement, expected),
                max_drop=recipe.accuracy_drop,
                advanced_quantization_parameters=advanced,
                **common,
            )
    openvino.save_model(quantized, str(dst), compress_to_fp16=False)
    return sorted(_op_types_of(onnx.load(str(src), load_external_data=False), excluded) | {"Softmax"}), excluded


def _agreement(expected: dict[int, dict[str, np.ndarray]], compiled, feeds) -> tuple[float, list[float]]:
    """Accuracy control's metric: 1 - the relative error of the graph's outputs against the fp32 graph's on
    the same feed (keyed by the feed's identity), worst over outputs and feeds, and per feed (1.0 for the
    fp32 graph itself; every graph of a chain has outputs to compare)."""
    per_feed = []
    for feed in feeds:
        reference = expected[id(feed)]
        errors = [
            float(np.abs(value - reference[port.get_any_name()]).max())
            / max(float(np.abs(reference[port.get_any_name()]).max()), 1e-6)
            for port, value in compiled(feed).items()
        ]
        per_feed.append(1.0 - max(errors))
    return min(per_feed), per_feed


@dataclass(frozen=True)
class Int8Scheme:
    """How one int8 precision is built; everything but `quantize` goes into the manifest's "int8" block."""

    quantize: Callable[..., tuple[list[str], list[str]]]  # (src, dst, calibration, reduce_range)
    description: str
    calibration_method: str
    symmetric: bool
    # Weights on 7 bits (ORT's reduce_range): x86 int8 GEMMs without VNNI (AVX2's vpmaddubsw) add pairs of
    # u8 x s8 products into saturating int16, which full 8-bit weights overflow. On the demo model over
    # the 64 default images, emulating an AVX2-only CPU: 8-bit weights 0.46 max |fake_prob| diff, 2 flips,
    # worst mask IoU 0.0; 7-bit 0.0055, 0, 0.957, the same as on AVX-512-VNNI, and as fast (one kernel).
    weight_bits: int = 7
    # CPU features the results depend on (lists of alternatives): none, the graph is ISA-portable.
    cpu_features: tuple[tuple[str, ...], ...] = ()
    recipe: OpenVinoRecipe | None = None  # NNCF's levers (int8-openvino), recorded in the manifest


INT8_SCHEMES = {
    "int8": Int8Scheme(
        quantize_to_int8,
        "static QDQ, symmetric int8 activations and 7-bit per-channel weights (TensorRT-compatible)",
        "MinMax",
        symmetric=True,
    ),
    "int8-cpu": Int8Scheme(
        quantize_for_cpu,
        "linear layers: dynamic (uint8 activations per call, 7-bit per-channel weights); "
        "convolutions: static QDQ (uint8 activations, 7-bit per-channel weights); for ONNX Runtime on CPU",
        "Percentile 99.999",
        symmetric=False,
    ),
    "int8-openvino": Int8Scheme(
        quantize_for_openvino,
        "NNCF post-training quantisation into an OpenVINO IR (recipe in the int8 record)",
        "NNCF MinMax",
        symmetric=True,
        recipe=OPENVINO_INT8_RECIPE,
    ),
}

# Precisions made from the fp32 graph without calibration: name -> (src, dst) -> op types kept in fp32.
FLOAT_CONVERSIONS: dict[str, Callable[[Path, Path], list[str]]] = {"fp16": convert_to_fp16}
