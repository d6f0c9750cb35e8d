"""maskclip-triton: an exported artifact -> a Triton Inference Server model repository.

    maskclip-triton ARTIFACT --out REPO [--name maskclip] [--backend auto|onnxruntime|tensorrt|openvino]
        [--raw-input]

Writes REPO/<name>/config.pbtxt and REPO/<name>/1/model.onnx (onnxruntime backend), model.plan
(`platform: "tensorrt_plan"`, when the artifact has engines) or, for OpenVINO artifacts (bf16,
int8-openvino), `backend: "openvino"` with the IR (model.xml + model.bin) or the ONNX graph.
Inputs and outputs carry the artifact's exact tensor names, dims and dtypes; max_batch_size and
dynamic batching come from its batch profile. A split artifact becomes one model per graph plus an
ensemble named <name> that chains them by tensor name, as the runtime does.

--raw-input bakes the resize-free half of the preprocessing into the graph: the input becomes
`image_rgb8`, uint8 [batch, S, S, 3] (RGB pixels already resized to the model's S x S, the way
`maskclip_runtime.kernel.preprocess.resize_rgb8` does), and the graph starts with the same arithmetic the
runtime does in numpy (Cast, Mul by the scale, Sub mean, Div std, Transpose to NCHW). So Triton or
DeepStream clients send pixels, not normalised floats. The edited graph is gated like any export:
on the verification images it must match the original graph fed by the numpy preprocessing,
within the artifact precision's tolerances, or nothing is written.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from maskclip_runtime.backends import registry
from maskclip_runtime.backends.base import Backend
from maskclip_runtime.backends.openvino import INFERENCE_PRECISION
from maskclip_runtime.command import command
from maskclip_runtime.contract.artifact import Artifact, load_artifact
from maskclip_runtime.contract.chain import run_chain
from maskclip_runtime.contract.engine_header import read_plan
from maskclip_runtime.contract.manifest import FINAL_OUTPUTS, GraphSpec, TensorSpec
from maskclip_runtime.contract.precision_table import OPENVINO, precision_row
from maskclip_runtime.errors import InputError, VerificationFailed
from maskclip_runtime.kernel.atomic import atomic_path, write_text_atomic

PROG = "maskclip-triton"
RAW_INPUT = "image_rgb8"
DEFAULT_MAX_WAIT_MS = 5.0
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")  # what --name may be (see _check_model_name)
# manifest dtype -> Triton data_type
TRITON_TYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "uint8": "TYPE_UINT8",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "bool": "TYPE_BOOL",
}


class TritonExportError(InputError, ValueError):
    """The repository cannot be written as asked; the message says why."""


class BakedGraphGateFailed(VerificationFailed, TritonExportError):
    """The graph with preprocessing baked in does not compute what the original graph computes."""


@dataclass(frozen=True)
class Batching:
    """Triton's view of the batch profile: max_batch_size > 0 means a leading batch dim Triton fills."""

    max_batch_size: int
    preferred: tuple[int, ...]

    @classmethod
    def from_artifact(cls, artifact: Artifact, engine_max: int | None = None) -> Batching:
        batch = artifact.batch
        if not batch.dynamic:
            # A fixed batch of 1 is a batch dim Triton can fill one request at a time; a fixed N > 1
            # must be sent whole, so Triton sees the full shape and does no batching of its own.
            return cls(1, ()) if batch.max == 1 else cls(0, ())
        top = min(batch.max, engine_max) if engine_max else batch.max
        return cls(top, (batch.opt,) if 1 < batch.opt <= top else ())


