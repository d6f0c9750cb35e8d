"""Artifact loading: what is accepted, and each way an artifact is refused."""

from __future__ import annotations

import hashlib
import json
import shutil

import onnx
import pytest
from standin_artifact import SIZE, build_standin_artifact, read_manifest, write_manifest

from maskclip_runtime import __version__
from maskclip_runtime.contract.artifact import ArtifactError, load_artifact
from maskclip_runtime.contract.manifest import MANIFEST_NAME, Manifest, ManifestError, ModelIdentity
from maskclip_runtime.detect.detector import DEMO_DIR, Detector
from maskclip_runtime.kernel import hashing as hashing_module
from maskclip_runtime.kernel.hashing import file_sha256


@pytest.fixture
def artifact(tmp_path):
    return build_standin_artifact(tmp_path / "artifact", "split", batch={"dynamic": False, "size": 2})


def test_loads_folder_manifest_and_member_file(artifact):
    for path in (artifact, artifact / "manifest.json", artifact / "heads.onnx"):
        loaded = load_artifact(path)
        assert loaded.dir == artifact
        assert loaded.model_id == "standin-split-fp32-split"  # version 1: its id + precision + topology
        assert loaded.preprocess.size == SIZE
        assert loaded.threshold == 0.5
        assert [g.name for g in loaded.graphs] == ["features", "heads"]
        assert loaded.graphs[1].inputs[0].name == "feat"
        assert (loaded.batch.dynamic, loaded.batch.max) == (False, 2)
        assert loaded.engines == {}


