"""`maskclip-export`: MaskCLIP -> verified ONNX artifact (optionally TensorRT engines).

Formats and the flags each takes (Ultralytics-style table; invalid combinations fail before any work):

  --precision  flags                 graph
  fp32         (default)             plain fp32 ONNX
  fp16                               mixed precision, LayerNorm/Softmax/Sigmoid in fp32
  int8         --calib DIR           static QDQ, symmetric (TensorRT-compatible)
  int8-cpu     --calib DIR           ONNX Runtime CPU: dynamic int8 linear layers, static
                                     int8 convolutions (fastest on CPU; not for TensorRT)
  (the choices and what each allows come from maskclip_runtime.contract.precision_table; each row but
  the default also has the design card's shorthand flag: --fp16, --int8, --int8-cpu, ...)
  + --split (CLIP / trunk / heads graphs) or --cascade (screen / localise graphs: the runtime localises
  only images judged fake), --dynamic (batch 1..N), --trt (engines on a GPU machine)

Exit statuses are the table of maskclip_runtime.errors: 2 usage error or unusable input (found before
the model is loaded where possible), 3 the verification gate (or TensorRT's op check) refused the
graphs, 4 TensorRT is not available here (--trt; the ONNX artifact is kept), 5 the engine build failed.
torch, ONNX and the export modules are imported inside the command: `--help` needs none of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from maskclip_runtime.backends import registry
from maskclip_runtime.command import command
from maskclip_runtime.contract.engine_header import TRT_COMPAT
from maskclip_runtime.contract.precision_table import (
    DEFAULT_PRECISION,
    PRECISIONS,
    TENSORRT,
    precision_row,
    precisions_for,
)
from maskclip_runtime.errors import BackendUnavailable, InputError, NotFinished, UsageError, message_of

if TYPE_CHECKING:
    from maskclip_runtime.contract.manifest import Manifest

    from .exporter import ModelSource


def load_source(checkpoint: str | None, config: str | None) -> ModelSource:
    """--checkpoint (optionally checked against --config), --config alone (random init), or the demo model."""
    import torch

    from maskclip_core.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_config, weights_digest
    from maskclip_core.config import get_config
    from maskclip_core.model import build_model
    from maskclip_runtime.contract.manifest import DEMO_CARD

    from .exporter import ExportError, ModelSource

    if config:
        get_config(config)  # an unknown name: UnknownConfig, status 2
    if checkpoint:
        found = read_checkpoint_config(checkpoint)
        if config and found.name != config:
            raise ExportError(f"{checkpoint}: checkpoint is config {found.name!r}, not --config {config!r}")
        model = load_checkpoint(checkpoint)
        return ModelSource(model, str(Path(checkpoint).resolve()), weights_digest(model), owned=True)
    if config:
        torch.manual_seed(0)  # random init, reproducible ids across runs
        model = build_model(config).eval()
        return ModelSource(model, f"random init ({config})", weights_digest(model), owned=True)
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
    return ModelSource(model, "embedded demo model", weights_digest(model), DEMO_CARD, owned=True)


def _build_engines(out: Path, calib: str | None, calib_count: int, compat: tuple[str, ...]) -> None:
    """--trt: engines into the installed artifact; TensorRT missing -> status 4, a failed build 5 (ONNX kept)."""
    from maskclip_runtime.kernel.inputs import image_files

    try:
        from .tensorrt import build_engines
    except ImportError as exc:
        raise BackendUnavailable(
            f"TensorRT export is not available in this install ({exc}); the ONNX artifact is at {out}"
        ) from None
    calib_images = image_files(calib)[:calib_count] if calib else ()
    try:
        engines = build_engines(out, calib_images=calib_images, log=lambda m: click.echo(m, err=True), compat=compat)
    except BackendUnavailable as exc:
        raise BackendUnavailable(f"TensorRT is not available: {exc}; the ONNX artifact is at {out}") from None
    except InputError:  # a precision plan or a portability TensorRT cannot build: status 2
        raise
    except (ValueError, RuntimeError) as exc:  # the engine build failed
        raise NotFinished(f"TensorRT engine build failed: {message_of(exc)}; the ONNX artifact is at {out}") from None
    portable = f" (portable: {', '.join(compat)})" if compat else ""
    click.echo(f"TensorRT: {len(engines)} engine(s) written into {out}{portable}")


def _export_summary(manifest: Manifest, out: Path) -> str:
    """The end-of-run line: graphs and size, the gate images' verdicts by the artifact, flips, time, and
    the export's peak resident memory (what a machine needs to run it)."""
    from maskclip_runtime.kernel.memory import peak_resident_bytes

    megabytes = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6
    line = f"maskclip-export: {len(manifest.graphs)} graph(s), {megabytes:.1f} MB"
    report = manifest.verification
    if not report.get("skipped"):
        fake = sum(image["fake_prob"] > report["threshold"] for image in report["per_image"])
        line += (
            f"; gate on {report['images']} images: {report['images'] - fake} real, {fake} fake by the artifact, "
            f"{report['flips']} flips against PyTorch"
        )
    return f"{line}; {sum(manifest.export_seconds.values()):.0f} s; peak memory {peak_resident_bytes() / 1e9:.2f} GB"


