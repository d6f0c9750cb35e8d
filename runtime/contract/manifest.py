"""The artifact contract: what maskclip-export writes into manifest.json and the runtime reads back.

This module is its one owner: the manifest's types, key names, format version, validation and the
one model identity. Export builds a `Manifest` and writes it through `Manifest.to_dict`; the
runtime, Triton and the benchmarks read its typed fields; nobody else reads raw keys.

The model identity is the weights digest (sha256 over the tensors' names, dtypes, shapes and bytes:
maskclip_core.checkpoint.weights_digest), the precision and the topology, so the fp32 and fp16
artifacts of one checkpoint are different models, and a checkpoint exported from its file and from
memory is the same one.

Format versions: 1 recorded `model.model_id` as "<config>-<weights digest[:12]>" (weights only); 2
records the full `model.weights_sha256`, and `model.model_id` carries precision and topology. A
version 1 manifest is read with its id extended by its precision and topology, so ids compare
across versions; it is written back as version 1.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field, replace

from ..errors import InputError
from ..kernel.preprocess import LEGACY_RESIZE, RESIZE_METHODS, PreprocessSpec
from .chain import chain_problem
from .engine_header import TRT_COMPAT, engine_compat
from .precision_table import DEFAULT_PRECISION, PRECISIONS
from .verdict_calibration import Calibration, CalibrationError

FORMAT = "maskclip-artifact"
FORMAT_VERSION = 2
SUPPORTED_FORMAT_VERSIONS = (1, 2)
MANIFEST_NAME = "manifest.json"
FINAL_OUTPUTS = ("logits", "fake_prob", "mask")
BATCH_AXIS = "batch"  # the symbolic leading dimension of a dynamic-batch graph
# Older int8 artifacts quantised weights to the full 8 bits, which ONNX Runtime's x86 kernels saturate on
# CPUs without VNNI (AVX2 alone): without their own record they need one of these.
LEGACY_INT8_CPU_FEATURES = (("avx512_vnni", "avx_vnni"),)


class ArtifactError(InputError, ValueError):
    """An artifact that cannot be used; the message says why and, where possible, what to do."""


class ManifestError(ArtifactError):
    """A manifest that breaks the contract: wrong format, a missing, malformed or inconsistent field."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple = ()  # ints, or strings for symbolic dims such as "batch"; () = not recorded
    dtype: str = "float32"

    @classmethod
    def from_dict(cls, d: dict) -> TensorSpec:
        return cls(name=d["name"], shape=tuple(d.get("shape", ())), dtype=d.get("dtype", "float32"))

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class GraphSpec:
    """One graph of the chain: its ONNX file and the tensors it consumes and produces."""

    name: str
    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @classmethod
    def named(cls, name: str, file: str, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> GraphSpec:
        """A graph known by its tensor names only (before export measured their shapes)."""
        return cls(name, file, tuple(map(TensorSpec, inputs)), tuple(map(TensorSpec, outputs)))

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    @classmethod
    def from_dict(cls, d: dict) -> GraphSpec:
        return cls(
            name=d["name"],
            file=d["file"],
            inputs=tuple(TensorSpec.from_dict(t) for t in d.get("inputs", ())),
            outputs=tuple(TensorSpec.from_dict(t) for t in d.get("outputs", ())),
        )

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "file": self.file,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }


# The graph chain of each topology (names, files, tensors), built by the exporter's wrappers, run by the runtime.
TOPOLOGIES: dict[str, tuple[GraphSpec, ...]] = {
    "fused": (GraphSpec.named("fused", "model.onnx", ("image",), FINAL_OUTPUTS),),
    "split": (
        GraphSpec.named("clip", "clip.onnx", ("image",), ("clip_cls", "clip_maps")),
        GraphSpec.named("trunk", "trunk.onnx", ("image", "clip_maps"), ("features",)),
        GraphSpec.named("heads", "heads.onnx", ("features", "clip_cls"), FINAL_OUTPUTS),
    ),
    # Verdict first, mask only where needed: the runtime may run `localise` on a sub-batch (or not at all).
    "cascade": (
        GraphSpec.named("screen", "screen.onnx", ("image",), ("logits", "fake_prob", "clip_maps")),
        GraphSpec.named("localise", "localise.onnx", ("image", "clip_maps"), ("mask",)),
    ),
}


