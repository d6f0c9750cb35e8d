"""Console scripts: maskclip-train, -eval, -synth, -import (maskclip-info lives in info.py).

Bad input (missing data, undecodable image, unknown config, unusable checkpoint) ends with one
line on stderr naming the file and a non-zero status, never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from maskclip_core.checkpoint import CheckpointError
from maskclip_core.data import DataError
from maskclip_core.weights import WeightsUnavailableError


def _fail(exc: Exception) -> None:
    message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc  # KeyError's str() adds quotes
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


USER_ERRORS = (DataError, CheckpointError, FileNotFoundError, KeyError, ValueError, WeightsUnavailableError)


@click.command(context_settings={"show_default": True})
@click.option("--data", required=True, help="OpenSDID parquet file/folder, folder layout, or HF data set name.")
@click.option("--split", default=None, help="Sub-folder (local) or split (hub) to train on, e.g. train.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder (log, checkpoints).")
@click.option("--config", default="opensdi-vitl14", help="Registered config name or a config JSON file.")
@click.option("--clip-weights", default=None, help="CLIP weights: 'openai' (hub) or a local file.")
@click.option("--mae-weights", default=None, help="MAE weights: timm tag or a local file.")
@click.option("--epochs", default=50, type=int)
@click.option("--batch-size", default=16, type=int, help="Images per process.")
@click.option("--lr", default=1e-4, type=float)
@click.option("--weight-decay", default=0.05, type=float, help="Not applied to biases and 1-D parameters.")
@click.option("--beta1", default=0.9, type=float)
@click.option("--beta2", default=0.999, type=float)
@click.option("--eps", default=1e-8, type=float)
@click.option("--seed", default=42, type=int)
@click.option("--workers", default=2, type=int, help="Data loader processes per training process.")
@click.option("--bf16/--no-bf16", default=False, help="bf16 autocast (CLIP stays fp32).")
@click.option("--clip-grad", default=None, type=float, help="Clip the gradient norm to this value.")
@click.option(
    "--skip-nonfinite/--no-skip-nonfinite",
    default=True,
    help="Skip steps whose gradients hold inf/NaN, as the authors' GradScaler does.",
)
@click.option("--max-steps", default=None, type=int, help="Stop after this many steps (schedule unchanged).")
@click.option("--save-every", default=500, type=int, help="Steps between checkpoints of OUT/last.")
@click.option("--log-every", default=10, type=int)
@click.option("--resume", default=None, type=click.Path(exists=True), help="Checkpoint folder (OUT/last).")
@click.option("--device", default="auto", help="auto, cpu, cuda or cuda:N.")
def train(**kwargs):
    """Train MaskCLIP with the paper's recipe. Multi-GPU / multi-node: launch with torchrun."""
    from maskclip_core.train import TrainArgs
    from maskclip_core.train import train as run

    try:
        path = run(TrainArgs(**kwargs))
    except KeyboardInterrupt:
        sys.exit(130)
    except USER_ERRORS as exc:
        _fail(exc)
    click.echo(f"checkpoint: {path}")


