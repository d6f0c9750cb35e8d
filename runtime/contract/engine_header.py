"""TensorRT engine files: a plain plan plus its metadata in a JSON sidecar.

Layout: `model.fp16.engine` holds exactly what TensorRT serialised, so stock loaders (trtexec
`--loadEngine`, Triton's tensorrt backend) take it as it is; `model.fp16.engine.json` beside it says
what the plan was built with and for (TensorRT version, GPU, compute capability, precision, profile,
the hashes of the graphs it came from) and holds the plan's sha256.

A plan only runs on the TensorRT version and GPU it was built for, and TensorRT's own error for a
mismatch is an opaque deserialisation failure; the sidecar lets the runtime refuse with one line that
says what was built where, and the plan hash ties the two files together (a plan without its sidecar,
or with another plan's, is refused). A portable engine (`maskclip-export --trt-compat`) records what it
was built to allow in `compat`, and the runtime widens its check by exactly that much (TRT_COMPAT).
No torch, no numpy, no TensorRT: readable anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..errors import InputError
from ..kernel.atomic import write_bytes_atomic

ENGINE_SUFFIX = ".engine"  # model.fp16.engine: what makes a --model path an engine file
SIDECAR_SUFFIX = ".json"
FORMAT = "maskclip-trt-engine"
# Sidecars hold a few hundred bytes of metadata; a larger one is a corrupt or foreign file.
MAX_SIDECAR_BYTES = 1 << 20
REQUIRED_KEYS = ("tensorrt_version", "gpu_name", "compute_capability", "precision", "profile")

# Portable engines (trtexec --versionCompatible / --hardwareCompatibilityLevel=ampere+): what each kind
# promises. Neither exists on Jetson (JetPack's TensorRT builds plans for its own GPU and version only).
TRT_COMPAT = {
    "version": "runs on this TensorRT and any newer one of the same major version (BuilderFlag.VERSION_COMPATIBLE: "
    "a lean runtime travels inside the plan)",
    "hardware": "runs on any Ampere or newer GPU (hardware compatibility level AMPERE_PLUS; may be slower)",
}
AMPERE = (8, 0)  # the oldest compute capability an AMPERE_PLUS engine is built or runs on


class EngineFileError(InputError, ValueError):
    """The engine or its sidecar is missing, malformed or do not belong together; the message names the file."""


class EngineIncompatibleError(RuntimeError):
    """The engine was built for another TensorRT version or GPU and must be rebuilt here."""


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    """model.fp16.engine -> model.fp16.engine.json"""
    path = Path(engine_path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def write_engine(path: str | os.PathLike, metadata: dict, plan: bytes) -> None:
    """Write the plan and its sidecar (plan hash added), each atomically; the sidecar last, so a reader
    never pairs a new sidecar with an old plan."""
    missing = [key for key in REQUIRED_KEYS if key not in metadata]
    if missing:
        raise ValueError(f"engine metadata lacks {', '.join(missing)}")
    if not plan:
        raise ValueError("refusing to write an engine with an empty plan")
    sidecar = {"format": FORMAT, **metadata, "plan_sha256": hashlib.sha256(plan).hexdigest()}
    encoded = json.dumps(sidecar, indent=2, sort_keys=True).encode("utf-8")
    if len(encoded) > MAX_SIDECAR_BYTES:
        raise ValueError(f"engine metadata is {len(encoded)} bytes, more than the {MAX_SIDECAR_BYTES} allowed")
    path = Path(path)
    write_bytes_atomic(path, plan)
    write_bytes_atomic(sidecar_path(path), encoded)


def read_engine_metadata(path: str | os.PathLike) -> dict:
    """The sidecar of an engine file; EngineFileError when it is missing or malformed."""
    path = Path(path)
    sidecar = sidecar_path(path)
    if not path.is_file():
        raise EngineFileError(f"{path}: no such engine file")
    if not sidecar.is_file():
        raise EngineFileError(
            f"{path}: no {sidecar.name} beside it (the metadata that says what the plan was built for); "
            "rebuild it with `maskclip-export --trt`"
        )
    if sidecar.stat().st_size > MAX_SIDECAR_BYTES:
        raise EngineFileError(f"{sidecar}: larger than {MAX_SIDECAR_BYTES} bytes (not an engine sidecar)")
    try:
        metadata = json.loads(sidecar.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EngineFileError(f"{sidecar}: not valid UTF-8 JSON ({err})") from err
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise EngineFileError(f"{sidecar}: not a maskclip engine sidecar (format is not {FORMAT!r})")
    missing = [key for key in (*REQUIRED_KEYS, "plan_sha256") if key not in metadata]
    if missing:
        raise EngineFileError(f"{sidecar}: lacks {', '.join(missing)}")
    return metadata


def read_plan(path: str | os.PathLike, metadata: dict | None = None) -> bytes:
    """The plan bytes, checked against the sidecar's plan_sha256 (read from the sidecar when not given)."""
    metadata = metadata if metadata is not None else read_engine_metadata(path)
    plan = Path(path).read_bytes()
    if hashlib.sha256(plan).hexdigest() != str(metadata["plan_sha256"]).lower():
        raise EngineFileError(
            f"{path}: the plan's sha256 differs from its sidecar's (replaced or corrupted plan, or another "
            "engine's sidecar); rebuild it with `maskclip-export --trt`"
        )
    return plan


