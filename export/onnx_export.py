"""MaskCLIP -> ONNX: export-friendly wrappers around the training model, and the export itself.

The wrappers (segment-anything's utils/onnx.py approach) only re-wire the model's own stages
(`clip_features`, `trunk`, `heads`); they never change its maths. The text embeddings T are computed
once here and stored as a constant: no text tower in any deployed graph.

Exporter: the TorchScript-based `torch.onnx.export(dynamo=False)`. The torch.export-based one needs
onnxscript (not a dependency here) and has been seen to freeze the batch dimension silently. Every
graph is traced with a batch of 2 and a symbolic batch axis; a static batch is then pinned into the
graph and folded by onnxslim, and the resulting input shape is asserted either way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxslim
import torch
from onnx.external_data_helper import (
    ExternalDataInfo,
    load_external_data_for_model,
    set_external_data,
    uses_external_data,
)
from torch import nn

from maskclip_core.model import MaskCLIP
from maskclip_runtime.contract.manifest import BATCH_AXIS, TOPOLOGIES, BatchSpec, GraphSpec
from maskclip_runtime.kernel.memory import release_freed_memory

EXAMPLE_BATCH = 2  # >= 2 so a batch axis frozen by the tracer cannot pass unnoticed
# Above this many bytes of weights a graph is saved with its tensors in `<file>.data` (protobuf caps
# one message at 2 GiB; the margin covers the graph itself).
EXTERNAL_DATA_BYTES = 1 << 30
WEIGHTS_FILE = "weights.data"  # a traced graph's weights while it is slimmed
# Smaller tensors stay in the graph while it is slimmed: onnxslim ties (deduplicates) constants of
# fewer than 1000 elements by comparing their values.
WEIGHTS_MIN_BYTES = 8192


class _WithText(nn.Module):
    """Holds the model and T [2,D] (row 0 real, row 1 fake) as a constant buffer.

    T comes from the model's inference cache, the value its own forward uses: an export that owns the
    model releases the text tower once T is cached (exporter.release_text_tower)."""

    def __init__(self, model: MaskCLIP):
        super().__init__()
        self.model = model
        with torch.no_grad():
            self.register_buffer("text", model.text_embeddings().detach().clone())


class FusedGraph(_WithText):
    """image [B,3,S,S] -> logits [B,2], fake_prob [B], mask [B,1,S,S] (probability)."""

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        clip_cls, clip_maps = self.model.clip_features(image)
        out = self.model.heads(self.model.trunk(image, clip_maps), clip_cls, self.text)
        return out["logits"], out["fake_prob"], out["mask_prob"]


class ClipGraph(nn.Module):
    """image [B,3,S,S] -> clip_cls [B,T,Wc], clip_maps [B,T,Wc,g,g] (the 224 downsample is in-graph)."""

    def __init__(self, model: MaskCLIP):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.clip_features(image)


class TrunkGraph(nn.Module):
    """image [B,3,S,S], clip_maps [B,T,Wc,g,g] -> features [B,Wm,G,G] (MAE side net + VCA)."""

    def __init__(self, model: MaskCLIP):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, clip_maps: torch.Tensor) -> torch.Tensor:
        return self.model.trunk(image, clip_maps)


class HeadsGraph(_WithText):
    """features [B,Wm,G,G], clip_cls [B,T,Wc] -> logits, fake_prob, mask (pyramid + TVCA, VSA)."""

    def forward(self, features: torch.Tensor, clip_cls: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model.heads(features, clip_cls, self.text)
        return out["logits"], out["fake_prob"], out["mask_prob"]


class ScreenGraph(_WithText):
    """image [B,3,S,S] -> logits [B,2], fake_prob [B], clip_maps [B,T,Wc,g,g] (CLIP + VSA only).

    The cascade's first graph: the verdict for every image, and the CLIP maps so that localising a fake
    image does not run CLIP a second time."""

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        clip_cls, clip_maps = self.model.clip_features(image)
        out = self.model.verdict_head(clip_cls, self.text)
        return out["logits"], out["fake_prob"], clip_maps


class LocaliseGraph(_WithText):
    """image [B,3,S,S], clip_maps [B,T,Wc,g,g] -> mask [B,1,S,S] (MAE side net + VCA + decoder)."""

    def forward(self, image: torch.Tensor, clip_maps: torch.Tensor) -> torch.Tensor:
        return self.model.mask_head(self.model.trunk(image, clip_maps), self.text)["mask_prob"]


_WRAPPERS = {
    "fused": FusedGraph,
    "clip": ClipGraph,
    "trunk": TrunkGraph,
    "heads": HeadsGraph,
    "screen": ScreenGraph,
    "localise": LocaliseGraph,
}


def graph_specs(topology: str) -> tuple[GraphSpec, ...]:
    if topology not in TOPOLOGIES:
        raise ValueError(f"topology must be one of {', '.join(TOPOLOGIES)}, got {topology!r}")
    return TOPOLOGIES[topology]


def wrap(model: MaskCLIP, spec: GraphSpec) -> nn.Module:
    return _WRAPPERS[spec.name](model).eval()


@torch.no_grad()
def example_feeds(model: MaskCLIP, specs: tuple[GraphSpec, ...], batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random image batch and every intermediate tensor the graphs exchange, computed by the wrappers."""
    size = model.config.image_size
    generator = torch.Generator().manual_seed(seed)
    tensors = {"image": torch.randn(batch, 3, size, size, generator=generator)}
    for spec in specs:
        outputs = wrap(model, spec)(*(tensors[name] for name in spec.input_names))
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        tensors.update(zip(spec.output_names, outputs, strict=True))
    return tensors


