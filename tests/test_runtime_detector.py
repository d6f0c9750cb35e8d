"""Detector over the stand-in artifact: results, chaining, batching, backend choice, no torch."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import trt_standin
from PIL import Image
from standin_artifact import (
    build_standin_artifact,
    expected_standin_output,
    read_manifest,
    sample_photos,
    sha256_of,
    write_manifest,
)

from maskclip_runtime.backends import tensorrt as tensorrt_backend
from maskclip_runtime.backends.onnxruntime import providers_for
from maskclip_runtime.contract.engine_header import EngineIncompatibleError, sidecar_path, write_engine
from maskclip_runtime.contract.manifest import GraphSpec, graph_digest
from maskclip_runtime.detect.detector import Detection, Detector
from maskclip_runtime.errors import BackendUnavailable
from maskclip_runtime.kernel.devices import DeviceError
from maskclip_runtime.kernel.preprocess import ImageLoadError


@pytest.fixture(scope="module")
def photos():
    return list(sample_photos().values())


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    return build_standin_artifact(tmp_path_factory.mktemp("fused"), "fused")


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return build_standin_artifact(tmp_path_factory.mktemp("split"), "split")


def test_detection_matches_independent_computation(fused, photos):
    detector = Detector(fused, backend="onnxruntime", device="cpu")
    assert detector.backend == "onnxruntime-cpu"
    assert detector.model_id == "standin-fused-fp32-fused"
    for image, detection in zip(photos, detector.detect(photos), strict=True):
        fake_prob, mask = expected_standin_output(image)
        assert detection.fake_prob == pytest.approx(fake_prob, abs=1e-5)
        assert detection.verdict == ("fake" if fake_prob > 0.5 else "real")
        assert detection.mask.dtype == np.float32
        assert detection.mask.shape == (image.height, image.width)  # original size, not SxS
        assert (detection.width, detection.height) == image.size
        assert detection.mask_fraction == pytest.approx(float((detection.mask > 0.5).mean()))
        # The S x S model mask is brought back to the photo's size with a bilinear resize.
        expected = np.asarray(Image.fromarray(mask.astype(np.float32)).resize(image.size, Image.Resampling.BILINEAR))
        np.testing.assert_allclose(detection.mask, expected, atol=1e-4)
        assert detection.ms > 0


def test_split_artifact_is_chained_to_the_same_answers(fused, split, photos):
    whole = Detector(fused, backend="onnxruntime").detect(photos)
    chained = Detector(split / "manifest.json", backend="onnxruntime").detect(photos)
    for a, b in zip(whole, chained, strict=True):
        assert a.fake_prob == pytest.approx(b.fake_prob, abs=1e-6)
        np.testing.assert_allclose(a.mask, b.mask, atol=1e-6)


@pytest.mark.parametrize("topology", ["fused", "split"])
def test_batch_1_and_batch_4_agree(topology, fused, split, photos):
    artifact = fused if topology == "fused" else split
    images = photos * 2  # 8 images: two full batches of 4
    one = Detector(artifact, backend="onnxruntime", batch=1)
    four = Detector(artifact, backend="onnxruntime", batch=4)
    assert (one.batch_size, four.batch_size) == (1, 4)
    for a, b in zip(one.detect(images), four.detect(images), strict=True):
        assert a.fake_prob == pytest.approx(b.fake_prob, abs=1e-6)
        np.testing.assert_allclose(a.mask, b.mask, atol=1e-6)


def test_static_batch_artifact_is_padded_and_chunked(tmp_path, fused, photos):
    static = build_standin_artifact(tmp_path / "static", "fused", batch={"dynamic": False, "size": 2})
    detector = Detector(static, backend="onnxruntime", batch=8)
    assert detector.batch_size == 2  # a fixed-batch graph always runs its own size
    images = photos[:3]  # one full batch, one padded
    reference = Detector(fused, backend="onnxruntime").detect(images)
    for a, b in zip(detector.detect(images), reference, strict=True):
        assert a.fake_prob == pytest.approx(b.fake_prob, abs=1e-6)
        np.testing.assert_allclose(a.mask, b.mask, atol=1e-6)


def test_batch_is_capped_by_the_artifact_profile(fused):
    assert Detector(fused, backend="onnxruntime", batch=100).batch_size == 8
    assert Detector(fused, backend="onnxruntime").batch_size == 4  # the profile's opt


def test_threshold_override_changes_verdict_and_fraction(fused, photos):
    default, strict = Detector(fused), Detector(fused, threshold=0.99)
    assert default.threshold == 0.5 and strict.threshold == 0.99
    for a, b in zip(default.detect(photos), strict.detect(photos), strict=True):
        assert b.verdict == "real"  # the stand-in never reaches 0.99
        assert b.mask_fraction <= a.mask_fraction
    with pytest.raises(ValueError, match="threshold"):
        Detector(fused, threshold=1.5)


def test_auto_backend_without_engines_is_onnxruntime(fused):
    assert Detector(fused, backend="auto", device="cpu").backend == "onnxruntime-cpu"
    assert Detector(fused).backend.startswith("onnxruntime")


def test_tensorrt_without_engines_is_a_clear_error(fused):
    with pytest.raises(BackendUnavailable, match="no TensorRT engine.*--backend onnxruntime"):
        Detector(fused, backend="tensorrt")


def test_device_names_are_checked_by_every_backend(fused):
    with pytest.raises(DeviceError):
        Detector(fused, backend="onnxruntime", device="gpu")
    with pytest.raises(DeviceError):
        Detector(fused, backend="tensorrt", device="cuda:x")
    with pytest.raises(BackendUnavailable):  # a valid name, but TensorRT runs only on a GPU
        Detector(fused, backend="tensorrt", device="cpu")


def test_providers_follow_the_device_and_fall_back_with_a_warning():
    gpu_build = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers_for("cpu", gpu_build) == (["CPUExecutionProvider"], None)
    assert providers_for("cuda:1", gpu_build) == (
        [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"],
        None,
    )
    providers, warning = providers_for("tensorrt", gpu_build)
    assert [p[0] for p in providers[:2]] == ["TensorrtExecutionProvider", "CUDAExecutionProvider"] and warning is None
    providers, warning = providers_for("tensorrt", gpu_build[1:])
    assert providers[0][0] == "CUDAExecutionProvider" and "using CUDAExecutionProvider" in warning
    providers, warning = providers_for("cuda", ["CPUExecutionProvider"])
    assert providers == ["CPUExecutionProvider"] and "running on CPU" in warning


def test_gpu_request_without_gpu_provider_warns_once_and_runs_on_cpu(split, photos, caplog):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this ONNX Runtime has CUDA")
    from maskclip_runtime.backends import onnxruntime as runner_module

    runner_module._warned.clear()
    with caplog.at_level("WARNING", logger="maskclip_runtime"):
        detector = Detector(split, backend="onnxruntime", device="cuda")
    assert caplog.text.count("running on CPU") == 1  # two graphs, one warning
    assert detector.backend == "onnxruntime-cpu"
    assert "running on CPU" in caplog.text
    assert len(detector.detect(photos[:1])) == 1


def test_unknown_backend_and_device_are_rejected(fused):
    with pytest.raises(ValueError, match="unknown backend"):
        Detector(fused, backend="tflite")
    with pytest.raises(ValueError, match="unknown device"):
        Detector(fused, backend="onnxruntime", device="tpu")


def test_runtime_never_imports_torch(fused, tmp_path):
    """The whole runtime path (artifact, ONNX Runtime, detector, CLI module) in a fresh interpreter."""
    script = f"""