def write_repository(
    artifact_path: str | os.PathLike,
    out: str | os.PathLike,
    name: str = "maskclip",
    backend: str = "auto",
    raw_input: bool = False,
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
    log=lambda message: None,
) -> list[Path]:
    """Write the model repository; returns the model folders written. The gate runs before any write."""
    _check_model_name(name)
    artifact = load_artifact(artifact_path)
    chosen = _choose_backend(artifact, backend, raw_input)
    graphs = artifact.graphs
    staged: dict[str, tuple[GraphSpec, Path, str]] = {}  # model name -> (graph, model file to install, platform)
    with tempfile.TemporaryDirectory(prefix="maskclip-triton-") as temp:
        temp = Path(temp)
        for graph in graphs:
            model_name = name if len(graphs) == 1 else f"{name}_{graph.name}"
            if not chosen.runs_onnx_graphs:
                plan = temp / f"{graph.name}.plan"
                plan.write_bytes(read_plan(artifact.engines[graph.name]))  # checked against its sidecar
                staged[model_name] = (graph, plan, chosen.triton_platform)
            elif raw_input and "image" in {t.name for t in graph.inputs}:
                baked = temp / f"{graph.name}.onnx"
                bake_preprocessing(artifact.file(graph.file), baked, artifact.preprocess)
                staged[model_name] = (graph, baked, chosen.triton_platform)
            else:
                staged[model_name] = (graph, artifact.file(graph.file), chosen.triton_platform)
        if raw_input:
            log("gate: baked preprocessing vs the original graph fed by numpy preprocessing")
            report = gate_baked_graphs(artifact, {g.name: path for g, path, _ in staged.values()})
            if report["failures"]:
                raise BakedGraphGateFailed(f"baked preprocessing fails the gate: {'; '.join(report['failures'])}")
            log(f"gate passed: max |fake_prob| diff {report['max_prob_diff']:.3g} on {report['images']} images")
        engine_max = None if chosen.runs_onnx_graphs else _engine_batch_max(artifact)
        batching = Batching.from_artifact(artifact, engine_max)
        out = Path(out)
        written = []
        for model_name, (graph, source, platform) in staged.items():
            config = model_config(model_name, platform, graph, batching, raw_input, max_wait_ms, source.suffix)
            config += openvino_parameters(artifact.precision) if chosen.name == OPENVINO else ""
            filename = f"model{source.suffix}" if chosen.runs_onnx_graphs else "model.plan"
            written.append(_install_model(out / model_name, config, source, filename))
        if len(graphs) > 1:
            written.append(_install_model(out / name, ensemble_config(name, graphs, batching, raw_input), None, None))
    return written


def triton_backends() -> tuple[str, ...]:
    """The registered backends whose model files Triton serves."""
    return tuple(b.name for b in registry.backends().values() if b.triton_platform)


def _choose_backend(artifact: Artifact, backend: str, raw_input: bool) -> Backend:
    """The backend whose files go into the repository: the named one, or for "auto" the first registered
    one (in its "auto" order for this artifact) that Triton serves, that may run the artifact's precision and
    whose files the artifact has. Triton's own server runs them, so nothing is probed here. --raw-input
    edits the ONNX graphs: only backends that run them take it."""
    runs_on = precision_row(artifact.precision).backends
    ir_graphs = any(Path(g.file).suffix != ".onnx" for g in artifact.graphs)  # an OpenVINO IR
    if raw_input and ir_graphs:
        raise TritonExportError("--raw-input edits an ONNX graph; this artifact's graphs are an OpenVINO IR")
    if backend == registry.AUTO:
        fits = [
            b
            for b in map(registry.get, triton_backends())
            if b.name in runs_on and b.artifact_problem(artifact) is None and (b.runs_onnx_graphs or not raw_input)
        ]
        if not fits:
            raise TritonExportError(f"no backend Triton serves can run this {artifact.precision} artifact")
        return min(fits, key=lambda b: (b.auto_rank(artifact), b.name))
    if backend not in triton_backends():
        raise TritonExportError(f"unknown backend {backend!r}: use one of auto, {', '.join(triton_backends())}")
    chosen = registry.get(backend)
    if backend not in runs_on:
        raise TritonExportError(f"{backend} does not run {artifact.precision} artifacts (only {', '.join(runs_on)})")
    problem = chosen.artifact_problem(artifact)
    if problem:
        raise TritonExportError(problem)
    if raw_input and not chosen.runs_onnx_graphs:
        raise TritonExportError(
            f"--raw-input edits the ONNX graph, and the {backend} files were built from the float graph: "
            "use --backend onnxruntime"
        )
    return chosen