def weights_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)


def needs_external_data(model: onnx.ModelProto) -> bool:
    return weights_bytes(model) > EXTERNAL_DATA_BYTES


def save_onnx(model: onnx.ModelProto, path: Path) -> list[Path]:
    """Save, with external data beside the file when the weights are large; returns the files written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not needs_external_data(model):
        onnx.save_model(model, str(path))
        return [path]
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=1024,
    )
    shutil.copymode(path, data)  # onnx creates the data file owner-only; the artifact is shared like the graph
    return [path, data]


def graph_files(path: Path) -> list[Path]:
    """The ONNX file and its external data file, if any."""
    data = path.with_name(path.name + ".data")
    return [path, data] if data.exists() else [path]


def _set_io_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], batch: BatchSpec) -> None:
    """Declare every graph input/output as [batch, *static dims]; a static batch is pinned here and
    onnxslim then folds the shape arithmetic. (The tracer leaves some output dims unnamed, e.g. the
    mask after a Resize whose size it computed from shapes.)"""
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        for i, size in enumerate((batch.dim, *shapes[value.name][1:])):
            dim = dims.add()
            if i == 0 and batch.dynamic:
                dim.dim_param = BATCH_AXIS
            else:
                dim.dim_value = int(size)
    del model.graph.value_info[:]


def input_batch_dims(model: onnx.ModelProto) -> dict[str, int | str]:
    """Graph input name -> its first dimension (int, or the symbol's name; '?' when unknown)."""
    dims = {}
    for value in model.graph.input:
        dim = value.type.tensor_type.shape.dim[0]
        dims[value.name] = dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "?")
    return dims


def check_batch_axis(model: onnx.ModelProto, batch: BatchSpec, graph_name: str) -> None:
    """The exported inputs must carry exactly the batch that was asked for (fixed N or the symbol)."""
    wrong = {name: dim for name, dim in input_batch_dims(model).items() if dim != batch.dim}
    if wrong:
        raise RuntimeError(f"{graph_name}: exported batch axis {wrong} != requested {batch.dim!r}")


def _trace_to_onnx(
    module: nn.Module, args: tuple[torch.Tensor, ...], spec: GraphSpec, opset: int, folder: Path
) -> onnx.ModelProto:
    """Trace into `folder`; returns the graph with its weights moved out to `folder/WEIGHTS_FILE`.

    Without autograd: the tracer runs the forward pass, and with autograd on, every activation it saves
    for a backward pass stays alive until the graph is written (on opensdi-vitl14 that was more than the
    graph itself). The traced graph is the same."""
    names = (*spec.input_names, *spec.output_names)
    path = folder / spec.file
    weights: dict[str, bytes] = {}
    with warnings.catch_warnings(), torch.no_grad(), _weights_handed_over(weights):
        # The tracer warns about Python-side shape arithmetic; the batch checks below are the real guard.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=list(spec.input_names),
            output_names=list(spec.output_names),
            dynamic_axes={name: {0: BATCH_AXIS} for name in names},
            do_constant_folding=True,
        )
    model = onnx.load(str(path))  # the graph, each initializer a placeholder for its handed-over tensor
    path.unlink()
    _write_weights(model, weights, folder / WEIGHTS_FILE)  # empties `weights`
    release_freed_memory()  # the tracer's constant-folded copies of the weights
    return model


