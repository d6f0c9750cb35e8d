"""build_plan / build_engines against the TensorRT 10 and 11 stand-ins (tests/trt_standin.py): what is
configured, calibrated, written, staged and recorded."""

import json
import os
import stat

import numpy as np
import pytest
import trt_standin
from PIL import Image
from tiny_onnx import SHAPES, tiny_onnx
from tiny_onnx import onnx_artifact as _artifact
from trt_standin import OTHER_GPU_CACHE

from maskclip_export.tensorrt import (
    EngineGateFailed,
    PrecisionPlanError,
    build_engines,
    build_plan,
    calibration_cache_name,
    plan_precision,
)
from maskclip_runtime.contract.artifact import MANIFEST_NAME, load_artifact, write_manifest
from maskclip_runtime.contract.engine_header import read_engine_metadata, read_plan, sidecar_path
from maskclip_runtime.contract.manifest import ArtifactError, GraphSpec, Manifest, graph_digest

quiet = {"log": lambda _: None}


def _calibration_images(folder, count=3):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return sorted(folder.iterdir())


@pytest.fixture
def standins(monkeypatch):
    def install(version="10.3.0", broken_engines=False, **options):
        import maskclip_runtime.backends.tensorrt as runtime_backend

        monkeypatch.setattr(runtime_backend, "TensorRTRunner", trt_standin.onnx_engine_runner(broken_engines))
        return trt_standin.install(monkeypatch, version, **options)

    return install


# --- build_plan ----------------------------------------------------------------------------------------


def test_trt10_fp16_flags_pins_and_timing_cache(tmp_path, standins):
    record = standins("10.3.0").record
    tiny_onnx(tmp_path / "model.onnx")
    plan = plan_precision("10.3.0", "fp16", "fp32", ["Softmax", "Sigmoid", "LayerNormalization"])
    cache = tmp_path / "timing.cache"
    serialized = build_plan(tmp_path / "model.onnx", plan, SHAPES, 2.0, cache, **quiet)
    config = record["config"]
    assert serialized == b"plan:FP16,OBEY"
    assert config.cleared == {"TF32"} and config.workspace == ("WORKSPACE", 2 << 30)
    assert record["network_flags"] == 0  # weakly typed: the flags choose precision
    assert config.profiles[0].shapes == SHAPES
    pinned = {layer.name: (layer.precision, layer.output_types) for layer in record["layers"]}
    assert pinned["/attn/Softmax"] == ("float32", {0: "float32"})
    assert pinned["/head/Sigmoid"] == ("float32", {0: "float32"})
    assert pinned["/attn/MatMul"] == (None, {})
    assert cache.read_bytes() == b"+tuned"
    build_plan(tmp_path / "model.onnx", plan, SHAPES, 2.0, cache, **quiet)
    assert record["config"].timing_cache.data == b"+tuned"  # the saved cache is loaded by the next build
    assert cache.read_bytes() == b"+tuned+tuned"


@pytest.mark.parametrize(("version", "flags"), [("10.3.0", 1 << 1), ("10.13.3", 1 << 1), ("11.4.0", 0)])
def test_strongly_typed_network_flag_per_version(tmp_path, standins, version, flags):
    record = standins(version).record
    tiny_onnx(tmp_path / "model.onnx")
    plan = plan_precision(version, "fp16", "fp16", ["Softmax"])
    assert build_plan(tmp_path / "model.onnx", plan, SHAPES, 1.0, None, **quiet) == b"plan:"
    # TensorRT 10: 1 << STRONGLY_TYPED (= 1; 0 is the deprecated EXPLICIT_BATCH). 11: always strongly typed.
    assert record["network_flags"] == flags
    assert all(getattr(layer, "precision", None) is None for layer in record["layers"])


def test_trt11_fp32_build_uses_no_removed_api(tmp_path, standins):
    """The TensorRT 11 stand-in has no FP16/INT8/OBEY flags, no layer.precision and no calibrator."""
    record = standins("11.4.0").record
    tiny_onnx(tmp_path / "model.onnx")
    plan = plan_precision("11.4.0", "fp32", "fp32", ["Softmax", "Sigmoid"])
    assert build_plan(tmp_path / "model.onnx", plan, SHAPES, 1.0, None, **quiet) == b"plan:"
    assert record["config"].cleared == {"TF32"}
    with pytest.raises(AttributeError):
        record["layers"][0].precision = "float32"  # the stand-in really lacks it