def openvino_parameters(precision: str) -> str:
    """Triton's OpenVINO backend takes no precision setting but a bf16 hint: asked for the precisions the
    runtime runs in bf16 (backends/openvino.py), left to the device's default otherwise."""
    if INFERENCE_PRECISION.get(precision) != "bf16":
        return ""
    return 'parameters: [\n  {\n    key: "HINT_BF16"\n    value: { string_value: "YES" }\n  }\n]\n'


def _engine_batch_max(artifact: Artifact) -> int | None:
    return min((e.max_batch for e in artifact.manifest.engines), default=None)


# --- config.pbtxt ------------------------------------------------------------------------------------
def _check_model_name(name: str) -> None:
    """The name becomes a folder under --out and a quoted string in config.pbtxt: letters, digits, _ and -
    only (no path separator, dot, quote or newline can reach either)."""
    if not MODEL_NAME.fullmatch(name):
        raise TritonExportError(
            f"--name {name!r}: a model name is 1 to 64 letters, digits, '_' or '-', starting with a letter or digit"
        )


def model_config(
    name: str,
    platform: str,
    graph: GraphSpec,
    batching: Batching,
    raw_input: bool,
    max_wait_ms: float,
    suffix: str = ".onnx",
) -> str:
    inputs = [_raw_input_spec(t) if raw_input and t.name == "image" else t for t in graph.inputs]
    if platform == OPENVINO:  # a backend, not a platform; it looks for model.xml unless told
        serves = ['backend: "openvino"'] + ([f'default_model_filename: "model{suffix}"'] if suffix != ".xml" else [])
    else:
        serves = [f'platform: "{platform}"']
    lines = [f'name: "{name}"', *serves, f"max_batch_size: {batching.max_batch_size}"]
    lines += [_tensor_block("input", inputs, batching), _tensor_block("output", graph.outputs, batching)]
    if batching.max_batch_size > 1:
        preferred = (
            f"  preferred_batch_size: [ {', '.join(map(str, batching.preferred))} ]\n" if batching.preferred else ""
        )
        delay = int(round(max_wait_ms * 1000))
        lines.append(f"dynamic_batching {{\n{preferred}  max_queue_delay_microseconds: {delay}\n}}")
    return "\n".join(lines) + "\n"


def ensemble_config(name: str, graphs: tuple[GraphSpec, ...], batching: Batching, raw_input: bool) -> str:
    """An ensemble that feeds each graph by tensor name, like the runtime's chain."""
    produced = {t.name: t for g in graphs for t in g.outputs}
    image = next(t for g in graphs for t in g.inputs if t.name == "image")
    inputs = [_raw_input_spec(image) if raw_input else image]
    outputs = [produced[n] for n in FINAL_OUTPUTS if n in produced]
    steps = []
    for graph in graphs:
        feeds = [(RAW_INPUT if raw_input and t.name == "image" else t.name) for t in graph.inputs]
        input_map = "".join(f'      input_map {{ key: "{k}" value: "{k}" }}\n' for k in feeds)
        output_map = "".join(f'      output_map {{ key: "{t.name}" value: "{t.name}" }}\n' for t in graph.outputs)
        steps.append(
            f'    {{\n      model_name: "{name}_{graph.name}"\n      model_version: -1\n{input_map}{output_map}    }}'
        )
    lines = [f'name: "{name}"', 'platform: "ensemble"', f"max_batch_size: {batching.max_batch_size}"]
    lines += [_tensor_block("input", inputs, batching), _tensor_block("output", outputs, batching)]
    lines.append("ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}")
    return "\n".join(lines) + "\n"


def _raw_input_spec(image: TensorSpec) -> TensorSpec:
    batch, _, height, width = image.shape
    return TensorSpec(RAW_INPUT, (batch, height, width, 3), "uint8")