@contextlib.contextmanager
def _weights_handed_over(weights: dict[str, bytes]) -> Iterator[None]:
    """While torch.onnx.export runs, its TorchScript exporter hands the graph's initializers over (into
    `weights`: initializer name -> its raw bytes) instead of copying them into the protobuf it returns.

    This is the exporter's own deferred-weights mode (`defer_weight_export`, which `torch.onnx.export`
    hard-codes off): the bytes are those the protobuf would have held, once. Left off, the exporter holds
    the weights three times at its peak, in the C++ protobuf, its serialised string and the Python bytes
    made from that: 4 GB above the model on opensdi-vitl14 (a 1.66 GB graph), the peak of the whole fp32
    export. (Both functions are replaced process-wide for the call: exports run one at a time;
    `tests/test_export_memory.py` checks the graph against a plain export's.)"""
    from torch.onnx._internal.torchscript_exporter import onnx_proto_utils

    export_onnx, export_file = torch._C.Graph._export_onnx, onnx_proto_utils._export_file

    def export_deferred(graph, params, opset, dynamic_axes, _defer_weight_export, *rest):
        return export_onnx(graph, params, opset, dynamic_axes, True, *rest)

    def export_graph_only(model_bytes, f, export_map):
        weights.update(export_map)
        export_file(model_bytes, f, {})

    torch._C.Graph._export_onnx, onnx_proto_utils._export_file = export_deferred, export_graph_only
    try:
        yield
    finally:
        torch._C.Graph._export_onnx, onnx_proto_utils._export_file = export_onnx, export_file


def _write_weights(model: onnx.ModelProto, weights: dict[str, bytes], file: Path) -> None:
    """Fill each initializer with its handed-over bytes: in `file` (external data, relative to the
    file's folder) from WEIGHTS_MIN_BYTES up, in the graph below that."""
    missing = [t.name for t in model.graph.initializer if t.name not in weights]
    if missing or len(weights) != len(model.graph.initializer):
        raise RuntimeError(f"torch.onnx.export did not hand over the graph's weights as expected ({missing[:3]})")
    with file.open("wb") as f:
        for tensor in model.graph.initializer:
            data = weights.pop(tensor.name)  # each tensor's bytes go as soon as they are written
            if len(data) < WEIGHTS_MIN_BYTES:
                tensor.raw_data = data
                continue
            set_external_data(tensor, WEIGHTS_FILE, offset=f.tell(), length=len(data))
            f.write(data)
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL


