"""The authors' checkpoints (OpenSDI train.py) -> this project's safetensors checkpoints.

Their trainer (IMDLBenCo's misc.save_model) writes `checkpoint-N.pth` = torch.save of
{'model': state_dict, 'optimizer', 'epoch', 'scaler', 'args': argparse.Namespace}. Only 'model'
is converted. The file is read with `weights_only=True` and argparse.Namespace as the one extra
allowed class, so no code in it can run. The mapping is strict: every source tensor is consumed,
every tensor of the target model is produced, every shape is checked, and the first problem is
reported in one line.

Their names (shared/spec/authors_state_dict.tsv lists all 778 of the paper's model):
    clip.*                                 open_clip's CLIP, same names        -> clip.model.*
    aggregator.vit_model.*                 the MAE side net, timm names        -> mae.*
    aggregator.fusion_layers.layer_i.*     VCA after MAE block i (tap i-1)     -> vca.{i-1}.*
    aggregator.mask_decoder.stages.0..3    pyramid x4, x2, x1, x0.5 (Sequential positions)
    aggregator.mask_decoder.to_q + to_kv   TVCA q and k|v projections          -> decoder.tvca.attn.in_proj_*
    aggregator.mask_decoder.proj           TVCA output projection              -> decoder.tvca.attn.out_proj
    cls_aggregator.*                       VSA                                 -> vsa.*
    prompt_learner.ctx_neg / ctx_pos       real / fake contexts [1,L,W] each   -> prompts.ctx [2,L,W]
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import CheckpointError, check_checkpoint_folder, save_checkpoint
from .config import MaskCLIPConfig, get_config, list_configs
from .model import MaskCLIP

_DECODER = "aggregator.mask_decoder"
# Decoder pyramid: our (level, part) -> position inside the authors' stages.L Sequential.
# stages.0 = ConvT, LN, GELU, ConvT, then the level convs; stages.1 = ConvT, then the level convs;
# stages.2 = the level convs; stages.3 = MaxPool, then the level convs.
_LEVEL_START = {0: 4, 1: 1, 2: 0, 3: 1}
_LEVEL_PARTS = ("lateral", "lateral_norm", "output", "output_norm")
_VCA_PARTS = {
    "clip_proj": "channel_adjust.0",
    "clip_norm": "channel_adjust.1",
    "q": "query_proj",
    "k": "key_proj",
    "v": "value_proj",
    "proj": "output_proj.0",
    "norm": "output_proj.1",
}
_RENAMES: list[tuple[str, Callable[[re.Match], str]]] = [
    (r"clip\.model\.(.+)", lambda m: f"clip.{m[1]}"),
    (r"mae\.(.+)", lambda m: f"aggregator.vit_model.{m[1]}"),
    (
        r"vca\.(\d+)\.(\w+)\.(weight|bias)",
        lambda m: f"aggregator.fusion_layers.layer_{int(m[1]) + 1}.{_VCA_PARTS[m[2]]}.{m[3]}",
    ),
    (r"decoder\.pyramid\.up4\.(\d+)\.(.+)", lambda m: f"{_DECODER}.stages.0.{m[1]}.{m[2]}"),
    (r"decoder\.pyramid\.up2\.(.+)", lambda m: f"{_DECODER}.stages.1.0.{m[1]}"),
    (
        r"decoder\.pyramid\.levels\.(\d)\.(\w+)\.(.+)",
        lambda m: f"{_DECODER}.stages.{m[1]}.{_LEVEL_START[int(m[1])] + _LEVEL_PARTS.index(m[2])}.{m[3]}",
    ),
    (r"decoder\.pyramid\.fuse\.(.+)", lambda m: f"{_DECODER}.linear_fuse.{m[1]}"),
    (r"decoder\.tvca\.attn\.out_proj\.(.+)", lambda m: f"{_DECODER}.proj.{m[1]}"),
    (r"decoder\.norm\.(.+)", lambda m: f"{_DECODER}.norm.{m[1]}"),
    (r"decoder\.head\.(.+)", lambda m: f"{_DECODER}.predict.{m[1]}"),
    (r"text_proj\.(.+)", lambda m: f"aggregator.text_projection.{m[1]}"),
    (r"vsa\.attn\.(.+)", lambda m: f"cls_aggregator.layers.0.multihead_attn.{m[1]}"),
    (r"vsa\.norm\.(.+)", lambda m: f"cls_aggregator.layers.0.layer_norm.{m[1]}"),
    (r"vsa\.proj\.(.+)", lambda m: f"cls_aggregator.projector.0.{m[1]}"),
]


class AuthorsCheckpointError(CheckpointError):
    """An authors' checkpoint that cannot be read or converted; the message names the first problem."""


@dataclass(frozen=True)
class KeyRule:
    """One tensor of ours, made from the authors' tensors `sources` (concatenated along dim 0 if several)."""

    target: str
    sources: tuple[str, ...]


def key_rules(target_keys: list[str]) -> list[KeyRule]:
    """Our state-dict keys -> where each comes from in the authors' state dict."""
    rules = []
    for key in target_keys:
        if key == "prompts.ctx":  # row 0 real, row 1 fake; theirs: ctx_neg is the real class
            rules.append(KeyRule(key, ("prompt_learner.ctx_neg", "prompt_learner.ctx_pos")))
            continue
        if key.startswith("decoder.tvca.attn.in_proj_"):  # q rows, then k and v rows (their to_kv)
            part = key.rsplit("_", 1)[1]  # weight | bias
            rules.append(KeyRule(key, (f"{_DECODER}.to_q.{part}", f"{_DECODER}.to_kv.{part}")))
            continue
        for pattern, rename in _RENAMES:
            if match := re.fullmatch(pattern, key):
                rules.append(KeyRule(key, (rename(match),)))
                break
        else:
            raise AssertionError(f"no authors' name for {key}")  # a model change without a mapping
    return rules


