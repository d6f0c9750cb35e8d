"""Load an exported artifact folder and refuse anything the runtime cannot trust.

The manifest is the runtime's only source of knowledge about a model (preprocessing, threshold,
graph chain, batch profile), like Ultralytics' embedded metadata: nothing is guessed from file
names. Every listed file is hashed before use, so a half-copied or edited graph fails loudly here
instead of producing plausible-looking but wrong probabilities later.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .calibration import Calibration, CalibrationError
from .errors import InputError
from .preprocess import LEGACY_RESIZE, RESIZE_METHODS, PreprocessSpec

FORMAT = "maskclip-artifact"
SUPPORTED_FORMAT_VERSIONS = (1,)
MANIFEST_NAME = "manifest.json"
FINAL_OUTPUTS = ("logits", "fake_prob", "mask")


class ArtifactError(InputError, ValueError):
    """An artifact that cannot be used; the message says why and, where possible, what to do."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple  # ints, or strings for symbolic dims such as "batch"
    dtype: str

    @classmethod
    def from_dict(cls, d: dict) -> TensorSpec:
        return cls(name=d["name"], shape=tuple(d.get("shape", ())), dtype=d.get("dtype", "float32"))


@dataclass(frozen=True)
class GraphSpec:
    """One graph of the chain: its ONNX file and the tensors it consumes and produces."""

    name: str
    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @classmethod
    def from_dict(cls, d: dict) -> GraphSpec:
        return cls(
            name=d["name"],
            file=d["file"],
            inputs=tuple(TensorSpec.from_dict(t) for t in d.get("inputs", ())),
            outputs=tuple(TensorSpec.from_dict(t) for t in d.get("outputs", ())),
        )


@dataclass(frozen=True)
class BatchSpec:
    """The batch sizes the graphs accept: a dynamic range (min..max, opt preferred), or one fixed size."""

    dynamic: bool
    min: int
    opt: int
    max: int

    @classmethod
    def from_dict(cls, d: dict | None) -> BatchSpec:
        if not d:
            return cls(dynamic=False, min=1, opt=1, max=1)
        if d.get("dynamic", False):
            low, high = int(d.get("min", 1)), int(d.get("max", d.get("opt", 1)))
            return cls(dynamic=True, min=low, opt=int(d.get("opt", low)), max=high)
        size = int(d["size"])
        return cls(dynamic=False, min=size, opt=size, max=size)


@dataclass(frozen=True)
class Artifact:
    """A verified artifact: the manifest plus the parsed parts the runtime uses."""

    dir: Path
    manifest: dict
    preprocess: PreprocessSpec
    threshold: float
    graphs: tuple[GraphSpec, ...]
    batch: BatchSpec
    model_id: str
    precision: str
    calibration: Calibration | None = None  # temperature + operating points, when one was attached

    @property
    def engines(self) -> dict[str, Path]:
        """Graph name -> TensorRT engine file, for artifacts exported with engines."""
        return {e["graph"]: self.dir / e["file"] for e in self.manifest.get("engines", ())}

    def file(self, name: str) -> Path:
        return self.dir / name

    @property
    def cpu_features(self) -> list[list[str]]:
        """CPU features the graphs' results depend on: each entry lists alternatives, any one suffices.

        Int8 artifacts from before the record existed quantised weights to the full 8 bits, which
        ONNX Runtime's x86 kernels saturate on CPUs without VNNI (AVX2 alone)."""
        int8 = self.manifest.get("int8")
        if not int8:
            return []
        if "cpu_features" in int8:
            return [list(alternatives) for alternatives in int8["cpu_features"]]
        return [["avx512_vnni", "avx_vnni"]]


