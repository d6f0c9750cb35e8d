"""The embedded demo model: `tiny` trained on the synthetic proxy edits (see weights/MODEL_CARD.md).

No trained MaskCLIP checkpoint has been published and no hub is reachable offline, so this small
model is the toolkit's default when no model is given. It detects and localises the synthetic
generators' fingerprints; it knows nothing about real diffusion edits.

MaskCLIP keeps CLIP frozen and relies on its pretraining; `tiny` has no pretrained CLIP, and a
frozen RANDOM tower gives the detection head features no better than chance (a linear probe on
them reaches AUC ~0.6 on the proxy). So the demo is built in two stages, both reproducible with
`python -m maskclip_core.demo --work DIR`:
1. "pretrain" the tiny CLIP visual tower on the proxy training split (image real/fake on the mean
   tapped CLS token + patch-level fake maps on the tapped patch tokens), standing in for CLIP's
   pretraining;
2. train MaskCLIP with the usual recipe (`maskclip_core.train`) on top of that frozen tower.
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from maskclip_core.checkpoint import load_checkpoint
from maskclip_core.config import get_config
from maskclip_core.data import MaskCLIPDataset, open_samples
from maskclip_core.model import MaskCLIP
from maskclip_core.model.clip_tower import ClipTower
from maskclip_core.train import cosine_lr
from maskclip_runtime.command import command

DEMO_CHECKPOINT = Path(__file__).resolve().parent / "weights" / "maskclip-tiny-demo.safetensors"
DEMO_MODEL_CARD = DEMO_CHECKPOINT.parent / "MODEL_CARD.md"


def load_demo_model(map_location: str = "cpu") -> MaskCLIP:
    """The demo MaskCLIP (`tiny` config, 128 px) in eval mode."""
    return load_checkpoint(DEMO_CHECKPOINT, map_location)


def pretrain_clip(
    data: str,
    split: str,
    out_file: str | Path,
    config: str = "tiny",
    steps: int = 600,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 42,
    workers: int = 1,
) -> Path:
    """Stage 1: train the visual tower of `config`'s CLIP on the proxy task; save the open_clip state dict."""
    cfg = get_config(config)
    torch.manual_seed(seed)
    tower = ClipTower(cfg.clip).train()
    tower.model.visual.requires_grad_(True)
    width = cfg.clip.width
    heads = nn.ModuleDict({"image": nn.Linear(width, 2), "patch": nn.Linear(width, 1)})
    params = [*tower.model.visual.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    dataset = MaskCLIPDataset(open_samples(data, split), cfg.preprocess_spec(), train=True, seed=seed)
    grid = cfg.clip.grid
    step, epoch = 0, 0
    with tqdm(total=steps, desc="pretrain CLIP", dynamic_ncols=True) as bar:
        while step < steps:
            dataset.set_epoch(epoch)
            loader = DataLoader(
                dataset,
                batch_size,
                shuffle=True,
                num_workers=workers,
                drop_last=True,
                generator=torch.Generator().manual_seed(seed + epoch),
            )
            for batch in loader:
                x = F.interpolate(batch["image"], size=cfg.clip.image_size, mode="bilinear", align_corners=True)
                cls, maps = tower.visual_taps(x)  # [B,T,W], [B,T,W,g,g]
                logits = heads["image"](cls.mean(1))  # [B,2]
                patch = heads["patch"](maps.mean(1).flatten(2).transpose(1, 2))  # [B,g*g,1]
                target = F.adaptive_avg_pool2d(batch["mask"], grid).flatten(1)  # [B,g*g] fake fraction per patch
                loss = F.cross_entropy(logits, batch["label"]) + F.binary_cross_entropy_with_logits(
                    patch[..., 0], target
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                for group in optimizer.param_groups:
                    group["lr"] = cosine_lr(lr, step, steps)
                optimizer.step()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
                if step >= steps:
                    break
            epoch += 1
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in tower.model.state_dict().items()}, str(out_file))
    return out_file


@command("maskclip_core.demo", extra="train", show_default=True)
@click.option("--work", required=True, type=click.Path(file_okay=False), help="Folder for data, runs and metrics.")
@click.option("--clip-steps", default=400, type=int, help="Stage 1 steps (CLIP stand-in pretraining).")
@click.option("--epochs", default=2, type=int, help="Stage 2 epochs (MaskCLIP training).")
@click.option("--lr", default=1e-3, type=float, help="Stage 2 peak learning rate.")
@click.option("--workers", default=1, type=int)
@click.option("--install/--no-install", default=False, help="Write the result to maskclip_core/weights/.")
def main(work, clip_steps, epochs, lr, workers, install):
    """Rebuild the demo model: proxy data, CLIP stand-in pretraining, MaskCLIP training, held-out metrics.

    The defaults are the recipe of the shipped model (weights/MODEL_CARD.md): 2,400 proxy training
    images, 400 stage-1 steps, then 2 epochs (300 steps) of maskclip_core.train at lr 1e-3.
    """
    from maskclip_core.checkpoint import save_checkpoint
    from maskclip_core.data.synth import synthesize
    from maskclip_core.evaluate import TorchPredictor, evaluate, report
    from maskclip_core.train import TrainArgs, train
    from maskclip_runtime.command import write_json

    work = Path(work)
    timings = {}
    start = time.time()
    data = synthesize(work / "synth", seed=0, train_count=800, test_count=200, min_size=128, max_size=128)
    timings["synth_s"] = time.time() - start
    start = time.time()
    clip = pretrain_clip(str(data), "train", work / "clip-tiny-proxy.safetensors", steps=clip_steps, workers=workers)
    timings["clip_pretrain_s"] = time.time() - start
    start = time.time()
    args = TrainArgs(
        data=str(data),
        split="train",
        out=str(work / "run"),
        config="tiny",
        clip_weights=str(clip),
        epochs=epochs,
        lr=lr,
        workers=workers,
        save_every=10_000,
    )
    last = train(args)
    timings["train_s"] = time.time() - start
    model = load_checkpoint(last)
    summary = evaluate(TorchPredictor(model), open_samples(data, "test"), batch_size=32, workers=workers)
    doc = report(summary, model=str(last), data=str(data), split="test", timings=timings)
    write_json(doc, str(work / "metrics.json"))
    click.echo(doc["table"])
    if install:
        save_checkpoint(model, DEMO_CHECKPOINT, metadata={"trained_on": "maskclip synthetic proxy (not OpenSDID)"})
        write_json(doc, str(DEMO_CHECKPOINT.parent / "metrics.json"))
        click.echo(f"installed {DEMO_CHECKPOINT}")


if __name__ == "__main__":
    main()