@contextlib.contextmanager
def _weights_by_reference(folder: Path) -> Iterator[None]:
    """While onnxslim works on a graph whose weights are in `folder/WEIGHTS_FILE`, weights travel by
    reference: one it reads is a read-only memory map of the file; one it leaves as it was goes out as
    the same reference, and a large one it computes (its Gemm fusion transposes every MatMul weight) is
    appended to the file and goes out as a reference to that.

    onnxslim's graphsurgeon would otherwise hold every weight it looks at as numpy and copy it into each
    of its passes' protobufs: about 9x the graph. The values it sees are the same bytes either way.
    (The two graphsurgeon methods are replaced process-wide for the call: exports run one at a time.)"""
    from onnxslim.third_party.onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
    from onnxslim.third_party.onnx_graphsurgeon.ir.tensor import LazyValues

    weights = folder / WEIGHTS_FILE
    mapped: dict[int, tuple[np.ndarray, onnx.TensorProto]] = {}  # id -> (the array, kept alive; its reference)
    load, export = LazyValues.load, OnnxExporter.export_tensor_proto

    def load_mapped(self):
        if not uses_external_data(self.tensor):
            return load(self)
        offset = int(ExternalDataInfo(self.tensor).offset or 0)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(self.tensor.data_type)
        array = np.memmap(weights, dtype=dtype, mode="r", offset=offset, shape=tuple(self.tensor.dims))
        mapped[id(array)] = (array, self.tensor)
        return array

    def export_reference(tensor):
        values = tensor._values
        entry = mapped.get(id(values))
        if entry is None and isinstance(values, np.ndarray) and values.nbytes >= WEIGHTS_MIN_BYTES:
            with weights.open("ab") as f:
                offset = f.tell()
                f.write(np.ascontiguousarray(values).tobytes())
            dtype = onnx.helper.np_dtype_to_tensor_dtype(values.dtype)
            reference = onnx.TensorProto(name=tensor.name, data_type=dtype, dims=values.shape)
            for key, value in (("location", WEIGHTS_FILE), ("offset", offset), ("length", values.nbytes)):
                field = reference.external_data.add()
                field.key, field.value = key, str(value)
            reference.data_location = onnx.TensorProto.EXTERNAL
            entry = mapped[id(values)] = (values, reference)
        if entry is not None and entry[0] is values:
            proto = onnx.TensorProto()
            proto.CopyFrom(entry[1])
            proto.name = tensor.name
            return proto
        proto = export(tensor)
        if proto.data_location == onnx.TensorProto.EXTERNAL and not proto.external_data:
            proto.data_location = onnx.TensorProto.DEFAULT  # small values it computed, written inline
        return proto

    LazyValues.load, OnnxExporter.export_tensor_proto = load_mapped, staticmethod(export_reference)
    previous = os.getcwd()
    os.chdir(folder)  # shape inference reads the constants it needs relative to the working folder
    try:
        yield
    finally:
        os.chdir(previous)
        LazyValues.load, OnnxExporter.export_tensor_proto = load, staticmethod(export)


def export_graph(
    module: nn.Module,
    tensors: dict[str, torch.Tensor],
    spec: GraphSpec,
    path: Path,
    batch: BatchSpec,
    opset: int,
) -> list[Path]:
    """Trace one wrapper on example tensors (its inputs, and its outputs for their shapes), fix the IO
    shapes and batch axis, slim, check; returns the files written."""
    with tempfile.TemporaryDirectory(prefix="maskclip-trace-") as tmp:
        model = _trace_to_onnx(module, tuple(tensors[name] for name in spec.input_names), spec, opset, Path(tmp))
        shapes = {name: tuple(tensors[name].shape) for name in (*spec.input_names, *spec.output_names)}
        _set_io_shapes(model, shapes, batch)
        with _weights_by_reference(Path(tmp)):
            model = onnxslim.slim(model)
        release_freed_memory()
        check_batch_axis(model, batch, spec.name)
        load_external_data_for_model(model, tmp)
    files = save_onnx(model, path)
    del model
    release_freed_memory()
    onnx.checker.check_model(str(path), full_check=True)
    return files


def export_graphs(
    model: MaskCLIP,
    out_dir: Path,
    topology: str,
    batch: BatchSpec,
    opset: int,
    on_graph: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Export every graph of the topology into out_dir; returns {graph name: onnx path}.

    on_graph(name) is called as each graph starts (progress display)."""
    model = model.eval()
    specs = graph_specs(topology)
    feeds = example_feeds(model, specs, EXAMPLE_BATCH)
    paths = {}
    for spec in specs:
        if on_graph is not None:
            on_graph(spec.name)
        path = out_dir / spec.file
        export_graph(wrap(model, spec), feeds, spec, path, batch, opset)
        paths[spec.name] = path
    return paths


def torch_reference(model: MaskCLIP, topology: str):
    """The PyTorch model as a verification Predictor: image batch -> the outputs the graphs produce.

    The final outputs come from `model(x)` itself, not from the wrappers, so the gate also checks the
    wrappers. Split and cascade topologies get the intermediate tensors too, so each graph's error is
    reported.
    """
    model = model.eval()

    @torch.no_grad()
    def predict(images):
        x = torch.from_numpy(images)
        out = model(x)
        result = {"logits": out["logits"], "fake_prob": out["fake_prob"], "mask": out["mask_prob"]}
        if topology == "split":
            clip_cls, clip_maps = model.clip_features(x)
            result |= {"clip_cls": clip_cls, "clip_maps": clip_maps, "features": model.trunk(x, clip_maps)}
        elif topology == "cascade":
            result["clip_maps"] = model.clip_features(x)[1]
        return {name: value.float().numpy() for name, value in result.items()}

    return predict