def _version(version: str) -> tuple[int, ...]:
    """'10.3.0.26' -> (10, 3, 0, 26); '10.3' -> (10, 3, 0, 0)."""
    try:
        parts = tuple(int(part) for part in str(version).split("."))
        return parts + (0,) * (4 - len(parts))
    except ValueError as err:
        raise ValueError(f"unreadable TensorRT version {version!r}") from err


def normalize_compute_capability(cc: str | tuple[int, int] | list[int]) -> str:
    """(8, 0), [8, 0], "8.0" and "sm_80" all become "8.0"."""
    if isinstance(cc, (tuple, list)):
        return f"{int(cc[0])}.{int(cc[1])}"
    text = str(cc).strip().lower().removeprefix("sm_")
    if "." in text:
        return text
    if text.isdigit() and len(text) >= 2:
        return f"{text[:-1]}.{text[-1]}"
    raise ValueError(f"unreadable compute capability {cc!r}")


def ampere_or_newer(compute_capability: str | tuple[int, int]) -> bool:
    """Whether a GPU of this compute capability builds and runs AMPERE_PLUS (hardware-compatible) engines."""
    major, minor = normalize_compute_capability(compute_capability).split(".")
    return (int(major), int(minor)) >= AMPERE


def engine_compat(metadata: dict) -> tuple[str, ...]:
    """The portability a sidecar records (none for a plain engine); EngineFileError for unknown kinds."""
    compat = metadata.get("compat", [])
    if not isinstance(compat, list) or not all(isinstance(kind, str) and kind in TRT_COMPAT for kind in compat):
        raise EngineFileError(f"engine sidecar: compat {compat!r} is not a list of {', '.join(TRT_COMPAT)}")
    return tuple(compat)


def check_engine_compatible(
    metadata: dict,
    trt_version: str,
    gpu_name: str,
    compute_capability: str | tuple[int, int],
    machine: str | None = None,
) -> None:
    """Raise EngineIncompatibleError unless this TensorRT, GPU and machine may run the engine.

    A plain engine needs the TensorRT major.minor and the GPU (name and compute capability) it was built with;
    a version-compatible one any TensorRT of the same major, not older than the builder's; a hardware-
    compatible one any GPU of compute capability 8.0 or newer. A sidecar that records its machine (x86_64,
    aarch64) runs only there: no plan crosses platforms.
    """
    compat = engine_compat(metadata)
    built_machine = metadata.get("machine")
    if built_machine and machine and built_machine != machine:
        raise EngineIncompatibleError(
            f"engine built on {built_machine} but this machine is {machine}; TensorRT plans never cross platforms: "
            "rebuild it here with `maskclip-export --trt`"
        )
    built_version = metadata["tensorrt_version"]
    built, here = _version(built_version), _version(trt_version)
    if "version" in compat:
        if built[0] != here[0] or here < built:
            raise EngineIncompatibleError(
                f"version-compatible engine built with TensorRT {built_version} runs on TensorRT {built[0]}.x "
                f"from {built_version} on, but TensorRT {trt_version} is installed: rebuild it here with "
                "`maskclip-export --trt`"
            )
    elif built[:2] != here[:2]:
        raise EngineIncompatibleError(
            f"engine built with TensorRT {built_version} but TensorRT {trt_version} is installed; "
            "plans are not portable across versions: rebuild it here with `maskclip-export --trt` "
            "(or build a portable one with --trt-compat version)"
        )
    built_cc = normalize_compute_capability(metadata["compute_capability"])
    here_cc = normalize_compute_capability(compute_capability)
    built_gpu = metadata["gpu_name"]
    if "hardware" in compat:
        if not ampere_or_newer(here_cc):
            raise EngineIncompatibleError(
                f"hardware-compatible engine runs on Ampere or newer GPUs (compute capability 8.0+), but this GPU "
                f"is {gpu_name} (compute capability {here_cc}): rebuild it here with `maskclip-export --trt`"
            )
    elif built_cc != here_cc or built_gpu != gpu_name:
        raise EngineIncompatibleError(
            f"engine built for {built_gpu} (compute capability {built_cc}) but this GPU is {gpu_name} "
            f"(compute capability {here_cc}); TensorRT plans are tuned per GPU: rebuild it here with "
            "`maskclip-export --trt` (or build a portable one with --trt-compat hardware)"
        )