import sys
from PIL import Image
import maskclip_runtime
import maskclip_runtime.cli
detector = maskclip_runtime.Detector({str(fused)!r}, backend="auto")
detections = detector.detect([Image.new("RGB", (40, 30), (200, 10, 10))])
print(detections[0].mask.shape)
print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "open_clip", "timm")))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    shape, heavy = done.stdout.strip().splitlines()
    assert shape == "(30, 40)"
    assert json.loads(heavy.replace("'", '"')) == []


# ---- TensorRT selection, without a GPU: the engine runner is replaced by a stand-in


@pytest.fixture
def with_engines(tmp_path):
    """A split artifact whose manifest lists one stand-in engine (plan + sidecar) per graph, hashed like any file."""
    folder = build_standin_artifact(tmp_path / "engines", "split")
    manifest = read_manifest(folder)
    manifest["engines"] = []
    for graph in manifest["graphs"]:
        engine = folder / f"{graph['name']}.fp32.engine"
        built = {"graph": graph["name"], "precision": "fp32", "tensorrt_version": "10.3.0", "gpu_name": "stand-in",
                 "compute_capability": "8.7", "profile": {}}  # fmt: skip
        # The sidecar names the graph the engine was built from, as the runtime checks.
        source = graph_digest(manifest["files"], GraphSpec.from_dict(graph))
        write_engine(engine, {**built, "onnx_sha256": source, "onnx_file": graph["file"]}, trt_standin.ENGINE_PLAN)
        manifest["engines"].append({"file": engine.name, **built, "build_seconds": 0.0})
        for file in (engine, sidecar_path(engine)):
            manifest["files"][file.name] = sha256_of(file)
    write_manifest(folder, manifest)
    return folder


