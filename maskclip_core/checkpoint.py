"""MaskCLIP checkpoints: safetensors weights + a JSON config beside them (never pickle).

A checkpoint is `<name>.safetensors` with `<name>.json`, or a folder holding `model.safetensors`
and `config.json`. `load_checkpoint(path)` rebuilds the model from those alone.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from maskclip_runtime.errors import InputError
from maskclip_runtime.kernel.atomic import atomic_path, unreplaceable_folder, write_text_atomic

from .config import MaskCLIPConfig
from .model import MaskCLIP


class CheckpointError(InputError, ValueError):
    """An unusable checkpoint; the message names the file."""


def checkpoint_files(path: str | Path) -> tuple[Path, Path]:
    """-> (weights .safetensors, config .json) for a file or folder checkpoint path."""
    path = Path(path)
    if path.name in ("model.safetensors", "config.json"):  # inside a folder checkpoint
        return path.parent / "model.safetensors", path.parent / "config.json"
    if path.suffix == ".safetensors":
        return path, path.with_suffix(".json")
    if path.suffix == ".json":
        return path.with_suffix(".safetensors"), path
    return path / "model.safetensors", path / "config.json"


def save_checkpoint(model: MaskCLIP, path: str | Path, metadata: dict | None = None) -> Path:
    """Write weights and config atomically; returns the weights path."""
    weights, config = checkpoint_files(path)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"config_name": model.config.name, **{k: str(v) for k, v in (metadata or {}).items()}}
    weights.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(weights) as temp:
        save_file(state, str(temp), metadata=meta)
    doc = {"config": model.config.to_dict(), "metadata": metadata or {}}
    write_text_atomic(config, json.dumps(doc, indent=2))
    return weights


def check_checkpoint_folder(out: str | Path) -> None:
    """Refuse, before any work, a checkpoint folder whose files would overwrite what is not a MaskCLIP
    checkpoint (a user's config.json), or the current folder, its parents or home (as export's --out)."""
    problem = unreplaceable_folder(out)
    if problem:
        raise CheckpointError(problem)
    weights, config = checkpoint_files(Path(out))
    if not (weights.exists() or weights.is_symlink() or config.exists() or config.is_symlink()):
        return
    try:
        if config.is_symlink() or weights.is_symlink():
            raise TypeError("a symbolic link")
        MaskCLIPConfig.from_dict(json.loads(config.read_text(encoding="utf-8"))["config"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise CheckpointError(
            f"{out}: its {config.name} or {weights.name} is not a MaskCLIP checkpoint's; refusing to overwrite it "
            f"(name a new folder)"
        ) from None


def read_checkpoint_config(path: str | Path) -> MaskCLIPConfig:
    weights, config = checkpoint_files(path)
    if not weights.is_file():
        raise CheckpointError(f"checkpoint not found: {weights}")
    if not config.is_file():
        raise CheckpointError(f"{weights}: its config {config.name} is missing beside it")
    try:
        return MaskCLIPConfig.from_dict(json.loads(config.read_text())["config"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{config}: not a MaskCLIP checkpoint config ({exc})") from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> MaskCLIP:
    """Rebuild a MaskCLIP from a checkpoint written by save_checkpoint; eval mode."""
    cfg = read_checkpoint_config(path)
    weights, _ = checkpoint_files(path)
    try:
        state = load_file(str(weights), device=str(map_location))
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{weights}: unreadable safetensors file ({exc})") from None
    model = MaskCLIP(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        # torch's first line only says "Error(s) in loading state_dict"; the next names the tensor and shapes.
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = " ".join(lines[1:2] or lines)[:400]
        raise CheckpointError(f"{weights}: weights do not match config {cfg.name!r} ({detail})") from None
    return model.eval()


def weights_digest(model: MaskCLIP) -> str:
    """sha256 over the model's tensors (names, dtypes, shapes, bytes), the weights part of its identity
    (maskclip_runtime.contract.manifest.ModelIdentity). Computed from the tensors, not a file's bytes, so a
    checkpoint gets the same digest however it was saved, and as the model it loads into."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
