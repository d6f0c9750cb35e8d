"""`maskclip-export`: MaskCLIP -> verified ONNX artifact (optionally TensorRT engines).

Formats and the flags each takes (Ultralytics-style table; invalid combinations fail before any work):

  precision  flags                               graph
  fp32       (default)                           plain fp32 ONNX
  fp16       --fp16                              mixed precision, LayerNorm/Softmax/Sigmoid in fp32
  int8       --int8 --calib DIR [--calib-count]  static QDQ, symmetric (TensorRT-compatible)
  int8-cpu   --int8-cpu --calib DIR              ONNX Runtime CPU: dynamic int8 linear layers, static
                                                 int8 convolutions (fastest on CPU; not for TensorRT)
  + --split (CLIP / trunk / heads graphs) or --cascade (screen / localise graphs: the runtime localises
  only images judged fake), --dynamic (batch 1..N), --trt (engines on a GPU machine)
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import torch

from maskclip_runtime.backends.base import BackendUnavailable
from maskclip_runtime.calibration import read_calibration
from maskclip_runtime.preprocess import ImageLoadError

from .exporter import ExportError, ExportOptions, GateFailed, ModelSource, check_output_location, export_artifact
from .manifest import state_dict_digest
from .onnx_export import BatchSpec
from .op_support import UnsupportedOpsError
from .verify import VerificationError


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def load_source(checkpoint: str | None, config: str | None) -> ModelSource:
    """--checkpoint (optionally checked against --config), --config alone (random init), or the demo model."""
    from maskclip_core.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_config, weights_digest
    from maskclip_core.config import get_config
    from maskclip_core.model import build_model

    if config:
        try:
            get_config(config)
        except KeyError as exc:
            raise ExportError(str(exc.args[0])) from None
    if checkpoint:
        try:
            found = read_checkpoint_config(checkpoint)
            if config and found.name != config:
                raise ExportError(f"{checkpoint}: checkpoint is config {found.name!r}, not --config {config!r}")
            model = load_checkpoint(checkpoint)
        except CheckpointError as exc:
            raise ExportError(str(exc)) from None
        return ModelSource(model, str(Path(checkpoint).resolve()), weights_digest(checkpoint))
    if config:
        torch.manual_seed(0)  # random init, reproducible ids across runs
        model = build_model(config).eval()
        return ModelSource(model, f"random init ({config})", state_dict_digest(model))
    try:
        from maskclip_core.demo import load_demo_model
    except ImportError:
        raise ExportError(
            "no embedded demo model in this install; pass --checkpoint PATH or --config NAME (random init)"
        ) from None
    try:
        model = load_demo_model().eval()
    except CheckpointError as exc:
        raise ExportError(f"embedded demo model unavailable ({exc}); pass --checkpoint or --config") from None
    return ModelSource(model, "embedded demo model", state_dict_digest(model))


def _build_engines(out: Path, calib: str | None, calib_count: int) -> None:
    """--trt: engines into the installed artifact; TensorRT missing -> one line and exit 3 (ONNX kept)."""
    from .verify import image_paths

    try:
        from .tensorrt import build_engines
    except ImportError as exc:
        _fail(f"TensorRT export is not available in this install ({exc}); the ONNX artifact is at {out}", 3)
    calib_images = image_paths(calib)[:calib_count] if calib else ()
    try:
        engines = build_engines(out, calib_images=calib_images, log=lambda m: click.echo(m, err=True))
    except BackendUnavailable as exc:
        _fail(f"TensorRT is not available: {exc}; the ONNX artifact is at {out}", 3)
    except (ValueError, RuntimeError) as exc:  # precision plan refused, engine build failed
        _fail(f"TensorRT engine build failed: {str(exc).splitlines()[0]}; the ONNX artifact is at {out}", 3)
    click.echo(f"TensorRT: {len(engines)} engine(s) written into {out}")


def _export_summary(manifest: dict, out: Path) -> str:
    """The end-of-run line: graphs and size, the gate images' verdicts by the artifact, flips, time."""
    megabytes = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6
    line = f"maskclip-export: {len(manifest['graphs'])} graph(s), {megabytes:.1f} MB"
    report = manifest["verification"]
    if not report.get("skipped"):
        fake = sum(image["fake_prob"] > report["threshold"] for image in report["per_image"])
        line += (
            f"; gate on {report['images']} images: {report['images'] - fake} real, {fake} fake by the artifact, "
            f"{report['flips']} flips against PyTorch"
        )
    return f"{line}; {sum(manifest['export_seconds'].values()):.0f} s"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--checkpoint", type=click.Path(), help="MaskCLIP checkpoint (.safetensors + .json, or folder).")
