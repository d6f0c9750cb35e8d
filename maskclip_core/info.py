"""`maskclip-info`: parameters (total, trainable, per part), input size and GMACs of a config or checkpoint;
`maskclip-info --backends`: the runtime's registered backends and whether each can run here.

torch and the model are imported where they are used, so `maskclip-info --help` and `--backends` work
without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from maskclip_runtime.command import command, json_option, write_json

from .config import MaskCLIPConfig, get_config, list_configs

if TYPE_CHECKING:
    from .model import MaskCLIP


def count_macs(model: MaskCLIP | MaskCLIPConfig, batch: int = 1) -> dict[str, float]:
    """GMACs per stage for `batch` images, counted on the meta device (no compute, no memory); a config
    is enough, so a big model can be counted without building it.

    The text pass is reported apart: at inference T is a constant and belongs in no deployed graph.
    heads = heads_verdict (VSA, what the cascade's screen adds to clip) + heads_mask (the decoder).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .model import MaskCLIP

    cfg = model if isinstance(model, MaskCLIPConfig) else model.config
    s = cfg.image_size
    with torch.device("meta"):
        meta = MaskCLIP(cfg).eval()
        x = torch.empty(batch, 3, s, s)
        text = torch.empty(2, cfg.clip.embed_dim)
        stages = {}
        with FlopCounterMode(display=False) as fc:
            cls, maps = meta.clip_features(x)
        stages["clip"] = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            features = meta.trunk(x, maps)
        stages["mae_vca"] = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            meta.verdict_head(cls, text)
        stages["heads_verdict"] = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            meta.mask_head(features, text)
        stages["heads_mask"] = fc.get_total_flops()
        stages["heads"] = stages["heads_verdict"] + stages["heads_mask"]
        with FlopCounterMode(display=False) as fc:
            meta.compute_text_embeddings()
        stages["text_once"] = fc.get_total_flops()
    gmacs = {k: v / 2e9 for k, v in stages.items()}  # FlopCounter counts 2 FLOPs per MAC
    gmacs["image_total"] = gmacs["clip"] + gmacs["mae_vca"] + gmacs["heads"]
    return gmacs


def describe(model: MaskCLIP, source: str) -> dict:
    parts = {name: sum(p.numel() for p in params) for name, params in model.parts().items()}
    params = list(model.parameters())
    cfg = model.config
    return {
        "source": source,
        "config": cfg.name,
        "input": {"shape": [3, cfg.image_size, cfg.image_size], "clip_input": cfg.clip.image_size},
        "parameters": {
            "total": sum(p.numel() for p in params),
            "trainable": sum(p.numel() for p in params if p.requires_grad),
            "parts": parts,
        },
        "gmacs": {k: round(v, 3) for k, v in count_macs(model).items()},
    }


@command("maskclip-info", extra="train", quiet=True)
@click.option("--config", "config_name", type=click.Choice(list_configs()), help="A registered config (built on meta).")
@click.option("--checkpoint", type=click.Path(), help="A MaskCLIP checkpoint (.safetensors + .json, or its folder).")
@click.option(
    "--backends",
    "list_backends",
    is_flag=True,
    help="List the runtime's backends (in the order --backend auto tries them), whether each can run here, and "
    "why not (needs no torch).",
)
@json_option("the description (keys parameters.total, parameters.trainable, ...; with --backends: backends)")
def main(config_name: str | None, checkpoint: str | None, list_backends: bool, json_path: str | None) -> None:
    """Describe a MaskCLIP model: parameters (total, trainable, per part), input size and GMACs per image.

    With --config the model is built on PyTorch's meta device: nothing is downloaded or allocated.
    Without either option, the embedded demo model is described.
    """
    if config_name and checkpoint:
        raise click.UsageError("give --config or --checkpoint, not both")
    if list_backends:
        if config_name or checkpoint:
            raise click.UsageError("--backends describes this machine, not a model: give it alone")
        _show_backends(json_path)
        return
    import torch

    from .model import MaskCLIP

    if checkpoint:
        from .checkpoint import read_checkpoint_config

        cfg = read_checkpoint_config(checkpoint)
        source = checkpoint
    else:
        cfg = get_config(config_name or "tiny")
        source = f"config {cfg.name}" if config_name else "embedded demo model (config tiny)"
    with torch.device("meta"):
        model = MaskCLIP(cfg)
    info = describe(model, source)
    if json_path:
        write_json(info, json_path)
        return
    p = info["parameters"]
    click.echo(f"MaskCLIP {info['config']}  ({source})")
    click.echo(f"input           3 x {cfg.image_size} x {cfg.image_size} (CLIP branch at {cfg.clip.image_size})")
    click.echo(f"parameters      {p['total']:,} total, {p['trainable']:,} trainable")
    for name, n in p["parts"].items():
        click.echo(f"  {name:<14}{n:>14,}")
    g = info["gmacs"]
    click.echo(
        f"GMACs / image   {g['image_total']:.1f} (CLIP {g['clip']:.1f}, MAE+VCA {g['mae_vca']:.1f}, "
        f"heads {g['heads']:.1f}); text pass {g['text_once']:.1f} once, cached"
    )
    screen = g["clip"] + g["heads_verdict"]
    click.echo(f"verdict alone   {screen:.1f} (CLIP + VSA: the cascade's screen graph; the mask adds the rest)")


def _show_backends(json_path: str | None) -> None:
    from maskclip_runtime.backends.registry import availability

    rows = availability()
    if json_path:
        write_json({"backends": rows}, json_path)
        return
    width = max(len(row["name"]) for row in rows)
    for row in rows:
        state = "available" if row["available"] else f"unavailable: {row['reason']}"
        click.echo(f"{row['name']:<{width}}  {state}")


if __name__ == "__main__":
    main()