@click.command(context_settings={"show_default": True})
@click.option("--data", required=True, help="OpenSDID parquet file/folder, folder layout, or HF data set name.")
@click.option("--split", default=None, help="Sub-folder (local) or split (hub), e.g. test.")
@click.option("--checkpoint", default=None, type=click.Path(), help="PyTorch checkpoint (folder or .safetensors).")
@click.option("--artifact", default=None, type=click.Path(), help="Exported artifact folder (via the runtime).")
@click.option("--backend", default="auto", help="Artifact backend: auto, onnxruntime or tensorrt.")
@click.option("--device", default=None, help="cpu, cuda or cuda:N (default: GPU if available).")
@click.option("--batch-size", default=16, type=int)
@click.option("--workers", default=2, type=int)
@click.option("--limit", default=None, type=int, help="Evaluate only the first N images (quick checks).")
@click.option("--output", default=None, type=click.Path(dir_okay=False), help="Save the report as JSON here.")
def evaluate(data, split, checkpoint, artifact, backend, device, batch_size, workers, limit, output):
    """Score a checkpoint or an exported artifact: IoU/F1 per generator + AVG, detection F1/Acc/AUC.

    Without --checkpoint or --artifact the embedded demo model is evaluated.
    """
    from maskclip_core.data import open_samples
    from maskclip_core.evaluate import ArtifactPredictor, TorchPredictor, evaluate, report, save_report

    if checkpoint and artifact:
        _fail(ValueError("give --checkpoint or --artifact, not both"))
    try:
        samples = open_samples(data, split)[:limit]
        if artifact:
            predictor, source = ArtifactPredictor(artifact, backend, device), artifact
        else:
            import torch

            from maskclip_core.checkpoint import load_checkpoint
            from maskclip_core.demo import DEMO_CHECKPOINT

            if not checkpoint:
                click.echo(f"no --checkpoint given: evaluating the embedded demo model ({DEMO_CHECKPOINT})", err=True)
            source = checkpoint or str(DEMO_CHECKPOINT)
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            predictor = TorchPredictor(load_checkpoint(source), device)
        summary = evaluate(predictor, samples, batch_size, workers)
    except USER_ERRORS as exc:
        _fail(exc)
    except RuntimeError as exc:  # runtime's BackendUnavailable / ArtifactError are one-line messages too
        _fail(exc)
    doc = report(summary, model=source, predictor=predictor.name, data=data, split=split, images=len(samples))
    click.echo(doc["table"])
    if output:
        save_report(doc, output)
        click.echo(f"saved {output}", err=True)


@click.command(context_settings={"show_default": True})
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (train/, test/).")
@click.option("--seed", default=0, type=int)
@click.option("--count", default=800, type=int, help="Training images per generator (half real).")
@click.option("--test-count", default=200, type=int, help="Held-out images per generator (own crops and edits).")
@click.option("--generators", default=None, help="Comma-separated subset of sd15-like, sdxl-like, flux-like.")
@click.option("--min-size", default=128, type=int, help="Shortest long side of an image.")
@click.option("--max-size", default=192, type=int, help="Longest long side of an image.")
def synth(out, seed, count, test_count, generators, min_size, max_size):
    """Write a synthetic OpenSDID-format proxy data set (NOT OpenSDID) from bundled photos."""
    from tqdm import tqdm

    from maskclip_core.data.synth import GENERATORS, synthesize

    names = generators.split(",") if generators else list(GENERATORS)
    if min_size < 32 or max_size < min_size:
        _fail(ValueError(f"need 32 <= --min-size <= --max-size, got {min_size}, {max_size}"))
    try:
        with tqdm(total=(count + test_count) * len(names), desc="synth", dynamic_ncols=True) as bar:
            path = synthesize(Path(out), seed, count, test_count, names, min_size, max_size, progress=bar)
    except ValueError as exc:
        _fail(exc)
    click.echo(f"wrote {path} (synthetic proxy, not OpenSDID)")


@click.command(context_settings={"show_default": True})
@click.argument("source", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Checkpoint folder to write.")
@click.option("--config", default="opensdi-vitl14", help="Registered config name or a config JSON file.")
def import_checkpoint(source, out, config):
    """Convert the authors' checkpoint-N.pth (or a bare state dict) into a safetensors checkpoint folder.

    Nothing in SOURCE is executed (weights-only unpickling); the mapping is strict: every tensor
    used, every tensor of the model produced, every shape checked.
    """
    from maskclip_core.authors import import_authors_checkpoint
    from maskclip_core.train import resolve_config

    try:
        path = import_authors_checkpoint(source, out, resolve_config(config))
    except USER_ERRORS as exc:
        _fail(exc)
    click.echo(f"checkpoint: {path.parent}")


if __name__ == "__main__":  # `python -m maskclip_core.cli ...` runs training (torchrun -m needs a module)
    train()