def test_tampered_file_is_refused(artifact):
    data = bytearray((artifact / "heads.onnx").read_bytes())
    data[-1] ^= 0xFF
    (artifact / "heads.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"tampered or corrupted: heads\.onnx"):
        load_artifact(artifact)
    with pytest.raises(ArtifactError, match="tampered"):
        Detector(artifact)


def test_onnx_without_manifest_is_refused_with_export_hint(artifact, tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(artifact / "heads.onnx", loose / "model.onnx")
    for path in (loose / "model.onnx", loose):
        with pytest.raises(ArtifactError, match="without a manifest.json.*maskclip-export"):
            load_artifact(path)


def test_missing_path_is_refused(tmp_path):
    with pytest.raises(ArtifactError, match="no such file"):
        load_artifact(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format_version": 3}, "unknown artifact format_version 3"),
        ({"format": "something-else"}, "not a MaskCLIP artifact"),
        ({"package_version": f"{int(__version__.split('.')[0]) + 1}.0.0"}, "major versions differ"),
        ({"files": {}}, "lists no file hashes"),
    ],
)
def test_incompatible_manifest_is_refused(artifact, change, message):
    write_manifest(artifact, {**read_manifest(artifact), **change})
    with pytest.raises(ArtifactError, match=message):
        load_artifact(artifact)


def test_graph_file_missing_from_folder_is_refused(artifact):
    (artifact / "features.onnx").unlink()
    with pytest.raises(ArtifactError, match=r"missing artifact file: features\.onnx"):
        load_artifact(artifact)


def test_unhashed_graph_file_is_refused(artifact):
    manifest = read_manifest(artifact)
    del manifest["files"]["heads.onnx"]
    write_manifest(artifact, manifest)
    with pytest.raises(ArtifactError, match=r"not hashed: heads\.onnx"):
        load_artifact(artifact)


def test_listed_file_outside_the_folder_is_refused(artifact, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("x")
    manifest = read_manifest(artifact)
    manifest["files"]["../secret.txt"] = hashlib.sha256(b"x").hexdigest()
    write_manifest(artifact, manifest)
    with pytest.raises(ArtifactError, match="outside the artifact"):
        load_artifact(artifact)


def test_broken_chain_is_refused(artifact):
    manifest = read_manifest(artifact)
    manifest["graphs"] = manifest["graphs"][1:]  # heads alone: nothing produces "feat"
    write_manifest(artifact, manifest)
    with pytest.raises(ArtifactError, match="needs.*feat.*produced by no earlier graph"):
        load_artifact(artifact)


def test_unreadable_manifest_is_refused(artifact):
    (artifact / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable manifest"):
        load_artifact(artifact)


def test_file_sha256_matches_hashlib(artifact):
    path = artifact / "features.onnx"
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_hashes_are_cached_only_for_files_at_rest(artifact, monkeypatch):
    hashed = []
    real_hash = hashing_module._hash_file
    monkeypatch.setattr(hashing_module, "_hash_file", lambda path: hashed.append(path) or real_hash(path))
    monkeypatch.setattr(hashing_module, "_HASH_CACHE", {})
    load_artifact(artifact)
    load_artifact(artifact)
    assert len(hashed) == 4  # just written: hashed at every load
    monkeypatch.setattr(hashing_module, "SETTLED_NS", -1)  # now treat the files as long at rest
    hashed.clear()
    load_artifact(artifact)
    load_artifact(artifact)
    assert len(hashed) == 2  # once per file
    with open(artifact / "heads.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ArtifactError, match=r"tampered or corrupted: heads\.onnx"):
        load_artifact(artifact)  # the edit changed the file's key: hashed again


# ---- manifest values are validated on load (issue 11)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"preprocess": {"std": [0.0, 0.26, 0.27]}}, "preprocess.std"),
        ({"preprocess": {"std": [float("nan"), 0.26, 0.27]}}, "preprocess.std"),
        ({"preprocess": {"mean": [0.5, 0.5, 7.0]}}, "preprocess.mean"),
        ({"preprocess": {"mean": [0.5, 0.5]}}, "preprocess.mean"),
        ({"preprocess": {"size": "32"}}, "preprocess.size"),
        ({"preprocess": {"size": 0}}, "preprocess.size"),
        ({"preprocess": {"resize": "magic"}}, "preprocess.resize"),
        ({"preprocess": {"resample": "bicubic"}}, "preprocess.resize"),
        ({"preprocess": {"scale": float("inf")}}, "preprocess.scale"),
        ({"threshold": float("nan")}, "threshold"),
        ({"threshold": 1.5}, "threshold"),
        ({"batch": {"dynamic": True, "min": 1, "opt": 1, "max": 0}}, "batch"),
        ({"batch": {"dynamic": False, "size": 0}}, "batch.size"),
        ({"batch": {"dynamic": False, "size": "2"}}, "batch.size"),
        ({"files": {"features.onnx": "not-a-digest", "heads.onnx": "0" * 64}}, "files"),
    ],
)
def test_unusable_manifest_values_are_refused_on_load(artifact, change, message):
    manifest = read_manifest(artifact)
    if "preprocess" in change:
        manifest["preprocess"].update(change["preprocess"])
    else:
        manifest.update(change)
    write_manifest(artifact, manifest)
    with pytest.raises(ArtifactError, match=f"invalid manifest: {message}"):
        load_artifact(artifact)


def _with_external_data(artifact, location: str) -> None:
    """Re-save heads.onnx with its weights in an external file; the manifest hashes the new graph only."""
    import onnx

    model = onnx.load(str(artifact / "heads.onnx"))
    onnx.save_model(
        model, str(artifact / "heads.onnx"), save_as_external_data=True, location=location, size_threshold=0
    )
    manifest = read_manifest(artifact)
    manifest["files"]["heads.onnx"] = hashlib.sha256((artifact / "heads.onnx").read_bytes()).hexdigest()
    write_manifest(artifact, manifest)


@pytest.mark.parametrize("location", ["heads.onnx.data", "weights.bin"])
def test_external_data_the_manifest_does_not_list_is_refused(artifact, location):
    _with_external_data(artifact, location)
    with pytest.raises(ArtifactError, match=f"external data.*{location}"):
        load_artifact(artifact)
    manifest = read_manifest(artifact)
    manifest["files"][location] = hashlib.sha256((artifact / location).read_bytes()).hexdigest()
    write_manifest(artifact, manifest)
    Detector(artifact).close()  # listed and hashed: accepted, and it runs
    (artifact / location).write_bytes((artifact / location).read_bytes()[:-1] + b"\1")
    with pytest.raises(ArtifactError, match=f"tampered or corrupted: {location}"):
        load_artifact(artifact)


def test_an_unlisted_data_file_beside_a_graph_is_refused(artifact):
    (artifact / "features.onnx.data").write_bytes(b"\0" * 16)
    with pytest.raises(ArtifactError, match=r"features\.onnx\.data"):
        load_artifact(artifact)


def test_the_precision_is_read_from_the_manifest(artifact):
    assert load_artifact(artifact).precision == "fp32"


def _manifest_with(artifact, **changes) -> dict:
    return {**read_manifest(artifact), **changes}


@pytest.mark.parametrize(
    "broken",
    [
        lambda m: {k: v for k, v in m.items() if k != "precision"},
        lambda m: {**m, "precision": "bf8"},  # not a row of the precision table
        lambda m: {**m, "topology": "sideways"},
        lambda m: {**m, "model": {k: v for k, v in m["model"].items() if k != "config_name"}},
        lambda m: {**m, "model": {**m["model"], "model_id": ""}},
        lambda m: {**m, "graphs": [{**g, "inputs": [{**t, "shape": [2, 3, SIZE + 1, SIZE]} for t in g["inputs"]]}
                                   if g["name"] == "features" else g for g in m["graphs"]]},  # fmt: skip
        lambda m: {**m, "engines": [{"file": "x.engine", "graph": "heads", "precision": "int8-cpu",
                                     "tensorrt_version": "10", "gpu_name": "g", "compute_capability": "9.0",
                                     "profile": {}, "build_seconds": 1.0}]},  # fmt: skip
        lambda m: {**m, "format_version": 2},  # version 2 requires the full weights digest
    ],
    ids=["no-precision", "unknown-precision", "unknown-topology", "no-config-name", "empty-model-id",
         "image-shape-vs-preprocess", "engine-precision-tensorrt-cannot-build", "v2-without-weights-digest"],
)  # fmt: skip
def test_manifest_breaking_the_contract_is_refused_with_manifest_error(artifact, broken):
    write_manifest(artifact, broken(read_manifest(artifact)))
    with pytest.raises(ManifestError):
        load_artifact(artifact)


def test_version_2_model_id_must_be_what_weights_precision_and_topology_make(artifact):
    digest = "ab" * 32
    model = {"config_name": "standin", "config": {}, "weights_sha256": digest, "source": "test"}
    identity = ModelIdentity("standin", digest, "fp32", "split")
    write_manifest(artifact, _manifest_with(artifact, format_version=2, model={**model, "model_id": identity.model_id}))
    assert load_artifact(artifact).manifest.identity == identity
    stale = ModelIdentity("standin", digest, "fp16", "split").model_id  # an id recorded for another precision
    write_manifest(artifact, _manifest_with(artifact, format_version=2, model={**model, "model_id": stale}))
    with pytest.raises(ManifestError):
        load_artifact(artifact)


def test_manifest_round_trips_through_the_contract(artifact):
    data = read_manifest(artifact)
    manifest = Manifest.from_dict(data)
    assert Manifest.from_dict(manifest.to_dict()) == manifest
    written = manifest.to_dict()  # plus the defaults of the fields the stand-in leaves out
    assert {key: written[key] for key in data} == data


def test_the_shipped_version_1_demo_manifest_round_trips_unchanged():
    data = json.loads((DEMO_DIR / MANIFEST_NAME).read_text())
    assert json.loads(json.dumps(Manifest.from_dict(data).to_dict())) == data


def test_one_identity_differs_in_each_of_weights_precision_and_topology():
    base = ModelIdentity("tiny", "0" * 64, "fp32", "fused")
    others = [
        ModelIdentity("tiny", "1" * 64, "fp32", "fused"),
        ModelIdentity("tiny", "0" * 64, "fp16", "fused"),
        ModelIdentity("tiny", "0" * 64, "fp32", "split"),
    ]
    assert len({base.model_id, *(o.model_id for o in others)}) == 4


def test_standin_artifacts_are_valid_onnx(tmp_path):
    for topology in ("fused", "split"):
        folder = build_standin_artifact(tmp_path / topology, topology)
        manifest = read_manifest(folder)
        for graph in manifest["graphs"]:
            onnx.checker.check_model(str(folder / graph["file"]))
        assert set(manifest["files"]) == {g["file"] for g in manifest["graphs"]}
