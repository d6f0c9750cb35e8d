"""TensorRT engine files: a plain plan plus its metadata in a JSON sidecar.

Layout: `model.fp16.engine` holds exactly what TensorRT serialised, so stock loaders (trtexec
`--loadEngine`, Triton's tensorrt backend) take it as it is; `model.fp16.engine.json` beside it says
what the plan was built with and for (TensorRT version, GPU, compute capability, precision, profile,
the hashes of the graphs it came from) and holds the plan's sha256.

A plan only runs on the TensorRT version and GPU it was built for, and TensorRT's own error for a
mismatch is an opaque deserialisation failure; the sidecar lets the runtime refuse with one line that
says what was built where, and the plan hash ties the two files together (a plan without its sidecar,
or with another plan's, is refused). No torch, no numpy, no TensorRT: readable anywhere.
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


def _major_minor(version: str) -> tuple[int, int]:
    parts = str(version).split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
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


def check_engine_compatible(
    metadata: dict, trt_version: str, gpu_name: str, compute_capability: str | tuple[int, int]
) -> None:
    """Raise EngineIncompatibleError unless the engine was built with this TensorRT major.minor on this GPU."""
    built_version = metadata["tensorrt_version"]
    if _major_minor(built_version) != _major_minor(trt_version):
        raise EngineIncompatibleError(
            f"engine built with TensorRT {built_version} but TensorRT {trt_version} is installed; "
            "plans are not portable across versions: rebuild it here with `maskclip-export --trt`"
        )
    built_cc = normalize_compute_capability(metadata["compute_capability"])
    here_cc = normalize_compute_capability(compute_capability)
    built_gpu = metadata["gpu_name"]
    if built_cc != here_cc or built_gpu != gpu_name:
        raise EngineIncompatibleError(
            f"engine built for {built_gpu} (compute capability {built_cc}) but this GPU is {gpu_name} "
            f"(compute capability {here_cc}); TensorRT plans are tuned per GPU: rebuild it here with "
            "`maskclip-export --trt`"
        )
