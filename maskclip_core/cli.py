"""Console scripts: maskclip-train, -eval, -synth, -import, -calibrate (maskclip-info lives in info.py).

Bad input (missing data, undecodable image, unknown config, unusable checkpoint) ends with one
line on stderr naming the file and exit status 2, never a traceback (the table of
maskclip_runtime.errors, through its command wrapper). torch and the model code are imported
inside the commands, so `--help` works in the runtime-only install.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from maskclip_runtime.backends import registry
from maskclip_runtime.command import command, json_option, option_group, write_json
from maskclip_runtime.errors import UsageError

# The core's own checks raise ValueError/KeyError for values the user gave (sizes, fractions, names).
USER_VALUE_ERRORS = (ValueError, KeyError)

# What maskclip-calibrate writes into --out.
RECORD_NAME = "calibration.json"
CHECK_NAME = "check.json"
RELIABILITY_NAME = "reliability.png"


@command("maskclip-train", extra="train", input_errors=USER_VALUE_ERRORS, show_default=True, quiet=True)
@click.option("--data", default=None, help="OpenSDID parquet file/folder, folder layout, or HF data set name.")
@click.option("--split", default=None, help="Sub-folder (local) or split (hub) to train on, e.g. train.")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Run folder (log, checkpoints).")
@click.option("--config", default="opensdi-vitl14", help="Registered config name or a config JSON file.")
@click.option("--clip-weights", default=None, help="CLIP weights: 'openai' (hub) or a local file.")
@click.option("--mae-weights", default=None, help="MAE weights: timm tag or a local file.")
@click.option("--random-init", is_flag=True, help="Let backbones without --clip-weights/--mae-weights start random.")
@click.option("--epochs", default=50, type=int)
@click.option("--batch", "batch_size", default=16, type=int, help="Images per batch, per process.")
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
@click.option(
    "--resume",
    default=None,
    type=click.Path(exists=True),
    help="Checkpoint folder (OUT/last) or run folder: continues with the run's own options.",
)
@click.option("--device", default="auto", help="auto, cpu, cuda or cuda:N.")
@click.option("--force", is_flag=True, help="Start even when the memory estimate exceeds what is available.")
def train(**kwargs):
    """Train MaskCLIP with the paper's recipe. Multi-GPU / multi-node: launch with torchrun.

    Backbones start from the pretrained weights given (opensdi-vitl14: --clip-weights openai
    --mae-weights vit_base_patch16_224.mae), or from random ones with --random-init. The memory the
    run needs is estimated first; a run that cannot fit is refused (--force runs it anyway).
    `--resume OUT/last` alone continues a run with its stored options; options given with it change
    the rest of the run, except data, split, config, seed, batch size and weights, which must match.
    The demo model's recipe is `python -m maskclip_core.demo --work DIR` (README).
    """
    from maskclip_core.data.dataset import training_split
    from maskclip_core.train import TrainArgs
    from maskclip_core.train import train as run
    from maskclip_core.train_options import resume_args

    given = {name: value for name, value in kwargs.items() if _given(name)}
    if kwargs["resume"]:
        args = resume_args(kwargs["resume"], given)
    elif not (kwargs["data"] and kwargs["out"]):
        raise UsageError("--data and --out are required (or --resume OUT/last to continue a run)")
    else:
        split = training_split(kwargs["data"], kwargs["split"])
        if split != kwargs["split"]:
            others = sorted(
                p.name for p in Path(kwargs["data"]).expanduser().iterdir() if p.is_dir() and p.name != split
            )
            click.echo(f"maskclip-train: {kwargs['data']} holds split folders ({split}/, {', '.join(others)}): "
                       f"training on {split}/ only (--split names another)", err=True)  # fmt: skip
        args = TrainArgs(**{**kwargs, "split": split})
    path = run(args)
    click.echo(f"checkpoint: {path}")


def _given(name: str) -> bool:
    """True when the option was set on the command line (or its environment variable), not left at its default."""
    from click.core import ParameterSource

    return click.get_current_context().get_parameter_source(name) not in (ParameterSource.DEFAULT, None)


def _open_predictor(checkpoint: str | None, artifact: str | None, backend: str, device: str | None):
    """--checkpoint, --artifact or (neither) the embedded demo model -> (predictor, source description)."""
    from maskclip_core.evaluate import ArtifactPredictor, TorchPredictor

    if checkpoint and artifact:
        raise UsageError("give --checkpoint or --artifact, not both")
    if artifact:
        return ArtifactPredictor(artifact, backend, device), artifact
    import torch

    from maskclip_core.checkpoint import load_checkpoint
    from maskclip_core.demo import DEMO_CHECKPOINT

    if not checkpoint:
        click.echo(f"no --checkpoint given: evaluating the embedded demo model ({DEMO_CHECKPOINT})", err=True)
    source = checkpoint or str(DEMO_CHECKPOINT)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return TorchPredictor(load_checkpoint(source), device), source


# The options that pick what is scored, shared by maskclip-eval and maskclip-calibrate.
_model_options = option_group(
    click.option("--data", default=None, help="OpenSDID parquet file/folder, folder layout, or HF data set name."),
    click.option("--split", default=None, help="Sub-folder (local) or split (hub), e.g. test."),
    click.option("--checkpoint", default=None, type=click.Path(), help="PyTorch checkpoint (folder or .safetensors)."),
    click.option("--artifact", default=None, type=click.Path(), help="Exported artifact folder (via the runtime)."),
    click.option("--backend", default="auto", type=click.Choice(registry.choices()), help="Backend of an --artifact."),
    click.option("--device", default=None, help="cpu, cuda or cuda:N (default: GPU if available)."),
    click.option("--batch", "batch_size", default=16, type=int, help="Images per forward pass."),
    click.option("--workers", default=2, type=int),
    click.option("--limit", default=None, type=int, help="Use only the first N images (quick checks)."),
)


def _beside(path: str | None, suffix: str) -> str | None:
    return None if path is None else str(Path(path).with_name(Path(path).stem + suffix))


@command("maskclip-eval", extra="train", input_errors=USER_VALUE_ERRORS, show_default=True, quiet=True)
@_model_options
@json_option("the report (with -, the tables go to stderr)")
@click.option(
    "--calibration",
    default=None,
    type=click.Path(dir_okay=False),
    help="Calibration record to measure (default: the artifact's own, if it has one).",
)
@click.option("--reliability", default=None, type=click.Path(dir_okay=False), help="Reliability diagram PNG path.")
@click.option("--robustness", is_flag=True, help="Also score under JPEG/WebP, downscale, blur, noise and crop.")
@click.option("--per-generator", default=None, type=int, help="Robustness on a stratified subset of N per generator.")
@click.option(
    "--tiles",
    is_flag=True,
    help="Score native-resolution masks as maskclip-run --tiles makes them (an artifact; without --artifact the "
    "runtime's embedded demo), at each image's own size instead of the model size.",
)
def evaluate(
    data, split, checkpoint, artifact, backend, device, batch_size, workers, limit, json_path, calibration,
    reliability, robustness, per_generator, tiles,
):  # fmt: skip
    """Score a checkpoint or an exported artifact: IoU/F1 per generator + AVG, detection F1/Acc/AUC.

    Without --checkpoint or --artifact the embedded demo model is evaluated. With a calibration
    record (--calibration, or one in the artifact's manifest): ECE, Brier, AUC and TPR at 1 %/5 %
    FPR before and after, and a reliability diagram (--reliability, default beside --json).
    With --robustness: the report per degradation as JSON, Markdown and a plot (beside --json).
    With --tiles: pixel metrics of tiled masks at each image's own size (a different scale from the
    default, which scores every mask at the model's input size as EVALUATION.md defines).
    """
    from maskclip_core.data import open_samples
    from maskclip_core.evaluate import collect, collect_tiled, report

    if not data:
        raise UsageError("--data is required")
    if per_generator is not None and not robustness:
        raise UsageError("--per-generator sizes the --robustness subset; add --robustness")
    if tiles and (checkpoint or robustness):
        raise UsageError("--tiles scores an exported artifact through the runtime, without --robustness: "
                         "give --artifact (maskclip-export makes one from a checkpoint)")  # fmt: skip
    if tiles and not artifact:
        from maskclip_runtime.detect.detector import DEMO_DIR

        artifact = str(DEMO_DIR)
        click.echo(f"no --artifact given: scoring the runtime's embedded demo artifact ({DEMO_DIR})", err=True)
    to_stdout = json_path == "-"
    file_path = None if to_stdout else json_path  # the figures go beside a report file
    predictor, source = _open_predictor(checkpoint, artifact, backend, device)  # a bad model: before the data
    samples = open_samples(data, split)[:limit]
    record = _calibration_to_measure(calibration, predictor)
    if robustness:
        _robustness(predictor, samples, source, data, split, per_generator, batch_size, workers, json_path)
        return
    started = time.perf_counter()
    if tiles:
        accumulator = collect_tiled(predictor.detector, samples)
    else:
        accumulator = collect(predictor, samples, batch_size, workers)
    seconds = time.perf_counter() - started
    summary = accumulator.summary()
    doc = report(summary, model=source, predictor=predictor.name, data=data, split=split, images=len(samples))
    doc["masks_scored_at"] = "native resolution, tiles" if tiles else f"model input ({predictor.spec.size} px)"
    click.echo(doc["table"], err=to_stdout)
    click.echo(_eval_summary(accumulator, predictor.threshold, seconds), err=True)
    if record is not None:
        if (record.fitted_on.get("data"), record.fitted_on.get("split")) == (str(data), split):
            click.echo("note: these images include the record's fitting data; its scores here are optimistic", err=True)
        doc["calibration"] = _measure_calibration(
            record, accumulator, reliability or _beside(file_path, "-reliability.png"), err=to_stdout
        )
    if json_path:
        write_json(doc, json_path)


def _eval_summary(accumulator, threshold: float, seconds: float) -> str:
    """The end-of-run line: images, verdicts at the threshold against the data's labels, images/s."""
    labels, fake_prob = accumulator.scores()
    flagged = int((fake_prob > threshold).sum())
    return (
        f"maskclip-eval: {len(labels)} images: {len(labels) - flagged} real, {flagged} fake at threshold {threshold} "
        f"(labelled {int((labels == 0).sum())} real, {int((labels == 1).sum())} fake), "
        f"{len(labels) / max(seconds, 1e-9):.1f} images/s"
    )


def _calibration_to_measure(path: str | None, predictor):
    from maskclip_runtime.contract.verdict_calibration import read_calibration

    if path:
        return read_calibration(path)
    detector = getattr(predictor, "detector", None)
    return detector.calibration if detector is not None else None


def _measure_calibration(record, accumulator, reliability: str | None, err: bool = False) -> dict:
    from maskclip_core.calibrate import calibration_report, format_calibration, save_reliability_diagram
    from maskclip_core.evaluate import without_nan

    labels, prob = accumulator.scores()
    measured = calibration_report(labels, prob, record)
    click.echo("\n" + format_calibration(measured), err=err)
    if reliability:
        Path(reliability).parent.mkdir(parents=True, exist_ok=True)
        save_reliability_diagram(labels, prob, record, reliability)
        click.echo(f"saved {reliability}", err=True)
    return without_nan(measured)


def _robustness(predictor, samples, source, data, split, per_generator, batch_size, workers, json_path) -> None:
    from maskclip_core.robustness import robustness, robustness_report, save_robustness, stratified_subset

    subset = stratified_subset(samples, per_generator)
    results = robustness(predictor, subset, batch_size, workers)
    doc = robustness_report(results, model=source, predictor=predictor.name, data=data, split=split, images=len(subset))
    click.echo(doc["markdown"], err=json_path == "-")
    if json_path == "-":
        write_json(doc, json_path)
    elif json_path:
        for path in save_robustness(doc, results, json_path, title=f"Robustness: {Path(source).name}"):
            click.echo(f"saved {path}", err=True)


@command("maskclip-calibrate", extra="train", input_errors=USER_VALUE_ERRORS, show_default=True, quiet=True)
@_model_options
@click.option(
    "--out",
    default=None,
    type=click.Path(file_okay=False),
    help=f"Folder to write {RECORD_NAME} (the record), {CHECK_NAME} and {RELIABILITY_NAME} into.",
)
@click.option("--fit-fraction", default=0.5, type=float, help="Share of the data to fit on; the rest measures it.")
@click.option("--seed", default=0, type=int, help="Seed of the fit/check split (stratified by generator, label).")
@click.option("--target-fpr", "target_fprs", multiple=True, type=float, default=(0.01, 0.05), help="Operating points.")
@click.option("--attach", default=None, type=click.Path(), help="Store the record in this artifact's manifest.")
@click.option("--record", default=None, type=click.Path(dir_okay=False), help="With --attach: an existing record.")
@click.option("--force", is_flag=True, help="Attach even if the record was fitted on another model id.")
def calibrate(
    data, split, checkpoint, artifact, backend, device, batch_size, workers, limit, out, fit_fraction, seed,
    target_fprs, attach, record, force,
):  # fmt: skip
    """Fit temperature scaling and operating points on held-out data; write (and attach) the record.

    The data are split (seeded, stratified) into a fitting part and a checking part: the record is
    fitted on the first and its before/after metrics (ECE, Brier, AUC, TPR at the target FPRs),
    operating points and reliability diagram are measured on the second, written into --out.
    `--attach ARTIFACT --record FILE` attaches an existing record without fitting anything.
    """
    from maskclip_runtime.contract.artifact import attach_calibration
    from maskclip_runtime.contract.verdict_calibration import read_calibration

    if record:
        if not attach or data or out:
            raise UsageError("--record goes with --attach only (it attaches an existing record)")
        fitted = read_calibration(record)
    else:
        if not data or not out:
            raise UsageError("fitting needs --data and --out (or attach an existing record: --attach A --record F)")
        fitted = _fit(data, split, checkpoint, artifact, backend, device, batch_size, workers, limit, Path(out),
                      fit_fraction, seed, target_fprs)  # fmt: skip
    if attach:
        manifest = attach_calibration(attach, fitted, force=force)
        click.echo(f"attached calibration {fitted.sha256[:12]} to {manifest}")


def _calibrate_summary(fitted, fitted_images: int, checking, seconds: float) -> str:
    """The end-of-run line: images fitted and checked, the check half's calibrated verdicts, images/s."""
    labels, fake_prob = checking.scores()
    counts = {verdict: 0 for verdict in ("real", "uncertain", "fake")}
    for verdict in fitted.verdicts(fitted.calibrate(fake_prob)):
        counts[str(verdict)] += 1
    images = fitted_images + len(labels)
    return (
        f"maskclip-calibrate: fitted on {fitted_images} images, checked on {len(labels)}: {counts['real']} real, "
        f"{counts['uncertain']} uncertain, {counts['fake']} fake by the calibrated verdicts (labelled "
        f"{int((labels == 0).sum())} real, {int((labels == 1).sum())} fake), {images / max(seconds, 1e-9):.1f} images/s"
    )


def _fit(data, split, checkpoint, artifact, backend, device, batch_size, workers, limit, out: Path, fit_fraction, seed,
         target_fprs):  # fmt: skip
    from maskclip_core.calibrate import calibration_check, fit_calibration, split_holdout
    from maskclip_core.data import open_samples
    from maskclip_core.evaluate import collect
    from maskclip_runtime.contract.verdict_calibration import Calibration, write_calibration

    if any(not 0.0 <= t < 1.0 for t in target_fprs):
        raise UsageError(f"--target-fpr must lie in [0, 1), got {', '.join(map(str, target_fprs))}")
    predictor, source = _open_predictor(checkpoint, artifact, backend, device)  # a bad model: before the data
    samples = open_samples(data, split)[:limit]
    fit_samples, check_samples = split_holdout(samples, fit_fraction, seed)
    started = time.perf_counter()
    fit_labels, fit_prob = collect(predictor, fit_samples, batch_size, workers, desc="fit").scores()
    model_id = predictor.detector.model_id if artifact else None
    fitted_on = {"model": source, "model_id": model_id, "data": str(data), "split": split, "seed": seed,
                 "fit_fraction": fit_fraction}  # fmt: skip
    fitted = fit_calibration(fit_labels, fit_prob, fitted_on, target_fprs)
    out.mkdir(parents=True, exist_ok=True)
    checking = collect(predictor, check_samples, batch_size, workers, desc="check")
    click.echo(_calibrate_summary(fitted, len(fit_samples), checking, time.perf_counter() - started), err=True)
    measured = _measure_calibration(fitted, checking, str(out / RELIABILITY_NAME))
    # The check half's verdict goes into the record itself: a failed one is attached only with --force.
    check = calibration_check(measured, fitted)
    fitted = Calibration.create(fitted.temperature, fitted.operating_points, fitted.fake_point, fitted.real_point,
                                fitted.fitted_on, check)  # fmt: skip
    measured["record_sha256"] = fitted.sha256
    write_calibration(fitted, out / RECORD_NAME)
    click.echo(f"wrote {out / RECORD_NAME} (temperature {fitted.temperature:.4f}, sha256 {fitted.sha256})")
    if not check["passed"]:
        click.echo(f"maskclip-calibrate: warning: the calibration FAILED its check: {'; '.join(check['problems'])}; "
                   "the record says so and --attach refuses it without --force", err=True)  # fmt: skip
    report_path = out / CHECK_NAME
    doc = {"record": fitted.to_dict(), "checked_on": {"images": len(check_samples)}, **measured}
    write_json(doc, str(report_path))
    click.echo(f"saved {report_path}", err=True)
    return fitted


@command("maskclip-synth", extra="train", input_errors=USER_VALUE_ERRORS, show_default=True, quiet=True)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (train/, test/).")
@click.option("--seed", default=0, type=int)
@click.option("--count", default=800, type=int, help="Training images per generator (half real).")
@click.option("--test-count", default=200, type=int, help="Held-out images per generator (own crops and edits).")
@click.option("--generators", default=None, help="Comma-separated subset of sd15-like, sdxl-like, flux-like.")
@click.option("--min-size", default=128, type=int, help="Shortest long side of an image.")
@click.option("--max-size", default=192, type=int, help="Longest long side of an image.")
@click.option(
    "--layout",
    default="both",
    type=click.Choice(["both", "folder", "parquet"]),
    help="parquet: OpenSDID's files; folder: real/, fake/, masks/ (also for --calib, maskclip-run); both: each.",
)
def synth(out, seed, count, test_count, generators, min_size, max_size, layout):
    """Write a synthetic OpenSDID-format proxy data set (NOT OpenSDID) from bundled photos.

    Each split (OUT/train, OUT/test) is written as OpenSDID parquet files and, by default, also as
    the plain folder layout (real/<generator>/, fake/<generator>/, masks/<generator>/) that every
    command reads: the images are small, so the copy costs little and no command needs a converter.
    The data readers take the folder layout when both are there (the same images, keys and labels).
    """
    from tqdm import tqdm

    from maskclip_core.data.synth import GENERATORS, synthesize

    names = generators.split(",") if generators else list(GENERATORS)
    unknown = [name for name in names if name not in GENERATORS]
    if unknown:  # before the progress bar: a typo is refused before any work
        raise UsageError(f"--generators: unknown {', '.join(unknown)}; known: {', '.join(GENERATORS)}")
    if min_size < 32 or max_size < min_size:
        raise UsageError(f"need 32 <= --min-size <= --max-size, got {min_size}, {max_size}")
    with tqdm(total=(count + test_count) * len(names), desc="synth", dynamic_ncols=True) as bar:
        path = synthesize(Path(out), seed, count, test_count, names, min_size, max_size, bar, layout)
    click.echo(f"wrote {path} (synthetic proxy, not OpenSDID)")


@command("maskclip-import", extra="train", input_errors=USER_VALUE_ERRORS, show_default=True, quiet=True)
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

    path = import_authors_checkpoint(source, out, resolve_config(config))
    click.echo(f"checkpoint: {path.parent}")


if __name__ == "__main__":  # `python -m maskclip_core.cli ...` runs training (torchrun -m needs a module)
    train()