@click.option("--config", "config_name", help="Config name (tiny, opensdi-vitl14); alone: random init.")
@click.option("--out", required=True, type=click.Path(), help="Artifact folder to write.")
@click.option("--opset", default=17, show_default=True, type=int, help="ONNX opset (17..20).")
@click.option("--batch", default=1, show_default=True, type=int, help="Batch size (static), or the max with --dynamic.")
@click.option("--dynamic", is_flag=True, help="Dynamic batch from 1 to --batch.")
@click.option("--fp16", is_flag=True, help="Mixed-precision fp16 graph (sensitive ops in fp32).")
@click.option("--int8", is_flag=True, help="Static int8 QDQ graph, symmetric: the TensorRT int8 graph; needs --calib.")
@click.option(
    "--int8-cpu",
    is_flag=True,
    help="Int8 graph for ONNX Runtime on CPU (dynamic linear layers, static convolutions); needs --calib. "
    "Not buildable by TensorRT: use --int8 there.",
)
@click.option("--calib", help="Calibration images for --int8 / --int8-cpu: folder or glob.")
@click.option("--calib-count", default=32, show_default=True, type=int, help="Calibration images to use.")
@click.option("--split", is_flag=True, help="Separate CLIP / trunk / heads graphs instead of one fused graph.")
@click.option(
    "--cascade",
    is_flag=True,
    help="A screen graph (image -> verdict + CLIP maps) and a localise graph (-> mask), so the runtime can "
    "compute masks only for images judged fake (maskclip-run --masks-for).",
)
@click.option("--verify-images", help="Verification images: folder or glob (default: bundled samples + edits).")
@click.option("--no-verify", is_flag=True, help="Skip the verification gate (recorded in the manifest).")
@click.option("--trt", is_flag=True, help="Also build TensorRT engines (needs TensorRT and a GPU).")
@click.option(
    "--calibration",
    type=click.Path(dir_okay=False),
    help="Verdict calibration record from maskclip-calibrate, stored in the manifest (not int8's --calib).",
)
@click.option("--quiet", is_flag=True, help="No progress display.")
def main(
    checkpoint, config_name, out, opset, batch, dynamic, fp16, int8, int8_cpu, calib, calib_count, split, cascade,
    verify_images, no_verify, trt, calibration, quiet,
):  # fmt: skip
    """Export MaskCLIP to a verified ONNX artifact folder (manifest.json + graphs)."""
    chosen = [flag for flag, on in (("--fp16", fp16), ("--int8", int8), ("--int8-cpu", int8_cpu)) if on]
    if len(chosen) > 1:
        _fail(f"{' and '.join(chosen)} are exclusive: pick one precision")
    if split and cascade:
        _fail("--split and --cascade are exclusive: pick one topology")
    if int8_cpu and trt:
        _fail(
            "--int8-cpu graphs use ONNX Runtime's dynamic quantisation, which TensorRT cannot build: use --int8 --trt"
        )
    try:
        options = ExportOptions(
            out=Path(out),
            precision=chosen[0].lstrip("-") if chosen else "fp32",
            topology="split" if split else "cascade" if cascade else "fused",
            batch=BatchSpec(size=batch, dynamic=dynamic),
            opset=opset,
            calib=calib,
            calib_count=calib_count,
            verify_images=verify_images,
            verify=not no_verify,
            calibration=read_calibration(calibration) if calibration else None,
        )
        options.validate()
        check_output_location(options.out)  # before the model is even loaded
    except (ExportError, ValueError) as exc:  # CalibrationError is a ValueError
        _fail(str(exc))
    try:
        source = load_source(checkpoint, config_name)
        click.echo(f"model: {source.model.config.name}, {source.description}", err=True)
        manifest = export_artifact(source, options, progress=not quiet, log=lambda m: click.echo(m, err=True))
    except GateFailed as exc:
        _fail(f"{exc}; report: {exc.report_path}", 2)
    except (ExportError, UnsupportedOpsError, VerificationError, ImageLoadError, BackendUnavailable) as exc:
        _fail(str(exc))
    report = manifest["verification"]
    if report.get("skipped"):
        click.echo("verification: skipped (--no-verify)", err=True)
    else:
        click.echo(
            f"verification passed on {report['images']} images: max |fake_prob| diff {report['max_prob_diff']:.2e}, "
            f"{report['flips']} flips, mask IoU mean {report['mask_iou_mean']:.4f} / min {report['mask_iou_min']:.4f}",
            err=True,
        )
    summary = f"{manifest['precision']}, {manifest['topology']}, {manifest['model']['model_id']}"
    click.echo(f"wrote {options.out} ({summary})")
    click.echo(_export_summary(manifest, options.out), err=True)
    if trt:
        _build_engines(options.out, calib, calib_count)
