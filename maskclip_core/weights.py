"""Pretrained weights for the two backbones: hub tags or local files, failing fast and clearly offline.

CLIP: an open_clip pretrained tag (e.g. `openai` for ViT-L-14, fetched from the Hugging Face hub) or
a local open_clip state dict (.safetensors / .bin / .pt). MAE: the timm tag
`vit_base_patch16_224.mae` (hub) or a local file: FAIR's `mae_pretrain_vit_base.pth` or timm's
`model.safetensors`. Keys are adapted by name; the CLS token and the final norm are dropped.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
from torch import nn

from maskclip_runtime.errors import InputError

HUB_HOST = ("huggingface.co", 443)
MAE_HUB_TAGS = {"vit_base_patch16_224.mae": ("timm/vit_base_patch16_224.mae", "model.safetensors")}
# The side network shapes (patch, width, depth, heads) those MAE weights fit: ViT-B/16.
MAE_HUB_SHAPES = {"vit_base_patch16_224.mae": (16, 768, 12, 12)}
PAPER_CLIP_TAG = "openai"  # OpenAI's CLIP weights, an open_clip tag of every OpenAI CLIP model
# MAE checkpoint tensors that MaskCLIP's side net does not have
_MAE_UNUSED_PREFIXES = ("cls_token", "mask_token", "norm.", "fc_norm.", "head.", "decoder")


class WeightsUnavailableError(InputError, RuntimeError):
    """Weights could not be obtained; the message names the file to supply and the option to pass."""


def hub_reachable(timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def _go_offline_if_unreachable() -> None:
    """Without a network, put the hub clients in offline mode so they answer from cache or fail at once
    (instead of retrying for tens of seconds)."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or hub_reachable():
        return
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hf_constants

        hf_constants.HF_HUB_OFFLINE = True
    except ImportError:
        pass


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):  # FAIR / Lightning wrappers
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    return obj


def _local_file(source: str) -> Path | None:
    path = Path(source).expanduser()
    looks_like_file = path.suffix in (".safetensors", ".pth", ".pt", ".bin") or os.sep in source
    if not looks_like_file:
        return None
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file not found: {path}")
    return path


def load_clip_weights(clip: nn.Module, source: str, model_name: str) -> None:
    """Load CLIP weights into an open_clip CLIP built by `build_open_clip`."""
    import open_clip

    path = _local_file(source)
    if path is None:
        if not model_name:
            raise WeightsUnavailableError(
                f"this config's CLIP has no hub weights (tag {source!r}); pass --clip-weights FILE with a state dict"
            )
        cfg = open_clip.get_pretrained_cfg(model_name, source)
        if not cfg:
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
            raise WeightsUnavailableError(f"unknown open_clip tag {source!r} for {model_name} (known: {tags})")
        _go_offline_if_unreachable()
        hub = cfg.get("hf_hub", "").rstrip("/")
        try:
            path = Path(open_clip.download_pretrained(cfg))
        except Exception as exc:
            raise WeightsUnavailableError(
                f"cannot download CLIP {model_name} '{source}' weights (hub {hub or cfg.get('url')}: "
                f"{type(exc).__name__}). Supply the file: pass --clip-weights /path/to/open_clip_model.safetensors "
                f"(from hf.co/{hub})"
            ) from None
    try:
        open_clip.load_checkpoint(clip, str(path))
    except RuntimeError as exc:
        raise WeightsUnavailableError(f"{path}: not a {model_name or 'matching'} CLIP state dict ({exc})") from None


def require_pretrained(cfg, clip_weights: str | None, mae_weights: str | None) -> None:
    """Refuse a start from random weights that was not asked for (`--random-init` skips this check).

    CLIP stays frozen, so a random CLIP is random for the whole run (chance-level verdicts); an MAE
    side network whose shapes have published weights starts from them in the paper. The message
    names what to pass for each backbone that has none.
    """
    missing = []
    if not clip_weights:
        if cfg.clip.model_name:
            missing.append(
                f"--clip-weights {PAPER_CLIP_TAG} (hub; or a local open_clip {cfg.clip.model_name} state dict file)"
            )
        else:
            missing.append("--clip-weights FILE (no hub weights fit this CLIP; maskclip_core.demo trains one)")
    mae_shape = (cfg.mae.patch_size, cfg.mae.width, cfg.mae.depth, cfg.mae.heads)
    mae_tag = next((tag for tag, shape in MAE_HUB_SHAPES.items() if shape == mae_shape), None)
    if not mae_weights and mae_tag:
        missing.append(f"--mae-weights {mae_tag} (hub; or FAIR's mae_pretrain_vit_base.pth)")
    if missing:
        raise WeightsUnavailableError(
            f"{cfg.name} would start from random weights: pass {' and '.join(missing)}, or --random-init to train "
            f"from scratch on purpose"
        )


def adapt_mae_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """FAIR / timm MAE keys -> MaeSideNet keys (identical names; unused tensors dropped)."""
    return {k: v for k, v in state.items() if not k.startswith(_MAE_UNUSED_PREFIXES)}


def load_mae_weights(mae: nn.Module, source: str) -> None:
    """Load MAE pretraining weights into a MaeSideNet; relative position tables stay at zero."""
    path = _local_file(source)
    if path is None:
        if source not in MAE_HUB_TAGS:
            raise WeightsUnavailableError(f"unknown MAE tag {source!r} (known: {', '.join(MAE_HUB_TAGS)})")
        repo, filename = MAE_HUB_TAGS[source]
        _go_offline_if_unreachable()
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(repo, filename))
        except Exception as exc:
            raise WeightsUnavailableError(
                f"cannot download MAE weights '{source}' (hub {repo}: {type(exc).__name__}). Supply the file: "
                f"pass --mae-weights /path/to/mae_pretrain_vit_base.pth (FAIR) or model.safetensors (hf.co/{repo})"
            ) from None
    state = adapt_mae_state_dict(_read_state_dict(path))
    result = mae.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if "rel_pos" not in k]
    if missing or result.unexpected_keys:
        raise WeightsUnavailableError(
            f"{path}: not a ViT-B/16 MAE checkpoint (missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})"
        )