@dataclass(frozen=True)
class BatchSpec:
    """The batch sizes the graphs accept: a dynamic range (min..max, opt preferred), or one fixed size."""

    dynamic: bool
    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"batch needs 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}")

    @classmethod
    def fixed(cls, size: int) -> BatchSpec:
        return cls(dynamic=False, min=size, opt=size, max=size)

    @classmethod
    def up_to(cls, size: int) -> BatchSpec:
        """Dynamic from 1 to `size` (the TensorRT profile max), tuned for single images."""
        return cls(dynamic=True, min=1, opt=1, max=size)

    @property
    def size(self) -> int:
        """The largest batch the graphs take (the only one, when fixed)."""
        return self.max

    @property
    def dim(self) -> int | str:
        """The graphs' leading dimension: the symbol when dynamic, else the fixed size."""
        return BATCH_AXIS if self.dynamic else self.max

    @classmethod
    def from_dict(cls, d: dict | None) -> BatchSpec:
        if not d:
            return cls.fixed(1)
        if d.get("dynamic", False):
            low, high = int(d.get("min", 1)), int(d.get("max", d.get("opt", 1)))
            return cls(dynamic=True, min=low, opt=int(d.get("opt", low)), max=high)
        return cls.fixed(int(d["size"]))

    def to_dict(self) -> dict:
        if self.dynamic:
            return {"dynamic": True, "min": self.min, "opt": self.opt, "max": self.max}
        return {"dynamic": False, "size": self.max}


@dataclass(frozen=True)
class EngineSpec:
    """One TensorRT engine of the artifact (its sidecar holds the full build record)."""

    file: str
    graph: str
    precision: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    profile: dict  # input name -> {"min", "opt", "max"} shapes
    build_seconds: float
    compat: tuple[str, ...] = ()  # portability it was built with (engine_header.TRT_COMPAT); () = this GPU only

    @classmethod
    def from_dict(cls, d: dict) -> EngineSpec:
        return cls(
            **{name: d[name] for name in cls.__dataclass_fields__ if name != "compat"},
            compat=tuple(compat) if isinstance(compat := d.get("compat", ()), (list, tuple)) else (str(compat),),
        )

    def to_dict(self) -> dict:
        return {
            **{name: getattr(self, name) for name in self.__dataclass_fields__ if name != "compat"},
            **({"compat": list(self.compat)} if self.compat else {}),
        }

    @property
    def max_batch(self) -> int:
        return max(shape["max"][0] for shape in self.profile.values())


@dataclass(frozen=True)
class ModelCard:
    """What the model is, said wherever its answers are shown: a demonstration model or not, what it was
    trained on, and how training images reached it (RESOLUTION_POLICIES)."""

    demo: bool
    trained_on: str
    resolution: str

    def __post_init__(self):
        if not isinstance(self.demo, bool) or not isinstance(self.trained_on, str):
            raise TypeError("card.demo must be true or false and card.trained_on text")
        if self.resolution not in RESOLUTION_POLICIES:
            raise ValueError(f"card.resolution must be one of {', '.join(RESOLUTION_POLICIES)}")

    @property
    def native_crops(self) -> bool:
        """Trained on crops at the photos' own resolution: what --tiles feeds the model."""
        return self.resolution == "native-crops"

    def summary(self) -> str:
        kind = "demonstration model" if self.demo else "model"
        return f"{kind} trained on {self.trained_on} ({RESOLUTION_POLICIES[self.resolution]})"

    def to_dict(self) -> dict:
        return asdict(self)


# How training images reached the model -> in words.
RESOLUTION_POLICIES = {
    "resized": "whole images resized to the input size, no native-resolution crops",
    "native-crops": "crops at the photos' own resolution",
}


# The embedded demo model's card (runtime/demo/manifest.json holds the same; export writes it for the demo).
DEMO_CARD = ModelCard(
    demo=True,
    trained_on="synthetic proxy edits (maskclip-synth), not OpenSDI or real generator output",
    resolution="resized",
)