def test_timing_cache_from_another_gpu_is_replaced(tmp_path, standins):
    standins("10.3.0")
    tiny_onnx(tmp_path / "model.onnx")
    cache = tmp_path / "timing.cache"
    cache.write_bytes(OTHER_GPU_CACHE + b" tactics")
    messages = []
    build_plan(
        tmp_path / "model.onnx", plan_precision("10.3.0", "fp32", "fp32"), SHAPES, 1.0, cache, log=messages.append
    )
    assert cache.read_bytes() == b"+tuned"  # a fresh cache, not the foreign one
    assert any("another GPU" in m for m in messages)


def test_failed_build_raises(tmp_path, standins):
    standins("10.3.0", build_fails=True)
    tiny_onnx(tmp_path / "model.onnx")
    with pytest.raises(RuntimeError, match="failed to build"):
        build_plan(tmp_path / "model.onnx", plan_precision("10.3.0", "fp32", "fp32"), SHAPES, 1.0, None, **quiet)


# --- build_engines -------------------------------------------------------------------------------------


def test_build_engines_writes_plain_plans_with_sidecars(tmp_path, standins):
    standins("10.3.0")
    folder = _artifact(tmp_path / "art")
    onnx_hash = load_artifact(folder).manifest.files["model.onnx"]

    engines = build_engines(folder, **quiet)
    assert [(e.graph, e.file, e.precision) for e in engines] == [("fused", "model.fp16.engine", "fp16")]
    engine = folder / "model.fp16.engine"
    assert engine.read_bytes() == b"plan:"  # exactly TensorRT's plan: trtexec and Triton load it as it is
    metadata = read_engine_metadata(engine)
    assert metadata["tensorrt_version"] == "10.3.0" and metadata["gpu_name"] == "Fake GPU"
    assert metadata["compute_capability"] == "8.0" and metadata["strongly_typed"]
    assert metadata["profile"] == {"image": {"min": [1, 3, 4, 4], "opt": [1, 3, 4, 4], "max": [8, 3, 4, 4]}}
    assert metadata["onnx_sha256"] == graph_digest({"model.onnx": onnx_hash}, GraphSpec("fused", "model.onnx", (), ()))
    assert read_plan(engine) == b"plan:"
    artifact = load_artifact(folder)  # the runtime accepts it: every file hashed, engines listed
    assert artifact.engines == {"fused": engine}
    assert {"timing.cache", "model.fp16.engine.json"} <= set(artifact.manifest.files)
    assert artifact.manifest.engine_verification["passed"]

    build_engines(folder, **quiet)  # a rebuild replaces, never duplicates
    assert len(load_artifact(folder).manifest.engines) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # no staging folder left behind


def test_a_killed_engine_build_is_cleaned_by_the_next(tmp_path, standins):
    """A --trt build killed mid-way (SIGKILL, OOM) leaves its staged copy; the next build removes it, and a
    running build's copy (its process alive) is left alone."""
    import subprocess

    standins("10.3.0")
    folder = _artifact(tmp_path / "art")
    dead = subprocess.Popen(["true"])
    dead.wait()
    killed = tmp_path / f".art.engines-{dead.pid}-0123abcd"
    running = tmp_path / f".art.engines-{os.getppid()}-4567cdef"
    for staged in (killed, running):
        staged.mkdir()
        (staged / "model.fp16.engine").write_bytes(b"half a plan")
    build_engines(folder, **quiet)
    assert sorted(p.name for p in tmp_path.iterdir()) == [running.name, "art"]


def test_staging_of_a_kind_the_cleanup_does_not_know_is_refused(tmp_path):
    from maskclip_export.exporter import _make_staging

    with pytest.raises(ValueError, match="unknown staging kind"):
        _make_staging(tmp_path / "art", "scratch")
    assert list(tmp_path.iterdir()) == []


