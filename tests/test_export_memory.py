"""maskclip-export within a memory budget: the measures that bound its memory leave the graph as it was,
and the end-of-run line reports the peak the kernel measured."""

from __future__ import annotations

import contextlib
import hashlib
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

from maskclip_runtime.contract.manifest import BATCH_AXIS, BatchSpec
from maskclip_runtime.kernel.memory import peak_resident_bytes, release_freed_memory

pytestmark = [pytest.mark.torch, pytest.mark.usefixtures("one_torch_thread")]


def _fingerprint(path: Path) -> tuple[str, dict[str, str]]:
    """(hash of the graph proto with every tensor's bytes and storage fields cleared, {tensor: hash of its bytes})."""
    model = onnx.load(str(path))
    tensors = {}
    for tensor in model.graph.initializer:
        tensors[tensor.name] = hashlib.sha256(tensor.raw_data).hexdigest()
        tensor.ClearField("raw_data")
        tensor.ClearField("data_location")
        del tensor.external_data[:]
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest(), tensors


def _plain_export(module, tensors, spec, path: Path, batch: BatchSpec, opset: int) -> None:
    """The export as it was before memory mattered: traced with autograd on, every copy kept, no trimming."""
    import onnxslim
    import torch

    from maskclip_export.onnx_export import _set_io_shapes

    names = (*spec.input_names, *spec.output_names)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = Path(tmp) / spec.file
        torch.onnx.export(
            module,
            tuple(tensors[name] for name in spec.input_names),
            str(traced),
            dynamo=False,
            opset_version=opset,
            input_names=list(spec.input_names),
            output_names=list(spec.output_names),
            dynamic_axes={name: {0: BATCH_AXIS} for name in names},
            do_constant_folding=True,
        )
        model = onnx.load(str(traced))
    _set_io_shapes(model, {name: tuple(tensors[name].shape) for name in names}, batch)
    onnx.save(onnxslim.slim(model), str(path))


@pytest.mark.parametrize(
    ("topology", "batch"),
    [("fused", BatchSpec.fixed(1)), ("split", BatchSpec.up_to(4)), ("cascade", BatchSpec.fixed(2))],
)
def test_the_memory_measures_leave_every_graph_as_it_was(tiny_model, tmp_path, topology, batch):
    from maskclip_export.onnx_export import EXAMPLE_BATCH, example_feeds, export_graph, graph_specs, wrap

    specs = graph_specs(topology)
    feeds = example_feeds(tiny_model, specs, EXAMPLE_BATCH)
    for spec in specs:
        bounded, plain = tmp_path / "bounded" / spec.file, tmp_path / "plain" / spec.file
        plain.parent.mkdir(exist_ok=True)
        export_graph(wrap(tiny_model, spec), feeds, spec, bounded, batch, 17)
        _plain_export(wrap(tiny_model, spec), feeds, spec, plain, batch, 17)
        graph, weights = _fingerprint(bounded)
        assert weights == _fingerprint(plain)[1], spec.name
        assert graph == _fingerprint(plain)[0], spec.name
        assert len(weights) > 10