# The design card's spelling: --fp16, --int8, --int8-cpu ... one flag per non-default row of the table.
SHORTHANDS = tuple(name for name in PRECISIONS if name != DEFAULT_PRECISION)
_SHORTHANDS_KEY = "maskclip_export.precision_shorthands"


def _note_shorthand(ctx: click.Context, param: click.Parameter, given: bool) -> None:
    if given:
        ctx.meta.setdefault(_SHORTHANDS_KEY, []).append(param.opts[0].removeprefix("--"))


def precision_shorthands(function):
    """Add `--NAME` (same as `--precision NAME`) for every shorthand; `chosen_precision` reads them."""
    for name in reversed(SHORTHANDS):
        function = click.option(
            f"--{name}", is_flag=True, expose_value=False, callback=_note_shorthand,
            help=f"Same as --precision {name}.",
        )(function)  # fmt: skip
    return function


def chosen_precision(precision: str, precision_given: bool, shorthands: list[str]) -> str:
    """The precision of `--precision` and its shorthand flags; two shorthands, or a shorthand with another
    --precision, are a usage error."""
    if len(shorthands) > 1:
        raise UsageError(f"{' and '.join('--' + s for s in shorthands)} are exclusive: pick one precision")
    if not shorthands:
        return precision
    (shorthand,) = shorthands
    if precision_given and precision != shorthand:
        raise UsageError(f"--{shorthand} means --precision {shorthand}, not --precision {precision}: pick one")
    return shorthand