def test_engines_and_their_files_are_ordinary_files(tmp_path, standins):
    """Readable by everyone the umask allows, like the ONNX graphs beside them (not mkstemp's 0600)."""
    standins("10.3.0")
    folder = _artifact(tmp_path / "art")
    previous = os.umask(0o022)
    try:
        build_engines(folder, **quiet)
    finally:
        os.umask(previous)
    written = ["model.fp16.engine", "model.fp16.engine.json", "timing.cache", MANIFEST_NAME]
    assert {name: stat.S_IMODE((folder / name).stat().st_mode) for name in written} == dict.fromkeys(written, 0o644)


def test_an_engine_built_from_another_graph_is_refused(tmp_path, standins):
    """The sidecar's onnx_sha256 is enforced: an engine swapped in (and the manifest rehashed) is not run."""
    from maskclip_runtime.detect.detector import Detector

    standins("10.3.0")
    folder = _artifact(tmp_path / "art")
    build_engines(folder, **quiet)
    sidecar = folder / "model.fp16.engine.json"
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "onnx_sha256": "0" * 64}))
    write_manifest(folder, Manifest.from_dict(json.loads((folder / MANIFEST_NAME).read_text())))
    with pytest.raises(ArtifactError):
        Detector(folder, backend="tensorrt", self_check=False)


def test_failed_build_leaves_the_old_artifact_loadable(tmp_path, standins, monkeypatch):
    standins("10.3.0")
    folder = _artifact(tmp_path / "art")
    build_engines(folder, **quiet)
    before = (folder / MANIFEST_NAME).read_bytes()
    standins("10.3.0", build_fails=True)
    with pytest.raises(RuntimeError, match="failed to build"):
        build_engines(folder, "fp16", **quiet)
    assert (folder / MANIFEST_NAME).read_bytes() == before
    assert load_artifact(folder).engines == {"fused": folder / "model.fp16.engine"}  # hashes still match
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_refused_engines_are_never_recorded(tmp_path, standins):
    standins("10.3.0", broken_engines=True)
    folder = _artifact(tmp_path / "art")
    before = (folder / MANIFEST_NAME).read_bytes()
    with pytest.raises(EngineGateFailed, match="mask IoU") as refused:
        build_engines(folder, **quiet)
    assert (folder / MANIFEST_NAME).read_bytes() == before  # so --backend auto cannot pick them
    assert load_artifact(folder).engines == {} and not (folder / "model.fp16.engine").exists()
    failed = refused.value.report_path.parent
    assert failed == tmp_path / "art.failed" and not (failed / MANIFEST_NAME).exists()
    kept = json.loads((failed / "manifest.failed.json").read_text())
    assert [e["file"] for e in kept["engines"]] == ["model.fp16.engine"]
    assert kept["engine_verification"]["passed"] is False
    assert (failed / "model.fp16.engine").is_file() and sidecar_path(failed / "model.fp16.engine").is_file()


def test_build_engines_refuses_impossible_precision(tmp_path, standins):
    standins("11.4.0")
    folder = _artifact(tmp_path / "art", precision="fp32")
    with pytest.raises(PrecisionPlanError, match="export the fp16 graph first"):
        build_engines(folder, "fp16", **quiet)


def test_int8_calibration_cache_is_keyed_by_the_graph(tmp_path, standins):
    record = standins("10.3.0").record
    folder = _artifact(tmp_path / "art", precision="fp32")
    images = _calibration_images(tmp_path / "calib")
    build_engines(folder, "int8", calib_images=images, verify=False, **quiet)
    batches = record["calibration"]
    assert len(batches) == len(images) and batches[0].shape == (1, 3, 4, 4)  # every image, through the GPU copy
    artifact = load_artifact(folder)
    cache_name = calibration_cache_name(artifact.graphs[0], graph_digest(artifact.manifest.files, artifact.graphs[0]))
    assert (folder / cache_name).read_bytes() == b"calibration table"
    assert record["config"].flags == {"INT8", "OBEY"}

    build_engines(folder, "int8", calib_images=images, verify=False, **quiet)
    assert record["calibration"] == "from cache"  # same graph: its scales are reused

    tiny_onnx(folder / "model.onnx", weight=0.5)  # another model in the same folder
    write_manifest(folder, Manifest.from_dict(json.loads((folder / MANIFEST_NAME).read_text())))
    build_engines(folder, "int8", calib_images=images, verify=False, **quiet)
    assert isinstance(record["calibration"], list)  # calibrated afresh, not from the old model's cache
    assert not (folder / cache_name).exists()  # the stale cache is not carried over