@dataclass(frozen=True)
class ModelIdentity:
    """What makes two artifacts the same model: weights, precision and topology."""

    config_name: str
    weights_sha256: str  # a version 1 manifest recorded only its first 12 digits
    precision: str
    topology: str

    @property
    def model_id(self) -> str:
        return f"{self.config_name}-{self.weights_sha256[:12]}-{self.precision}-{self.topology}"

    @property
    def weights_id(self) -> str:
        """The weights alone, as version 1 manifests named a model."""
        return f"{self.config_name}-{self.weights_sha256[:12]}"


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest.json. Reports (verification, self_check, int8, versions) stay plain records."""

    identity: ModelIdentity
    config: dict  # the model config (maskclip_core's MaskCLIPConfig.to_dict())
    source: str  # checkpoint path, "embedded demo model", "random init (tiny)"
    preprocess: PreprocessSpec
    threshold: float
    batch: BatchSpec
    graphs: tuple[GraphSpec, ...]
    package_version: str
    versions: dict = field(default_factory=dict)
    fp32_ops: tuple[str, ...] = ()  # ONNX op types kept in fp32 by the precision conversion
    verification: dict = field(default_factory=lambda: {"skipped": True, "passed": None})
    self_check: dict | None = None
    int8: dict | None = None
    calibration: Calibration | None = None
    card: ModelCard | None = None  # None: an artifact exported before cards, or from a model nobody described
    engines: tuple[EngineSpec, ...] = ()
    engine_verification: dict | None = None
    export_seconds: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)  # relative path -> sha256 hex of every file but the manifest
    format_version: int = FORMAT_VERSION
    unknown: dict = field(default_factory=dict)  # keys this runtime does not know, carried through rewrites

    @property
    def precision(self) -> str:
        return self.identity.precision

    @property
    def topology(self) -> str:
        return self.identity.topology

    @property
    def model_id(self) -> str:
        return self.identity.model_id

    @property
    def cpu_features(self) -> list[list[str]]:
        """CPU features the graphs' results depend on: each entry lists alternatives, any one suffices."""
        if not self.int8:
            return []
        return [list(alternatives) for alternatives in self.int8.get("cpu_features", LEGACY_INT8_CPU_FEATURES)]

    @property
    def gate_passed(self) -> bool | None:
        """The export gate's verdict: True, False, or None when it was skipped (--no-verify)."""
        return self.verification.get("passed")

    def replace(self, **changes) -> Manifest:
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, data, where: str = MANIFEST_NAME) -> Manifest:
        """Parse and validate; ManifestError ("<where>: ...") names the first field the runtime cannot use."""
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: manifest is not a JSON object")
        if data.get("format") != FORMAT:
            raise ManifestError(f"{where}: not a MaskCLIP artifact manifest (format={data.get('format')!r})")
        version = data.get("format_version")
        if version not in SUPPORTED_FORMAT_VERSIONS:
            raise ManifestError(
                f"{where}: unknown artifact format_version {version!r} (this runtime reads "
                f"{', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}); upgrade maskclip or re-export"
            )
        problem = manifest_problem(data)
        if problem:
            raise ManifestError(f"{where}: invalid manifest: {problem}")
        try:
            manifest = cls._parse(data, version)
        except CalibrationError as exc:
            raise ManifestError(f"{where}: {exc}") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{where}: malformed manifest ({type(exc).__name__}: {exc})") from None
        recorded = data["model"].get("model_id")
        if version >= 2 and recorded != manifest.model_id:
            raise ManifestError(
                f"{where}: invalid manifest: model.model_id {recorded!r} is not what its weights, precision and "
                f"topology make ({manifest.model_id!r})"
            )
        problem = consistency_problem(manifest)
        if problem:
            raise ManifestError(f"{where}: invalid manifest: {problem}")
        return manifest

    @classmethod
    def _parse(cls, data: dict, version: int) -> Manifest:
        model = data["model"]
        identity = ModelIdentity(
            config_name=model["config_name"],
            weights_sha256=model["weights_sha256"] if version >= 2 else _v1_weights(model),
            precision=data["precision"],
            topology=data.get("topology", "fused"),
        )
        return cls(
            identity=identity,
            config=model.get("config", {}),
            source=str(model.get("source", "")),
            preprocess=PreprocessSpec.from_dict(data["preprocess"]),
            threshold=float(data.get("threshold", 0.5)),
            batch=BatchSpec.from_dict(data.get("batch")),
            graphs=tuple(GraphSpec.from_dict(g) for g in data["graphs"]),
            package_version=str(data.get("package_version", "")),
            versions=dict(data.get("versions", {})),
            fp32_ops=tuple(data.get("fp32_ops", ())),
            verification=dict(data.get("verification") or {"skipped": True, "passed": None}),
            self_check=data.get("self_check"),
            int8=data.get("int8"),
            calibration=Calibration.from_dict(data["calibration"], "calibration")
            if data.get("calibration") is not None
            else None,
            card=ModelCard(**data["card"]) if data.get("card") is not None else None,
            engines=tuple(EngineSpec.from_dict(e) for e in data.get("engines", ())),
            engine_verification=data.get("engine_verification"),
            export_seconds=dict(data.get("export_seconds", {})),
            files=dict(data.get("files", {})),
            format_version=version,
            unknown={k: v for k, v in data.items() if k not in _KEYS},
        )

    def to_dict(self) -> dict:
        """The JSON document, in the order people read it; optional parts only when present."""
        model = {"config_name": self.identity.config_name, "config": self.config}
        if self.format_version >= 2:
            model |= {"weights_sha256": self.identity.weights_sha256, "model_id": self.model_id}
        else:
            model["model_id"] = self.identity.weights_id
        model["source"] = self.source
        doc = {
            "format": FORMAT,
            "format_version": self.format_version,
            "package_version": self.package_version,
            "model": model,
            "preprocess": self.preprocess.to_dict(),
            "threshold": self.threshold,
            "precision": self.precision,
            "fp32_ops": list(self.fp32_ops),
            "topology": self.topology,
            "batch": self.batch.to_dict(),
            "graphs": [g.to_dict() for g in self.graphs],
            "versions": self.versions,
            "int8": self.int8,
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "card": self.card.to_dict() if self.card else None,
            "self_check": self.self_check,
            "verification": self.verification,
            "export_seconds": self.export_seconds,
            "engines": [e.to_dict() for e in self.engines] if self.engines else None,
            "engine_verification": self.engine_verification,
            **self.unknown,
            "files": self.files,
        }
        # Through JSON once, so the dict is exactly what a reader of the file gets (tuples become lists).
        return json.loads(json.dumps({key: value for key, value in doc.items() if value is not None}))