def _tensor_block(kind: str, tensors, batching: Batching) -> str:
    entries = []
    for tensor in tensors:
        if tensor.dtype not in TRITON_TYPES:
            raise TritonExportError(f"tensor {tensor.name!r} has dtype {tensor.dtype}, which Triton has no type for")
        dims = list(tensor.shape[1:] if batching.max_batch_size > 0 else tensor.shape)
        if any(not isinstance(d, int) for d in dims):
            raise TritonExportError(f"tensor {tensor.name!r} has symbolic dims {tensor.shape} beyond the batch")
        # A per-image scalar (fake_prob [batch]) is [1] to Triton and reshaped to the model's [].
        reshape = "\n    reshape: { shape: [ ] }" if not dims else ""
        entries.append(
            f'  {{\n    name: "{tensor.name}"\n    data_type: {TRITON_TYPES[tensor.dtype]}\n'
            f"    dims: [ {', '.join(map(str, dims or [1]))} ]{reshape}\n  }}"
        )
    return f"{kind} [\n" + ",\n".join(entries) + "\n]"


def _install_model(folder: Path, config: str, model_file: Path | None, filename: str | None) -> Path:
    """Write folder/config.pbtxt and folder/1/<filename>, each atomically."""
    version = folder / "1"
    version.mkdir(parents=True, exist_ok=True)
    if model_file is not None:
        for source, target in _model_files(model_file, filename):
            with atomic_path(version / target) as temp:
                shutil.copyfile(source, temp)
    write_text_atomic(folder / "config.pbtxt", config)
    return folder


def _model_files(model_file: Path, filename: str) -> list[tuple[Path, str]]:
    """The model file and, for ONNX graphs with external weights, the data files it names (an OpenVINO IR:
    its .bin)."""
    files = [(model_file, filename)]
    if filename.endswith(".xml"):
        files.append((model_file.with_suffix(".bin"), Path(filename).with_suffix(".bin").name))
    if filename.endswith(".onnx"):
        import onnx

        model = onnx.load(model_file, load_external_data=False)
        locations = {
            entry.value
            for tensor in model.graph.initializer
            if tensor.data_location == onnx.TensorProto.EXTERNAL
            for entry in tensor.external_data
            if entry.key == "location"
        }
        files += [(model_file.parent / location, location) for location in sorted(locations)]
    return files


# --- baking the preprocessing into the graph -----------------------------------------------------------
def bake_preprocessing(source: Path, destination: Path, spec) -> None:
    """Prepend uint8 NHWC -> normalised float NCHW to the graph's "image" input (ONNX graph edit)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(source)
    graph = model.graph
    (image,) = [i for i in graph.input if i.name == "image"]
    dims = image.type.tensor_type.shape.dim
    if not (len(dims) == 4 and dims[1].dim_value == 3 and dims[2].dim_value == dims[3].dim_value == spec.size):
        raise TritonExportError(f"{source.name}: input 'image' is not [batch, 3, {spec.size}, {spec.size}]")
    float_type = image.type.tensor_type.elem_type
    batch = dims[0].dim_param or dims[0].dim_value
    raw = helper.make_tensor_value_info(RAW_INPUT, TensorProto.UINT8, [batch, spec.size, spec.size, 3])
    constants = [
        numpy_helper.from_array(np.float32(spec.scale), "preprocess_scale"),
        numpy_helper.from_array(np.asarray(spec.mean, np.float32), "preprocess_mean"),  # broadcast over C, last
        numpy_helper.from_array(np.asarray(spec.std, np.float32), "preprocess_std"),
    ]
    # The runtime's numpy order exactly (resize_and_normalize): scale, subtract, divide in HWC, then transpose.
    normalised = "image" if float_type == TensorProto.FLOAT else "preprocess_image_fp32"
    nodes = [
        helper.make_node("Cast", [RAW_INPUT], ["preprocess_float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["preprocess_float", "preprocess_scale"], ["preprocess_unit"]),
        helper.make_node("Sub", ["preprocess_unit", "preprocess_mean"], ["preprocess_centred"]),
        helper.make_node("Div", ["preprocess_centred", "preprocess_std"], ["preprocess_nhwc"]),
        helper.make_node("Transpose", ["preprocess_nhwc"], [normalised], perm=[0, 3, 1, 2]),
    ]
    if float_type != TensorProto.FLOAT:  # an fp16-input graph gets the fp32 result cast, as its runner does
        nodes.append(helper.make_node("Cast", [normalised], ["image"], to=float_type))
    graph.input.remove(image)
    graph.input.insert(0, raw)
    graph.initializer.extend(constants)
    original = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + original)
    onnx.checker.check_model(model)
    large = model.ByteSize() > 1_800_000_000  # protobuf's 2 GB limit: weights go to a data file beside it
    onnx.save(model, destination, save_as_external_data=large, location=f"{destination.name}.data")


def gate_baked_graphs(artifact: Artifact, installed: dict[str, Path]) -> dict:
    """Original graphs + numpy preprocessing vs the repository's graphs on uint8 pixels, same images."""
    from maskclip_runtime.backends.onnxruntime import OnnxRuntimeRunner
    from maskclip_runtime.contract.precision_table import precision_row
    from maskclip_runtime.detect.compare import compare, gate_failures
    from maskclip_runtime.kernel.preprocess import resize_and_normalize, resize_rgb8

    from .verify import default_verification_images

    images = default_verification_images() + _demo_examples()
    names = [name for name, _ in images]
    spec = artifact.preprocess
    floats = np.stack([resize_and_normalize(image, spec) for _, image in images])
    pixels = np.stack([resize_rgb8(image, spec) for _, image in images])
    original = [OnnxRuntimeRunner(artifact.file(g.file), device="cpu") for g in artifact.graphs]
    baked = [OnnxRuntimeRunner(installed[g.name], device="cpu") for g in artifact.graphs]
    reference = _run_chain(original, "image", floats, artifact)
    candidate = _run_chain(baked, RAW_INPUT, pixels, artifact)
    stats = compare(reference, candidate, names, artifact.threshold)
    stats["failures"] = gate_failures(stats, precision_row(artifact.precision).gate)
    return stats