def target_shapes(config: MaskCLIPConfig) -> dict[str, torch.Size]:
    """Our state dict's shapes for `config`, from a model on the meta device (nothing allocated)."""
    with torch.device("meta"):
        return {k: v.shape for k, v in MaskCLIP(config).state_dict().items()}


def convert_state_dict(source: Mapping[str, torch.Tensor], config: MaskCLIPConfig) -> dict[str, torch.Tensor]:
    """The authors' model state dict -> ours for `config`; AuthorsCheckpointError on the first mismatch."""
    shapes = target_shapes(config)
    out, consumed = {}, set()
    for rule in key_rules(list(shapes)):
        parts = []
        for name in rule.sources:
            if name not in source:
                raise AuthorsCheckpointError(f"missing tensor {name} (for {rule.target}, config {config.name!r})")
            tensor = source[name]
            if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
                raise AuthorsCheckpointError(f"{name} is not a floating-point tensor")
            parts.append(tensor)
        if len(parts) == 1:
            value = parts[0]
        elif len({p.shape[1:] for p in parts}) == 1:
            value = torch.cat(parts, dim=0)
        else:
            value = None  # parts that cannot be joined: reported like any wrong shape
        if value is None or value.shape != shapes[rule.target]:
            got = " + ".join(f"{n} {list(p.shape)}" for n, p in zip(rule.sources, parts, strict=True))
            raise AuthorsCheckpointError(
                f"{got} does not fit {rule.target} {list(shapes[rule.target])} of config {config.name!r}"
            )
        out[rule.target] = value.to(torch.float32)
        consumed.update(rule.sources)
    extra = [k for k in source if k not in consumed]
    if extra:
        raise AuthorsCheckpointError(
            f"unexpected tensor {extra[0]} ({len(extra)} unused in all) for config {config.name!r}"
        )
    return out


def read_authors_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """checkpoint-N.pth (or a bare state dict) -> (model state dict, provenance metadata).

    Unpickled with weights_only=True; argparse.Namespace (their 'args') is the one class allowed.
    """
    path = Path(path)
    if not path.is_file():
        raise AuthorsCheckpointError(f"{path}: no such file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (not a zip / truncated), EOFError, ...
        text = str(exc)
        refused = re.search(r"GLOBAL ([\w.]+)", text)
        if refused:
            raise AuthorsCheckpointError(
                f"{path}: refused to unpickle {refused[1]} (only tensors, plain containers and "
                f"argparse.Namespace are loaded; nothing in the file is executed)"
            ) from None
        # torch prefixes the unpickler's own reason with a long advice paragraph; keep the reason.
        reason = text.split("WeightsUnpickler error:", 1)[-1].strip()
        reason = reason.split("\n", 1)[0].strip() or type(exc).__name__
        raise AuthorsCheckpointError(f"{path}: not a readable PyTorch checkpoint ({reason})") from None
    if not isinstance(doc, dict):
        raise AuthorsCheckpointError(f"{path}: holds a {type(doc).__name__}, not a checkpoint dict or state dict")
    meta = {"imported_from": path.name}
    if "model" in doc:
        state = doc["model"]
        if isinstance(doc.get("epoch"), int):
            meta["epoch"] = doc["epoch"]
        if isinstance(doc.get("args"), argparse.Namespace):
            meta["authors_args"] = {k: v for k, v in vars(doc["args"]).items() if _is_plain(v)}
    else:
        state = doc
    if not isinstance(state, dict) or not state:
        raise AuthorsCheckpointError(f"{path}: its 'model' entry is not a state dict")
    return state, meta


def _is_plain(value) -> bool:
    """A JSON-representable argument value (their args also hold paths and flags only)."""
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def fitting_configs(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Registered configs whose layout the state dict fits exactly (checked on meta copies: no copying)."""
    shadow = {
        k: torch.empty(v.shape, dtype=v.dtype, device="meta") if isinstance(v, torch.Tensor) else v
        for k, v in state.items()
    }
    fits = []
    for name in list_configs():
        try:
            convert_state_dict(shadow, get_config(name))
        except AuthorsCheckpointError:
            continue
        fits.append(name)
    return fits


def import_authors_checkpoint(source: str | Path, out: str | Path, config: MaskCLIPConfig) -> Path:
    """Convert and write OUT/model.safetensors + OUT/config.json; returns the weights path."""
    check_checkpoint_folder(out)
    state, meta = read_authors_checkpoint(source)
    try:
        converted = convert_state_dict(state, config)
    except AuthorsCheckpointError as exc:
        fits = [name for name in fitting_configs(state) if name != config.name]
        hint = f"; the tensors fit config {fits[0]!r} (--config {fits[0]})" if fits else ""
        raise AuthorsCheckpointError(f"{source}: {exc}{hint}") from None
    with torch.device("meta"):
        model = MaskCLIP(config)
    model.load_state_dict(converted, strict=True, assign=True)  # takes the tensors, no second copy
    return save_checkpoint(model, Path(out), metadata=meta)
