"""TensorRT engine files with a metadata header in front of the plan.

Layout: magic b"MCLIPTRT" | uint32 little-endian JSON length | UTF-8 JSON header | TensorRT plan bytes.

A plan only runs on the TensorRT version and GPU it was built for, and TensorRT's own error for a
mismatch is an opaque deserialisation failure; the header lets the runtime refuse with a message
that says what was built where. No torch, no numpy, no TensorRT: readable anywhere.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

MAGIC = b"MCLIPTRT"
_LENGTH = struct.Struct("<I")
PREFIX_BYTES = len(MAGIC) + _LENGTH.size
# Headers hold a few hundred bytes of metadata; a larger length means a corrupt or foreign file.
MAX_HEADER_BYTES = 1 << 20
REQUIRED_KEYS = ("tensorrt_version", "gpu_name", "compute_capability", "precision", "profile")


class EngineFileError(ValueError):
    """The file is not a well-formed maskclip engine file; the message names the file."""


class EngineIncompatibleError(RuntimeError):
    """The engine was built for another TensorRT version or GPU and must be rebuilt here."""


def write_engine(path: str | os.PathLike, header: dict, plan: bytes) -> None:
    """Write header + plan atomically (temp file in the same folder, then os.replace)."""
    missing = [key for key in REQUIRED_KEYS if key not in header]
    if missing:
        raise ValueError(f"engine header lacks {', '.join(missing)}")
    if not plan:
        raise ValueError("refusing to write an engine with an empty plan")
    encoded = json.dumps(header, sort_keys=True).encode("utf-8")
    if len(encoded) > MAX_HEADER_BYTES:
        raise ValueError(f"engine header is {len(encoded)} bytes, more than the {MAX_HEADER_BYTES} allowed")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC)
            f.write(_LENGTH.pack(len(encoded)))
            f.write(encoded)
            f.write(plan)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_engine_header(path: str | os.PathLike) -> tuple[dict, int]:
    """Return (header, offset of the plan in the file); raise EngineFileError for anything malformed."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(PREFIX_BYTES)
        if len(prefix) < len(MAGIC) or prefix[: len(MAGIC)] != MAGIC:
            raise EngineFileError(
                f"{path}: not a maskclip engine file (no {MAGIC.decode()} header); "
                "rebuild it with `maskclip-export --trt`"
            )
        if len(prefix) < PREFIX_BYTES:
            raise EngineFileError(f"{path}: truncated engine file (header length missing)")
        (length,) = _LENGTH.unpack(prefix[len(MAGIC) :])
        if length > MAX_HEADER_BYTES:
            raise EngineFileError(f"{path}: header length {length} exceeds {MAX_HEADER_BYTES} bytes (corrupt file)")
        raw = f.read(length)
    if len(raw) < length:
        raise EngineFileError(f"{path}: truncated engine file (header is {len(raw)} of {length} bytes)")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EngineFileError(f"{path}: engine header is not valid UTF-8 JSON ({err})") from err
    if not isinstance(header, dict):
        raise EngineFileError(f"{path}: engine header is not a JSON object")
    missing = [key for key in REQUIRED_KEYS if key not in header]
    if missing:
        raise EngineFileError(f"{path}: engine header lacks {', '.join(missing)}")
    offset = PREFIX_BYTES + length
    if size <= offset:
        raise EngineFileError(f"{path}: truncated engine file (no plan after the header)")
    return header, offset


def read_plan(path: str | os.PathLike) -> bytes:
    """The TensorRT plan bytes that follow the header."""
    _, offset = read_engine_header(path)
    with Path(path).open("rb") as f:
        f.seek(offset)
        return f.read()


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
    header: dict, trt_version: str, gpu_name: str, compute_capability: str | tuple[int, int]
) -> None:
    """Raise EngineIncompatibleError unless the engine was built with this TensorRT major.minor on this GPU."""
    built_version = header["tensorrt_version"]
    if _major_minor(built_version) != _major_minor(trt_version):
        raise EngineIncompatibleError(
            f"engine built with TensorRT {built_version} but TensorRT {trt_version} is installed; "
            "plans are not portable across versions: rebuild it here with `maskclip-export --trt`"
        )
    built_cc = normalize_compute_capability(header["compute_capability"])
    here_cc = normalize_compute_capability(compute_capability)
    built_gpu = header["gpu_name"]
    if built_cc != here_cc or built_gpu != gpu_name:
        raise EngineIncompatibleError(
            f"engine built for {built_gpu} (compute capability {built_cc}) but this GPU is {gpu_name} "
            f"(compute capability {here_cc}); TensorRT plans are tuned per GPU: rebuild it here with "
            "`maskclip-export --trt`"
        )