def _demo_examples():
    from maskclip_runtime.detect.detector import DEMO_DIR
    from maskclip_runtime.kernel.preprocess import load_image

    return [(p.stem, np.asarray(load_image(p))) for p in sorted((DEMO_DIR / "examples").glob("*.jpg"))]


def _run_chain(runners, first: str, images: np.ndarray, artifact: Artifact) -> dict[str, np.ndarray]:
    """Run the graphs over all images in chunks the artifact accepts (fixed batches padded, padding dropped)."""
    from .verify import batch_chunks

    results: dict[str, list[np.ndarray]] = {}
    for chunk, count in batch_chunks(images, artifact.batch):
        tensors = run_chain(runners, {first: chunk})
        for name in FINAL_OUTPUTS:
            if name in tensors:
                results.setdefault(name, []).append(np.asarray(tensors[name], np.float32)[:count])
    return {name: np.concatenate(parts) for name, parts in results.items()}


# --- command ------------------------------------------------------------------------------------------
@command(PROG, extra="export")
@click.argument("artifact", type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Model repository folder to write into.")
@click.option("--name", default="maskclip", show_default=True, help="Model name in the repository.")
@click.option("--backend", type=click.Choice((registry.AUTO, *triton_backends())), default="auto", show_default=True,
              help="auto: the TensorRT engines when the artifact has them, OpenVINO for OpenVINO-only precisions "
                   "(int8-openvino), else the ONNX graphs on ONNX Runtime.")  # fmt: skip
@click.option(
    "--raw-input", is_flag=True, help="Bake normalisation into the graph: uint8 NHWC pixels at model size in."
)
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=DEFAULT_MAX_WAIT_MS, show_default=True,
              help="Triton's dynamic batching max_queue_delay.")  # fmt: skip
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
def main(artifact, out, name, backend, raw_input, max_wait_ms, quiet) -> None:
    """Write a Triton Inference Server model repository for an exported ARTIFACT."""

    def log(message: str) -> None:
        if not quiet:
            click.echo(f"{PROG}: {message}", err=True)

    written = write_repository(artifact, out, name, backend, raw_input, max_wait_ms, log)
    for folder in written:
        log(f"wrote {folder}")