def test_tensorrt_backend_uses_one_engine_per_graph(with_engines, photos, monkeypatch):
    runner = trt_standin.onnx_engine_runner()
    monkeypatch.setattr(tensorrt_backend, "TensorRTRunner", runner)
    detector = Detector(with_engines, backend="tensorrt", device="cuda:1")
    assert detector.backend == "tensorrt"
    assert runner.opened == [("features.fp32.engine", 1), ("heads.fp32.engine", 1)]
    reference = Detector(with_engines, backend="onnxruntime").detect(photos)
    for a, b in zip(detector.detect(photos), reference, strict=True):
        assert a.fake_prob == pytest.approx(b.fake_prob, abs=1e-6)


def test_tensorrt_missing_is_one_clear_line(with_engines):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    assert Detector(with_engines, backend="auto").backend.startswith("onnxruntime")  # auto: engines need TensorRT
    with pytest.raises(BackendUnavailable, match=r"TensorRT.*constraints.txt -e \"\.\[gpu\]\"") as caught:
        Detector(with_engines, backend="tensorrt")
    assert "\n" not in str(caught.value)
    with pytest.raises(BackendUnavailable, match="CUDA device"):
        Detector(with_engines, backend="tensorrt", device="cpu")


def test_auto_falls_back_to_onnxruntime_when_engines_do_not_fit(with_engines, monkeypatch, caplog):
    class IncompatibleEngine(trt_standin.onnx_engine_runner()):
        def __init__(self, engine_path, device=0):
            raise EngineIncompatibleError(f"{engine_path}: built for another GPU; rebuild the engine\nmore detail")

    monkeypatch.setattr(tensorrt_backend, "TensorRTRunner", IncompatibleEngine)
    monkeypatch.setattr(tensorrt_backend.TensorRTBackend, "probe", lambda self: None)  # TensorRT and a GPU "here"
    with caplog.at_level("WARNING", logger="maskclip_runtime"):
        detector = Detector(with_engines, backend="auto")
    assert detector.backend.startswith("onnxruntime")
    assert "falling back" in caplog.text and "built for another GPU" in caplog.text
    with pytest.raises(
        BackendUnavailable, match="TensorRT cannot run this artifact: .*built for another GPU"
    ) as caught:
        Detector(with_engines, backend="tensorrt")
    assert "\n" not in str(caught.value)


# ---- what detect takes: PIL images, HxWx3 uint8 arrays, paths; one item or a list


def test_single_items_of_every_kind_give_one_detection_each(fused, photos, tmp_path):
    detector = Detector(fused, backend="onnxruntime", device="cpu")
    image = photos[0]
    path = tmp_path / "photo.png"
    image.save(path)
    reference = detector.detect([image])[0].fake_prob
    for item in (image, np.asarray(image), str(path), path, image.convert("RGBA")):
        detection = detector.detect(item)
        assert isinstance(detection, Detection)
        assert detection.fake_prob == pytest.approx(reference, abs=1e-6)
        assert (detection.width, detection.height) == image.size


def test_lists_and_tuples_of_mixed_items_give_lists_in_order(fused, photos):
    detector = Detector(fused, backend="onnxruntime", device="cpu")
    expected = [d.fake_prob for d in detector.detect(photos)]
    mixed = [np.asarray(p) if i % 2 else p for i, p in enumerate(photos)]
    for images in (mixed, tuple(mixed)):
        got = detector.detect(images)
        assert isinstance(got, list)
        assert [d.fake_prob for d in got] == pytest.approx(expected, abs=1e-6)
    assert detector.detect([]) == []


