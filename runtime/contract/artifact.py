"""Load an exported artifact folder and refuse anything the runtime cannot trust.

The manifest is the runtime's only source of knowledge about a model (preprocessing, threshold,
graph chain, batch profile), like Ultralytics' embedded metadata: nothing is guessed from file
names. Every listed file is hashed before use, so a half-copied or edited graph fails loudly here
instead of producing plausible-looking but wrong probabilities later.
"""

from __future__ import annotations

import json
import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from .. import __version__
from ..kernel.atomic import write_text_atomic
from ..kernel.hashing import file_sha256
from ..kernel.preprocess import PreprocessSpec
from .engine_header import read_engine_metadata
from .manifest import MANIFEST_NAME, ArtifactError, BatchSpec, GraphSpec, Manifest, ManifestError
from .verdict_calibration import Calibration, CalibrationError


@dataclass(frozen=True)
class Artifact:
    """A verified artifact folder: its parsed manifest, every listed file checked against its hash."""

    dir: Path
    manifest: Manifest

    @property
    def preprocess(self) -> PreprocessSpec:
        return self.manifest.preprocess

    @property
    def threshold(self) -> float:
        return self.manifest.threshold

    @property
    def graphs(self) -> tuple[GraphSpec, ...]:
        return self.manifest.graphs

    @property
    def batch(self) -> BatchSpec:
        return self.manifest.batch

    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    @property
    def precision(self) -> str:
        return self.manifest.precision

    @property
    def calibration(self) -> Calibration | None:
        """Temperature + operating points, when one was attached."""
        return self.manifest.calibration

    @property
    def engines(self) -> dict[str, Path]:
        """Graph name -> TensorRT engine file, for artifacts exported with engines."""
        return {e.graph: self.dir / e.file for e in self.manifest.engines}

    def file(self, name: str) -> Path:
        return self.dir / name

    @property
    def cpu_features(self) -> list[list[str]]:
        """CPU features the graphs' results depend on: each entry lists alternatives, any one suffices."""
        return self.manifest.cpu_features


def load_artifact(path: str | os.PathLike) -> Artifact:
    """Artifact folder, its manifest.json, or an .onnx inside an artifact folder -> verified Artifact."""
    manifest_path = _find_manifest(Path(path))
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{manifest_path}: unreadable manifest ({exc})") from None
    manifest = Manifest.from_dict(data, str(manifest_path))
    _check_package_version(manifest, manifest_path)
    directory = manifest_path.parent
    _check_files(manifest, directory)
    return Artifact(dir=directory, manifest=manifest)


def engine_artifact(engine: str | os.PathLike) -> Artifact:
    """The verified artifact a TensorRT engine file belongs to (`--model model.fp16.engine`).

    The engine's sidecar must be there (what the plan was built for, from which graph: the TensorRT
    backend checks both before it loads a plan); the artifact is the folder it was built in, whose
    manifest lists it by name and hashes it with its sidecar. An engine copied away from its artifact
    lacks the preprocessing, threshold and graph chain it runs with."""
    engine = Path(engine)
    read_engine_metadata(engine)  # a plan without its sidecar is refused here, naming the sidecar
    if not (engine.parent / MANIFEST_NAME).is_file():
        raise ArtifactError(
            f"{engine}: no {MANIFEST_NAME} beside it; an engine runs from the artifact folder it was built in "
            f"(maskclip-export --trt), which holds its preprocessing, threshold and graphs"
        )
    artifact = load_artifact(engine.parent)
    listed = {spec.file for spec in artifact.manifest.engines}
    if engine.name not in listed:
        raise ArtifactError(
            f"{engine}: not an engine of the artifact in {artifact.dir} (its manifest lists "
            f"{', '.join(sorted(listed)) or 'no engines'}); rebuild the engines with maskclip-export --trt"
        )
    return artifact


def write_manifest(directory: Path, manifest: Manifest) -> Manifest:
    """Hash the folder's files into the manifest and write it (atomically); returns what was written."""
    files = {
        path.relative_to(directory).as_posix(): file_sha256(path)
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != MANIFEST_NAME
    }
    manifest = manifest.replace(files=files)
    write_text_atomic(directory / MANIFEST_NAME, json.dumps(manifest.to_dict(), indent=2) + "\n")
    return manifest


def _find_manifest(path: Path) -> Path:
    if not path.exists():
        raise ArtifactError(f"{path}: no such file or folder")
    if path.is_dir():
        candidate = path / MANIFEST_NAME
    elif path.name == MANIFEST_NAME:
        candidate = path
    else:
        # A file inside an artifact folder (e.g. model.onnx) stands for its folder.
        candidate = path.parent / MANIFEST_NAME
    if candidate.is_file():
        return candidate
    what = "ONNX file" if path.suffix == ".onnx" else "path"
    raise ArtifactError(
        f"{path}: {what} without a {MANIFEST_NAME}; the runtime needs an artifact folder written by "
        f"maskclip-export (it records preprocessing, threshold and file hashes)"
    )