def load_artifact(path: str | os.PathLike) -> Artifact:
    """Artifact folder, its manifest.json, or an .onnx inside an artifact folder -> verified Artifact."""
    manifest_path = _find_manifest(Path(path))
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{manifest_path}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{manifest_path}: manifest is not a JSON object")
    _check_format(manifest, manifest_path)
    problem = manifest_problem(manifest)
    if problem:
        raise ArtifactError(f"{manifest_path}: invalid manifest: {problem}")
    directory = manifest_path.parent
    _check_files(manifest, directory)
    calibration = _parse_calibration(manifest, manifest_path)
    try:
        return Artifact(
            dir=directory,
            manifest=manifest,
            preprocess=PreprocessSpec.from_dict(manifest["preprocess"]),
            threshold=float(manifest.get("threshold", 0.5)),
            graphs=_parse_graphs(manifest),
            batch=BatchSpec.from_dict(manifest.get("batch")),
            model_id=str(manifest.get("model", {}).get("model_id", "unknown")),
            precision=str(manifest.get("precision", "unknown")),
            calibration=calibration,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{manifest_path}: malformed manifest ({type(exc).__name__}: {exc})") from None


def _parse_calibration(manifest: dict, manifest_path: Path) -> Calibration | None:
    if manifest.get("calibration") is None:
        return None
    try:
        return Calibration.from_dict(manifest["calibration"], f"{manifest_path} calibration")
    except CalibrationError as exc:
        raise ArtifactError(str(exc)) from None


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


def _check_format(manifest: dict, manifest_path: Path) -> None:
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{manifest_path}: not a MaskCLIP artifact manifest (format={manifest.get('format')!r})")
    version = manifest.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise ArtifactError(
            f"{manifest_path}: unknown artifact format_version {version!r} (this runtime reads "
            f"{', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}); upgrade maskclip or re-export"
        )
    exported_with = str(manifest.get("package_version", ""))
    if _major(exported_with) != _major(__version__):
        raise ArtifactError(
            f"{manifest_path}: exported with maskclip {exported_with or '?'}, this runtime is {__version__} "
            f"(major versions differ); re-export with a matching maskclip-export"
        )


def _major(version: str) -> str:
    return version.split(".", 1)[0]


def _check_files(manifest: dict, directory: Path) -> None:
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ArtifactError(f"{directory / MANIFEST_NAME}: manifest lists no file hashes")
    referenced = {g.get("file") for g in manifest.get("graphs", ())} | {
        e.get("file") for e in manifest.get("engines", ())
    }
    unhashed = sorted(str(f) for f in referenced - set(files))
    if unhashed:
        raise ArtifactError(f"{directory / MANIFEST_NAME}: files used but not hashed: {', '.join(unhashed)}")
    for graph in manifest.get("graphs", ()):
        unlisted = sorted(_external_data_files(directory, graph["file"]) - set(files))
        if unlisted:
            raise ArtifactError(
                f"{directory / MANIFEST_NAME}: graph {graph['file']} reads external data the manifest does not "
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


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count(value, least: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _batch_problem(batch) -> str | None:
    if batch is None:
        return None
    if not isinstance(batch, dict):
        return f"batch must be an object, got {batch!r}"
    if batch.get("dynamic", False):
        sizes = {key: batch.get(key, 1) for key in ("min", "opt", "max")}
        if not all(_count(v) for v in sizes.values()) or not sizes["min"] <= sizes["opt"] <= sizes["max"]:
            return f"batch min/opt/max must be integers with 1 <= min <= opt <= max, got {sizes}"
    elif not _count(batch.get("size")):
        return f"batch.size must be an integer >= 1, got {batch.get('size')!r}"
    return None


_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def manifest_problem(manifest: dict) -> str | None:
    """The first value the runtime cannot use, in words ("preprocess.std must be ..."); None if all are sound.

    Checked on load, so a NaN, zero or wrongly typed value is refused here instead of crashing mid-run
    or turning every answer into NaN. Keys this runtime does not know are left alone."""
    pre = manifest.get("preprocess")
    if not isinstance(pre, dict):
        return "preprocess must be an object"
    mean, std = pre.get("mean"), pre.get("std")
    checks = [
        (_count(pre.get("size")), f"preprocess.size must be an integer >= 1, got {pre.get('size')!r}"),
        (
            pre.get("resize", LEGACY_RESIZE) in RESIZE_METHODS and pre.get("resample", "bilinear") == "bilinear",
            f"preprocess.resize must be one of {', '.join(RESIZE_METHODS)} (older manifests: resample bilinear)",
        ),
        (
            isinstance(mean, list) and len(mean) == 3 and all(_finite(v) and 0.0 <= v <= 1.0 for v in mean),
            f"preprocess.mean must be 3 numbers in [0, 1], got {mean!r}",
        ),
        (
            isinstance(std, list) and len(std) == 3 and all(_finite(v) and v > 0.0 for v in std),
            f"preprocess.std must be 3 finite numbers > 0, got {std!r}",
        ),
        (
            _finite(pre.get("scale", 1.0)) and pre.get("scale", 1.0) > 0,
            f"preprocess.scale must be a finite number > 0, got {pre.get('scale')!r}",
        ),
        (
            pre.get("channel_order", "RGB") == "RGB",
            f"preprocess.channel_order must be RGB, got {pre.get('channel_order')!r}",
        ),
        (pre.get("layout", "NCHW") == "NCHW", f"preprocess.layout must be NCHW, got {pre.get('layout')!r}"),
        (pre.get("dtype", "float32") == "float32", f"preprocess.dtype must be float32, got {pre.get('dtype')!r}"),
        (
            _finite(manifest.get("threshold", 0.5)) and 0.0 <= manifest.get("threshold", 0.5) <= 1.0,
            f"threshold must be a number in [0, 1], got {manifest.get('threshold')!r}",
        ),
        (
            isinstance(manifest.get("graphs"), list)
            and all(
                isinstance(g, dict) and isinstance(g.get("name"), str) and isinstance(g.get("file"), str)
                for g in manifest["graphs"]
            ),
            "graphs must be a list of objects with a name and a file",
        ),
        (
            all(
                isinstance(name, str) and isinstance(digest, str) and _SHA256.fullmatch(digest)
                for name, digest in manifest.get("files", {}).items()
            )
            if isinstance(manifest.get("files"), dict)
            else True,
            "files must map file names to sha256 hex digests",
        ),
        (
            isinstance(manifest.get("engines", []), list)
            and all(isinstance(e, dict) for e in manifest.get("engines", [])),
            "engines must be a list of objects",
        ),
    ]
    problem = next((message for ok, message in checks if not ok), None)
    return problem or _batch_problem(manifest.get("batch"))


# How an ONNX TensorProto names an external-data file: the entry key "location" (field 1, 8 bytes) then
# its value (field 2, length-prefixed). Found by scanning the bytes, so the runtime needs no onnx package.
_EXTERNAL_LOCATION = b"\x0a\x08location\x12"


def _external_data_files(directory: Path, graph_file: str) -> set[str]:
    """Files a graph reads its weights from (relative to the artifact folder), plus an unlisted
    exporter-style "<graph>.data" beside it: either must be listed and hashed like the graph."""
    graph = directory / graph_file
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


def _parse_graphs(manifest: dict) -> tuple[GraphSpec, ...]:
    graphs = tuple(GraphSpec.from_dict(g) for g in manifest["graphs"])
    if not graphs:
        raise ValueError("no graphs listed")
    produced = {"image"}
    for graph in graphs:
        missing = [t.name for t in graph.inputs if t.name not in produced]
        if missing:
            raise ValueError(f"graph {graph.name!r} needs {missing}, produced by no earlier graph")
        produced |= {t.name for t in graph.outputs}
    absent = [name for name in ("fake_prob", "mask") if name not in produced]
    if absent:
        raise ValueError(f"no graph produces {absent}")
    return graphs


# A file is hashed once per process: (path, device, inode, size, mtime, ctime) -> sha256. Only files
# unchanged for SETTLED_NS are cached: timestamps tick coarsely (milliseconds), so an edit made in the
# same tick as a fresh export could otherwise keep the same key and slip past the check.
_HASH_CACHE: dict[tuple, str] = {}
SETTLED_NS = 2_000_000_000


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex of a file, read in 1 MiB blocks; cached per process for files at rest."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    digest = _HASH_CACHE.get(key)
    if digest is None:
        digest = _hash_file(path)
        if time.time_ns() - max(stat.st_mtime_ns, stat.st_ctime_ns) > SETTLED_NS:
            _HASH_CACHE[key] = digest
    return digest


def _hash_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