@command("maskclip-export", extra="export")
@click.option("--checkpoint", type=click.Path(), help="MaskCLIP checkpoint (.safetensors + .json, or folder).")
@click.option("--config", "config_name", help="Config name (tiny, opensdi-vitl14); alone: random init.")
@click.option("--out", required=True, type=click.Path(), help="Artifact folder to write.")
@click.option("--opset", default=17, show_default=True, type=int, help="ONNX opset (17..20).")
@click.option("--batch", default=1, show_default=True, type=int, help="Batch size (static), or the max with --dynamic.")
@click.option("--dynamic", is_flag=True, help="Dynamic batch from 1 to --batch.")
@click.option(
    "--precision",
    type=click.Choice(list(PRECISIONS)),
    default=DEFAULT_PRECISION,
    show_default=True,
    help="Graph precision: "
    + "; ".join(
        f"{row.name}: {row.help}"
        + (" (needs --calib)" if row.calibrated else "")
        + ("" if row.tensorrt else ", no --trt")
        for row in PRECISIONS.values()
    )
    + ". Each has a shorthand flag: "
    + ", ".join(f"--{name}" for name in SHORTHANDS)
    + ".",
)
@precision_shorthands
@click.option("--calib", help="Calibration images for the int8 precisions: folder or glob.")
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
    "--trt-compat",
    type=click.Choice(list(TRT_COMPAT)),
    multiple=True,
    help="Portable engines (with --trt; repeat for both; not on Jetson): "
    + "; ".join(f"{kind}: {promise}" for kind, promise in TRT_COMPAT.items())
    + ".",
)
@click.option(
    "--calibration",
    type=click.Path(dir_okay=False),
    help="Verdict calibration record from maskclip-calibrate, stored in the manifest (not int8's --calib).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
def main(
    checkpoint, config_name, out, opset, batch, dynamic, precision, calib, calib_count, split, cascade,
    verify_images, no_verify, trt, trt_compat, calibration, quiet,
):  # fmt: skip
    """Export MaskCLIP to a verified ONNX artifact folder (manifest.json + graphs)."""
    ctx = click.get_current_context()
    precision = chosen_precision(
        precision,
        ctx.get_parameter_source("precision") is not click.core.ParameterSource.DEFAULT,
        ctx.meta.get(_SHORTHANDS_KEY, []),
    )
    if split and cascade:
        raise UsageError("--split and --cascade are exclusive: pick one topology")
    if trt and not precision_row(precision).tensorrt:
        raise UsageError(
            f"TensorRT cannot build {precision} graphs: --trt takes --precision {' / '.join(precisions_for(TENSORRT))}"
        )
    if trt_compat and not trt:
        raise UsageError("--trt-compat says how TensorRT engines are built: it needs --trt")
    compat: tuple[str, ...] = ()
    if trt_compat:
        from .tensorrt import check_compat

        compat = check_compat(trt_compat)  # on Jetson: refused before any work, TensorRT installed or not
    if trt:
        registry.require(TENSORRT)  # no TensorRT or no GPU here: status 4 before minutes of export

    from maskclip_runtime.contract.manifest import BatchSpec
    from maskclip_runtime.contract.verdict_calibration import read_calibration

    from .exporter import ExportOptions, GateFailed, check_output_location, export_artifact

    try:
        options = ExportOptions(
            out=Path(out),
            precision=precision,
            topology="split" if split else "cascade" if cascade else "fused",
            batch=BatchSpec.up_to(batch) if dynamic else BatchSpec.fixed(batch),
            opset=opset,
            calib=calib,
            calib_count=calib_count,
            verify_images=verify_images,
            verify=not no_verify,
            calibration=read_calibration(calibration) if calibration else None,
        )
    except ValueError as exc:  # e.g. an opset or batch the options cannot take
        raise UsageError(str(exc)) from None
    options.validate()
    check_output_location(options.out)  # before the model is even loaded
    source = load_source(checkpoint, config_name)
    click.echo(f"model: {source.model.config.name}, {source.description}", err=True)
    try:
        manifest = export_artifact(source, options, progress=not quiet, log=lambda m: click.echo(m, err=True))
    except GateFailed as exc:
        raise GateFailed(f"{exc}; report: {exc.report_path}", exc.report_path) from None
    report = manifest.verification
    if report.get("skipped"):
        click.echo("verification: skipped (--no-verify)", err=True)
    else:
        click.echo(
            f"verification passed on {report['images']} images: max |fake_prob| diff {report['max_prob_diff']:.2e}, "
            f"{report['flips']} flips, mask IoU mean {report['mask_iou_mean']:.4f} / min {report['mask_iou_min']:.4f}",
            err=True,
        )
    summary = f"{manifest.precision}, {manifest.topology}, {manifest.model_id}"
    click.echo(f"wrote {options.out} ({summary})")
    click.echo(_export_summary(manifest, options.out), err=True)
    if trt:
        _build_engines(options.out, calib, calib_count, compat)