def _check_package_version(manifest: Manifest, manifest_path: Path) -> None:
    exported_with = manifest.package_version
    if _major(exported_with) != _major(__version__):
        raise ManifestError(
            f"{manifest_path}: exported with maskclip {exported_with or '?'}, this runtime is {__version__} "
            f"(major versions differ); re-export with a matching maskclip-export"
        )


def _major(version: str) -> str:
    return version.split(".", 1)[0]


def _check_files(manifest: Manifest, directory: Path) -> None:
    files = manifest.files
    if not files:
        raise ManifestError(f"{directory / MANIFEST_NAME}: manifest lists no file hashes")
    referenced = {g.file for g in manifest.graphs} | {e.file for e in manifest.engines}
    unhashed = sorted(str(f) for f in referenced - set(files))
    if unhashed:
        raise ManifestError(f"{directory / MANIFEST_NAME}: files used but not hashed: {', '.join(unhashed)}")
    for graph in manifest.graphs:
        unlisted = sorted(_external_data_files(directory, graph.file) - set(files))
        if unlisted:
            raise ManifestError(
                f"{directory / MANIFEST_NAME}: graph {graph.file} reads external data the manifest does not "
                f"list (so it is never hash-checked): {', '.join(unlisted)}"
            )
    root = directory.resolve()
    paths = {}
    for name in files:
        file = (directory / name).resolve()
        # A manifest must not point outside its folder (e.g. "../../etc/passwd").
        if root not in file.parents:
            raise ArtifactError(f"{directory / MANIFEST_NAME}: listed file {name!r} lies outside the artifact")
        if not file.is_file():
            raise ArtifactError(f"{directory}: missing artifact file: {name}")
        paths[name] = file
    # hashlib releases the GIL on large blocks, so a split artifact's files hash in parallel.
    with ThreadPoolExecutor(max_workers=min(4, len(paths))) as pool:
        digests = dict(zip(paths, pool.map(file_sha256, paths.values()), strict=True))
    for name, expected in files.items():
        if digests[name] != str(expected).lower():
            raise ArtifactError(f"{directory}: tampered or corrupted: {name} (sha256 differs from the manifest)")


# How an ONNX TensorProto names an external-data file: the entry key "location" (field 1, 8 bytes) then
# its value (field 2, length-prefixed). Found by scanning the bytes, so the runtime needs no onnx package.
_EXTERNAL_LOCATION = b"\x0a\x08location\x12"


def _external_data_files(directory: Path, graph_file: str) -> set[str]:
    """Files a graph reads its weights from (relative to the artifact folder), plus an unlisted
    exporter-style "<graph>.data" beside it: either must be listed and hashed like the graph. An OpenVINO IR
    (.xml) reads its .bin."""
    graph = directory / graph_file
    if graph.suffix == ".xml":  # an OpenVINO IR reads its weights from the .bin beside it, nothing else
        return {Path(graph_file).with_suffix(".bin").as_posix()}
    found = set()
    conventional = f"{graph_file}.data"
    if (directory / conventional).exists():
        found.add(conventional)
    try:
        with open(graph, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            at = data.find(_EXTERNAL_LOCATION)
            while at != -1:
                start = at + len(_EXTERNAL_LOCATION)
                length, start = _varint(data, start)
                name = bytes(data[start : start + length]).decode("utf-8", "surrogateescape")
                found.add((Path(graph_file).parent / name).as_posix())
                at = data.find(_EXTERNAL_LOCATION, start + length)
    except (OSError, ValueError):  # missing or empty graph: reported by the file checks
        pass
    return found


def _varint(data, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while at < len(data):
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if byte < 0x80:
            break
        shift += 7
    return value, at


def attach_calibration(artifact_dir: str | os.PathLike, record: Calibration, force: bool = False) -> Path:
    """Store a record in an existing artifact's manifest (atomically) without re-exporting it.

    The artifact is verified first; a record fitted on a different model, or naming none, is refused
    unless `force`, which records the model it was accepted for. Returns the manifest path.
    """
    artifact = load_artifact(artifact_dir)
    problem = record.model_problem(artifact.model_id)
    if problem and not force:
        raise CalibrationError(f"{artifact.dir}: {problem} (use --force to attach anyway)")
    if record.check is not None and record.check.get("passed") is not True and not force:
        failures = "; ".join(map(str, record.check.get("problems", []))) or "no reason recorded"
        raise CalibrationError(f"the calibration record failed its check ({failures}); use --force to attach anyway")
    accepted = replace(record, accepted_for=artifact.model_id if problem else None)
    write_manifest(artifact.dir, artifact.manifest.replace(calibration=accepted))
    return artifact.dir / MANIFEST_NAME