_KEYS = (
    "format", "format_version", "package_version", "model", "preprocess", "threshold", "precision", "fp32_ops",
    "topology", "batch", "graphs", "versions", "int8", "calibration", "card", "self_check", "verification",
    "export_seconds", "engines", "engine_verification", "files",
)  # fmt: skip


def graph_digest(files: dict[str, str], graph: GraphSpec) -> str:
    """sha256 over the hashes of the graph's files (the ONNX file and its external `.data`, if any): what an
    engine's sidecar records as `onnx_sha256`, the graph it was built from."""
    names = [name for name in (graph.file, f"{graph.file}.data") if name in files]
    return hashlib.sha256("".join(f"{name}:{files[name]};" for name in names).encode()).hexdigest()


def engine_source_problem(manifest: Manifest, graph: GraphSpec, engine_metadata: dict) -> str | None:
    """An engine must have been built from this artifact's graph (its sidecar's onnx_sha256), else it computes
    another model whatever the manifest says."""
    built_from = engine_metadata.get("onnx_sha256")
    if built_from != graph_digest(manifest.files, graph):
        return (
            f"the engine of graph {graph.name!r} was built from another graph than {graph.file} (onnx_sha256 differs)"
        )
    listed = next((e for e in manifest.engines if e.graph == graph.name), None)
    if listed is not None and sorted(listed.compat) != sorted(engine_compat(engine_metadata)):
        return f"the engine of graph {graph.name!r} is recorded with another compat in its sidecar than in the manifest"
    return None