def test_peak_resident_bytes_sees_an_allocation():
    before = peak_resident_bytes()
    block = np.ones(400_000_000 // 8)  # 400 MB, every page touched
    assert peak_resident_bytes() >= block.nbytes
    assert peak_resident_bytes() >= before
    del block
    release_freed_memory()


def test_the_memory_benchmark_attributes_the_peak_to_the_export_steps(tmp_path, calib_folder):
    from maskclip_bench.export_memory import measure_export

    images = str(calib_folder(4))
    result = measure_export(["--config", "tiny", "--verify-images", images, "--out", str(tmp_path / "art")])
    assert result["exit_status"] == 0, result["errors"]
    steps = result["step_peak_mb"]
    # Every step by its name, the gate's two sides too (their names hold a colon before the bar's own).
    gate = {"verify: PyTorch (4 images)", "verify: onnxruntime-cpu (4 images)"}
    assert {"export fused", *gate, "self-check canaries", "self-check (runtime)"} <= set(steps), steps
    # Sampled every 50 ms from outside: never above the kernel's peak (a spike shorter than the interval can
    # fall between two samples, so how close they come is not a property of the export).
    assert 0 < max(steps.values()) <= result["peak_mb"] * 1.01
    # The end-of-run line's figure against ru_maxrss of the export process as wait4 returned it: printed just
    # before exit, it can only be as large or (teardown) slightly smaller.
    reported_gb = float(re.search(r"peak memory ([0-9.]+) GB", result["summary"]).group(1))
    assert result["peak_mb"] / 1e3 * 0.9 - 0.01 <= reported_gb <= result["peak_mb"] / 1e3 + 0.01
    assert reported_gb > 0.2  # torch and a model were loaded


def test_an_export_that_owns_its_model_frees_it_and_writes_the_same_artifact(
    tiny_export, tiny_model, calib_dir, tmp_path
):
    """owned=True (the CLI's source): the text tower goes before the trace and every weight once PyTorch's
    outputs are computed, before the quantiser runs. The artifact is the one the same export writes
    without releasing anything: graph bytes, canaries, the gate's figures."""
    import copy

    from maskclip_core.checkpoint import weights_digest
    from maskclip_export.exporter import ExportOptions, ModelSource, export_artifact

    options = {"precision": "int8-cpu", "calib": str(calib_dir), "batch": BatchSpec.up_to(4)}
    kept, kept_manifest = tiny_export(**options)
    model = copy.deepcopy(tiny_model)
    source = ModelSource(model, "random init (tiny)", weights_digest(model), owned=True)
    out = tmp_path / "owned"
    manifest = export_artifact(source, ExportOptions(out=out, **options), progress=False, log=lambda _: None)

    assert all(p.is_meta for p in model.parameters())  # nothing of the weights is left
    files = sorted(p.relative_to(kept).as_posix() for p in kept.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert files == sorted(
        p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"
    )
    for name in files:
        assert (out / name).read_bytes() == (kept / name).read_bytes(), name
    assert manifest.self_check == kept_manifest["self_check"]
    figures = ("max_prob_diff", "flips", "mask_iou_mean", "mask_iou_min", "images", "passed")
    assert {k: manifest.verification[k] for k in figures} == {k: kept_manifest["verification"][k] for k in figures}
    assert manifest.model_id == kept_manifest["model"]["model_id"]


def test_releasing_the_text_tower_leaves_the_models_outputs_as_they_were(tiny_model):
    import copy

    import torch

    from maskclip_export.exporter import release_text_tower

    model = copy.deepcopy(tiny_model)
    images = torch.randn(
        2, 3, model.config.image_size, model.config.image_size, generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        before = model(images)
        release_text_tower(model)
        after = model(images)
    assert model.clip.model.transformer.resblocks[0].mlp.c_fc.weight.is_meta
    for name in ("logits", "fake_prob", "mask_prob"):
        assert torch.equal(before[name], after[name]), name


def test_the_tracers_functions_are_restored_even_when_the_trace_fails():
    import torch
    from torch.onnx._internal.torchscript_exporter import onnx_proto_utils

    from maskclip_export.onnx_export import _weights_handed_over

    originals = torch._C.Graph._export_onnx, onnx_proto_utils._export_file
    with pytest.raises(KeyboardInterrupt), _weights_handed_over({}):
        assert torch._C.Graph._export_onnx is not originals[0]
        raise KeyboardInterrupt
    assert (torch._C.Graph._export_onnx, onnx_proto_utils._export_file) == originals


def test_streamed_percentile_calibration_gives_ort_its_own_histograms_and_ranges(tiny_model, tmp_path, monkeypatch):
    """int8-cpu's convolution calibration: the two streaming passes against ORT's percentile calibrator over
    all of the images at once, on images whose value ranges differ (so that any widening of the bins would
    show): every histogram bin for bin, the value ranges, the ranges ORT computes from them, and the graph
    quantize_for_cpu writes with and without the streaming."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    from maskclip_export import quantize
    from maskclip_export.onnx_export import export_graphs
    from maskclip_export.verify import default_verification_images
    from maskclip_runtime.kernel.preprocess import preprocess_batch

    graph = export_graphs(tiny_model, tmp_path, "fused", BatchSpec.fixed(1), 17)["fused"]
    images = preprocess_batch([image for _, image in default_verification_images()[::9]], tiny_model.preprocess_spec())
    images[1] *= 3  # one image far outside the others' range
    feeds = [{"image": images[i : i + 1]} for i in range(len(images))]

    def calibrator(name):
        return create_calibrator(
            graph,
            ["Conv"],
            augmented_model_path=str(tmp_path / f"{name}.onnx"),
            calibrate_method=CalibrationMethod.Percentile,
        )

    ort, streamed = calibrator("ort"), calibrator("streamed")
    ort.collect_data(quantize.FeedCalibrationReader(feeds))
    quantize.collect_histograms_streaming(streamed, quantize.FeedCalibrationReader(feeds))
    expected, got = ort.collector.histogram_dict, streamed.collector.histogram_dict
    assert list(got) == list(expected) and len(expected) >= 4
    for name, (counts, edges, low, high) in expected.items():
        assert np.array_equal(got[name][0], counts) and np.array_equal(got[name][1], edges), name
        assert got[name][1].dtype == edges.dtype and (got[name][2], got[name][3]) == (low, high), name
    ranges = {name: tuple(map(float, data.range_value)) for name, data in ort.compute_data().data.items()}
    assert ranges == {name: tuple(map(float, data.range_value)) for name, data in streamed.compute_data().data.items()}

    streamed_calls = []
    real = quantize.collect_histograms_streaming
    monkeypatch.setattr(quantize, "collect_histograms_streaming", lambda *a: streamed_calls.append(1) or real(*a))
    quantize.quantize_for_cpu(graph, tmp_path / "streamed.onnx", quantize.FeedCalibrationReader(feeds), True)
    with monkeypatch.context() as plain:
        plain.setattr(quantize, "_percentile_histograms_streamed", contextlib.nullcontext)
        quantize.quantize_for_cpu(graph, tmp_path / "plain.onnx", quantize.FeedCalibrationReader(feeds), True)
    assert streamed_calls == [1]
    assert (tmp_path / "streamed.onnx").read_bytes() == (tmp_path / "plain.onnx").read_bytes()


def test_the_step_is_the_bar_shown_now_not_the_one_before():
    """tqdm starts each refresh with a carriage return and ends none: the step is known as soon as its bar
    is written, however long the step runs; other lines are kept, a bar split across reads is read whole."""
    from maskclip_bench.export_memory import ProgressLines

    progress = ProgressLines()
    progress.feed("\rexport:   0%|          | 0/7 [00:00<?, ?step/s]")
    assert progress.step == "export"
    progress.feed("\rexport fused:  14%|█▍        | 1/7 [00:03<00:")
    assert progress.step == "export fused"
    progress.feed("20, 3.1s/step]\rverify: PyTorch (16 images):  29%|██▊ | 2/7")
    assert progress.step == "verify: PyTorch (16 images)"
    progress.feed("\nwarning: calibration image skipped: x.png\nmaskclip-export: 1 graph(s)")
    assert progress.step == "verify: PyTorch (16 images)"
    progress.feed(", 4.1 MB\n")
    assert progress.lines == ["warning: calibration image skipped: x.png", "maskclip-export: 1 graph(s), 4.1 MB"]


def test_int8_ranges_calibrated_beforehand_give_the_graph_quantize_static_makes_alone(
    tiny_model, tmp_path, monkeypatch
):
    """int8 (QDQ): MinMax ranges computed in a call of their own and handed to quantize_static as its calibration
    cache, against quantize_static calibrating itself: the same graph, byte for byte."""
    from maskclip_export import quantize
    from maskclip_export.onnx_export import export_graphs
    from maskclip_export.verify import default_verification_images
    from maskclip_runtime.kernel.preprocess import preprocess_batch

    if not quantize.RANGES_BEFOREHAND:
        pytest.skip("this onnxruntime's quantize_static takes no calibration cache")
    graph = export_graphs(tiny_model, tmp_path, "fused", BatchSpec.fixed(1), 17)["fused"]
    images = preprocess_batch([image for _, image in default_verification_images()[::11]], tiny_model.preprocess_spec())
    feeds = [{"image": images[i : i + 1]} for i in range(len(images))]
    cached = []
    real = quantize._min_max_ranges
    monkeypatch.setattr(quantize, "_min_max_ranges", lambda *a: cached.append(1) or real(*a))
    quantize.quantize_to_int8(graph, tmp_path / "beforehand.onnx", quantize.FeedCalibrationReader(feeds), True)
    monkeypatch.setattr(quantize, "RANGES_BEFOREHAND", False)
    quantize.quantize_to_int8(graph, tmp_path / "alone.onnx", quantize.FeedCalibrationReader(feeds), True)
    assert cached == [1]
    assert (tmp_path / "beforehand.onnx").read_bytes() == (tmp_path / "alone.onnx").read_bytes()