@pytest.mark.parametrize(
    ("item", "error"),
    [
        (np.zeros((8, 8, 3), np.float32), TypeError),  # not uint8
        (np.zeros((8, 8), np.uint8), ValueError),  # grey: no channel axis
        (np.zeros((8, 8, 4), np.uint8), ValueError),  # RGBA array
        (np.zeros((2, 8, 8, 3), np.uint8), ValueError),  # a stacked batch, not a list
        (3, TypeError),
        (b"bytes", TypeError),
        ("no/such/file.png", ImageLoadError),
    ],
    ids=["float", "grey", "rgba", "batch", "int", "bytes", "missing-path"],
)
def test_inputs_that_are_not_images_are_refused(fused, item, error):
    detector = Detector(fused, backend="onnxruntime", device="cpu")
    with pytest.raises(error):
        detector.detect(item)
    with pytest.raises(error):
        detector.detect([item])


# ---- an engine file as the model: its artifact found beside it, run on TensorRT (stand-ins)


def test_an_engine_file_is_a_model(with_engines, photos, monkeypatch):
    monkeypatch.setattr(tensorrt_backend, "TensorRTRunner", trt_standin.onnx_engine_runner())
    detector = Detector(with_engines / "heads.fp32.engine", device="cuda")
    assert detector.backend == "tensorrt" and detector.artifact.dir == with_engines
    reference = Detector(with_engines, backend="onnxruntime").detect(photos)
    for a, b in zip(detector.detect(photos), reference, strict=True):
        assert a.fake_prob == pytest.approx(b.fake_prob, abs=1e-6)


def test_maskclip_run_on_an_engine_file(with_engines, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from maskclip_runtime.cli import main as run_main

    trt_standin.install(monkeypatch, "10.3.0")  # TensorRT and a GPU "here": the early check passes
    monkeypatch.setattr(tensorrt_backend, "TensorRTRunner", trt_standin.onnx_engine_runner())
    photo = tmp_path / "photo.png"
    sample_photos()[next(iter(sample_photos()))].save(photo)
    result = CliRunner().invoke(run_main, [str(photo), "--model", str(with_engines / "features.fp32.engine")])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["backend"] == "tensorrt"
    expected = Detector(with_engines, backend="onnxruntime").detect(str(photo))
    assert record["fake_prob"] == pytest.approx(expected.fake_prob, abs=1e-6)


def _engine_refusals(with_engines, tmp_path) -> dict[str, list[str]]:
    engine = with_engines / "features.fp32.engine"
    alone = tmp_path / "alone"  # an engine and its sidecar copied away from their artifact
    alone.mkdir()
    for path in (engine, sidecar_path(engine)):
        (alone / path.name).write_bytes(path.read_bytes())
    unlisted = with_engines / "other.fp32.engine"  # beside the manifest, but not one of its engines
    unlisted.write_bytes(engine.read_bytes())
    sidecar_path(unlisted).write_bytes(sidecar_path(engine).read_bytes())
    bare = tmp_path / "bare.fp32.engine"  # a plan without its sidecar
    bare.write_bytes(engine.read_bytes())
    return {
        "on onnxruntime": [str(engine), "--backend", "onnxruntime"],
        "away from its artifact": [str(alone / engine.name)],
        "not in the manifest": [str(unlisted)],
        "without its sidecar": [str(bare)],
        "missing": [str(tmp_path / "missing.engine")],
    }


def test_engine_files_that_cannot_be_the_model_exit_2(with_engines, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from maskclip_runtime.cli import main as run_main

    trt_standin.install(monkeypatch, "10.3.0")
    monkeypatch.setattr(tensorrt_backend, "TensorRTRunner", trt_standin.onnx_engine_runner())
    photo = tmp_path / "photo.png"
    sample_photos()[next(iter(sample_photos()))].save(photo)
    for case, (model, *options) in _engine_refusals(with_engines, tmp_path).items():
        result = CliRunner().invoke(run_main, [str(photo), "--model", model, *options])
        assert result.exit_code == 2, (case, result.output)
        assert result.stdout == "" and result.stderr.count("\n") == 1, (case, result.stderr)


def test_an_engine_file_without_tensorrt_is_refused_before_loading(with_engines, tmp_path):
    from click.testing import CliRunner

    from maskclip_runtime.cli import main as run_main

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    result = CliRunner().invoke(run_main, [str(tmp_path / "x.png"), "--model", str(with_engines / "heads.fp32.engine")])
    assert result.exit_code == 4 and "TensorRT is not installed" in result.stderr