def claimed_files(data) -> set[str] | None:
    """The files a manifest document (of any version, even one the runtime would refuse) says belong to its
    artifact; None when it is not a MaskCLIP manifest. Decides what replacing an artifact folder may delete."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    files = data.get("files")
    return set(files) if isinstance(files, dict) else set()


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


def _v1_weights(model: dict) -> str:
    """Version 1 named a model "<config>-<weights digest[:12]>": the digest part."""
    return model["model_id"].removeprefix(f"{model['config_name']}-")


def _model_problem(manifest: dict) -> str | None:
    model = manifest.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("config_name"), str):
        return "model must be an object with a config_name"
    if manifest.get("format_version", 1) >= 2:
        if not isinstance(model.get("weights_sha256"), str) or not _SHA256.fullmatch(model["weights_sha256"]):
            return f"model.weights_sha256 must be a sha256 hex digest, got {model.get('weights_sha256')!r}"
    elif not isinstance(model.get("model_id"), str) or not model["model_id"]:
        return f"model.model_id must be a non-empty string, got {model.get('model_id')!r}"
    return None


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
            isinstance(mean, (list, tuple)) and len(mean) == 3 and all(_finite(v) and 0.0 <= v <= 1.0 for v in mean),
            f"preprocess.mean must be 3 numbers in [0, 1], got {mean!r}",
        ),
        (
            isinstance(std, (list, tuple)) and len(std) == 3 and all(_finite(v) and v > 0.0 for v in std),
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
            manifest.get("precision") in PRECISIONS,
            f"precision must be one of {', '.join(PRECISIONS)}, got {manifest.get('precision')!r}",
        ),
        (
            manifest.get("topology", "fused") in TOPOLOGIES,
            f"topology must be one of {', '.join(TOPOLOGIES)}, got {manifest.get('topology')!r}",
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
        (
            all(isinstance(e.get("compat", []), list) for e in manifest.get("engines", [])),
            "an engine's compat must be a list",
        ),
        (
            isinstance(manifest.get("verification", {}), dict),
            "verification must be an object",
        ),
    ]
    problem = next((message for ok, message in checks if not ok), None)
    return problem or _model_problem(manifest) or _batch_problem(manifest.get("batch"))


def consistency_problem(manifest: Manifest) -> str | None:
    """Fields that are each well-formed but contradict one another (or the gate's verdict)."""
    names = {g.name for g in manifest.graphs}
    problem = chain_problem((g.name, g.input_names, g.output_names) for g in manifest.graphs) or _shape_problem(
        manifest
    )
    if problem:
        return problem
    if manifest.calibration is not None and (problem := manifest.calibration.model_problem(manifest.model_id)):
        return f"{problem} (attach it with maskclip-calibrate --attach --force to use it anyway)"
    # An fp32 graph is built into any TensorRT precision (builder flags); a reduced one only into its own.
    wrong = [
        e.file
        for e in manifest.engines
        if e.precision not in PRECISIONS
        or not PRECISIONS[e.precision].tensorrt
        or manifest.precision not in (DEFAULT_PRECISION, e.precision)
    ]
    if wrong:
        return f"engines {', '.join(wrong)} have a precision TensorRT cannot build from {manifest.precision} graphs"
    unknown_graph = [e.file for e in manifest.engines if e.graph not in names]
    if unknown_graph:
        return f"engines {', '.join(unknown_graph)} name no graph of the artifact"
    unknown_compat = [
        e.file for e in manifest.engines if not all(isinstance(k, str) and k in TRT_COMPAT for k in e.compat)
    ]
    if unknown_compat:
        return f"engines {', '.join(unknown_compat)} record a compat other than {' / '.join(TRT_COMPAT)}"
    return None


def _shape_problem(manifest: Manifest) -> str | None:
    """The image input recorded by each graph must be what preprocessing and the batch profile make."""
    size, dim = manifest.preprocess.size, manifest.batch.dim
    for graph in manifest.graphs:
        for tensor in graph.inputs:
            if tensor.name == "image" and tensor.shape and tuple(tensor.shape) != (dim, 3, size, size):
                return (
                    f"graph {graph.name!r} takes image {list(tensor.shape)}, but preprocess and batch make "
                    f"{[dim, 3, size, size]}"
                )
    return None
