"""maskclip-run: detect generated images and pixels with an exported artifact.

Exit status: 0 every image succeeded, 1 some images failed (each reported, the rest completed),
2 usage error (bad flags, unusable model, no inputs), 3 the artifact failed its on-device self-check.
Errors are one line on stderr, never a traceback: this is a tool people put in shell pipelines and
cron jobs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import click
from PIL import Image
from tqdm import tqdm

from .artifact import MANIFEST_NAME, ArtifactError, file_sha256
from .backends.base import BackendUnavailable
from .backends.onnxruntime import parse_device
from .detector import MASKS_FOR, Detection, Detector, PreparedImage
from .inputs import expand_inputs
from .outputs import CsvOutput, JsonLinesOutput, read_csv_records, read_json_lines, save_mask_png, save_overlay_png
from .preprocess import ImageLoadError, load_image
from .selfcheck import SelfCheckFailed
from .selfcheck import self_check as run_self_check

PROG = "maskclip-run"
DEMO_DIR = Path(__file__).resolve().parent / "demo"
DEMO_NOTE = "using the embedded demo model (tiny, trained on synthetic edits)"


class UsageFailure(Exception):
    """A problem with how the tool was called (exit status 2)."""


EXIT_SELF_CHECK_FAILED = 3


@dataclass
class Decoded:
    """One input after the worker threads are done with it: decoded, hashed and prepared, or failed."""

    path: str
    sha256: str | None = None
    image: Image.Image | None = None
    prepared: PreparedImage | None = None
    ms: float = 0.0
    error: str | None = None


def _check_device(ctx, param, value: str | None) -> str | None:
    if value is not None:
        try:
            parse_device(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


@click.command(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Exit status: 0 all images answered, 1 some images failed (each reported), 2 usage error, "
    "3 the artifact failed its on-device self-check.",
)
@click.argument("images", nargs=-1)
@click.option("--model", type=click.Path(), help="Artifact folder or manifest.json (default: embedded demo model).")
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "tensorrt"]), default="auto", show_default=True)
@click.option("--device", callback=_check_device, help="cpu, cuda or cuda:N (default: the GPU when usable).")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), help="Verdict and mask threshold (default: manifest).")
@click.option("--batch", type=click.IntRange(min=1), help="Images per forward pass (default: the artifact's).")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for ONNX Runtime.")
@click.option("--json", "json_target", default="-", show_default=True, help="JSON lines output file, - for stdout.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Also write a CSV table.")
@click.option("--masks", type=click.Path(file_okay=False), help="Folder for 8-bit probability mask PNGs.")
@click.option("--overlays", type=click.Path(file_okay=False), help="Folder for heat-overlay PNGs.")
@click.option(
    "--masks-for",
    type=click.Choice(MASKS_FOR),
    help="Which images get a mask: all, fake (those judged fake) or none. Default: all when --masks or "
    "--overlays are asked (every image gets its files), else fake: without files a mask only gives "
    "mask_fraction, which is worth having for images judged fake, and a cascade artifact (maskclip-export "
    "--cascade) then skips the mask graphs for real images (about two thirds of the compute). Verdicts "
    "and fake_prob are the same whatever is chosen.",
)
@click.option("--resume", is_flag=True, help="Skip images answered in the --json file (failed ones retried); append.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or notes on stderr (errors still shown).")
@click.option(
    "--self-check",
    "self_check_only",
    is_flag=True,
    help="Only run the artifact's self-check on this backend and device and print its JSON verdict.",
)
@click.option(
    "--no-self-check",
    is_flag=True,
    help="Skip the self-check (canaries compared with PyTorch on first use on a machine; cached once passed).",
)
@click.option(
    "--strict", is_flag=True, help="Refuse, not just warn, when the host lacks CPU features the artifact assumes."
)
@click.pass_context
def main(ctx: click.Context, **options) -> None:
    """Detect generated content in IMAGES (files, folders, globs, or - to read paths from stdin)."""
    logger = logging.getLogger("maskclip_runtime")
    handler = _StderrHandler()
    logger.addHandler(handler)
    try:
        status = run(**options)
    except SelfCheckFailed as exc:
        click.echo(f"{PROG}: error: {exc}", err=True)
        status = EXIT_SELF_CHECK_FAILED
    except UsageFailure as exc:
        click.echo(f"{PROG}: error: {exc}", err=True)
        status = 2
    except KeyboardInterrupt:
        click.echo(f"{PROG}: interrupted (results so far are saved; rerun with --resume)", err=True)
        status = 130
    except Exception as exc:  # a bug or an environment failure: still one line, never a traceback
        click.echo(f"{PROG}: error: {type(exc).__name__}: {exc}", err=True)
        status = 1
    finally:
        logger.removeHandler(handler)
    ctx.exit(status)


class _StderrHandler(logging.Handler):
    """Library warnings (e.g. a GPU fallback) as "maskclip-run: ..." lines on the stderr of the moment.

    Looked up at emit time, not bound once like logging.StreamHandler, so the CLI also behaves
    when called in-process with a swapped stderr (tests, click's CliRunner).
    """

    def __init__(self):
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(f"{PROG}: {record.getMessage()}", file=sys.stderr)


def run(
    images: tuple[str, ...],
    model: str | None,
    backend: str,
    device: str | None,
    threshold: float | None,
    batch: int | None,
    threads: int | None,
    json_target: str,
    csv_path: str | None,
    masks: str | None,
    overlays: str | None,
    resume: bool,
    quiet: bool,
    self_check_only: bool = False,
    no_self_check: bool = False,
    strict: bool = False,
    masks_for: str | None = None,
) -> int:
    if self_check_only:
        return _self_check_only(model, backend, device, threads, batch, strict, quiet)
    if resume and json_target == "-":
        raise UsageFailure("--resume needs --json FILE (the answers of the earlier run)")
    if masks_for == "none" and (masks or overlays):
        raise UsageFailure("--masks-for none writes no masks: drop --masks/--overlays or pick all/fake")
    masks_for = masks_for or ("all" if masks or overlays else "fake")
    paths = expand_inputs(images)
    if not paths:
        raise UsageFailure("no input images (give files, folders, globs, or - to read paths from stdin)")
    detector = _open_detector(model, backend, device, threads, threshold, batch, quiet, not no_self_check, strict)
    outputs = ImageOutputs(masks, overlays, _output_stems(paths))
    done: list[dict] = []
    if resume:
        done = [r for r in read_json_lines(json_target) if "error" not in r]
        finished = {r["path"] for r in done}
        todo = [p for p in paths if p not in finished]
        if not quiet:
            click.echo(f"{PROG}: resuming: {len(paths) - len(todo)} of {len(paths)} images already done", err=True)
        paths = todo
    for folder in (masks, overlays):
        try:
            if folder:
                Path(folder).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageFailure(f"cannot create output folder: {exc}") from None

    json_out, csv_out = _open_tables(json_target, csv_path, done)
    failures = 0
    started = time.perf_counter()
    progress = tqdm(total=len(paths), disable=quiet or len(paths) <= 1, file=sys.stderr, unit="img", desc=PROG)
    try:
        for record in _detect_all(detector, paths, outputs, masks_for):
            if "error" in record:
                failures += 1
                progress.write(f"{PROG}: {record['error']}", file=sys.stderr)
            json_out.write(record)
            if csv_out:
                csv_out.write(record)
            progress.update()
    finally:
        progress.close()
        json_out.close()
        if csv_out:
            csv_out.close()
        detector.close()
    if not quiet and len(paths) > 1:
        seconds = time.perf_counter() - started
        click.echo(
            f"{PROG}: {len(paths)} images, {failures} failed, {len(paths) / seconds:.1f} images/s ({detector.backend})",
            err=True,
        )
    return 1 if failures else 0


def _open_tables(json_target: str, csv_path: str | None, done: list[dict]):
    """JSON lines (and CSV) outputs, seeded with the answers kept from an earlier run."""
    finished = {r["path"] for r in done}
    try:
        json_out = JsonLinesOutput(json_target, keep=done)
    except OSError as exc:
        raise UsageFailure(f"cannot write results: {exc}") from None
    if not csv_path:
        return json_out, None
    try:
        kept_rows = [r for r in read_csv_records(csv_path) if r.get("path") in finished] if done else []
        return json_out, CsvOutput(csv_path, keep=kept_rows)
    except OSError as exc:
        json_out.discard()
        raise UsageFailure(f"cannot write results: {exc}") from None


def _self_check_only(model, backend, device, threads, batch, strict, quiet) -> int:
    """--self-check: run the canaries afresh (never from the cache) and print the verdict as one JSON object."""
    detector = _open_detector(model, backend, device, threads, None, batch, quiet, self_check=False, strict=strict)
    try:
        result = run_self_check(detector, use_cache=False)
    except SelfCheckFailed as exc:
        result = exc.result
    finally:
        detector.close()
    verdict = {"model_id": detector.model_id, **result.to_dict()}
    click.echo(json.dumps(verdict, indent=2))
    if result.status == "unavailable" and not quiet:
        click.echo(f"{PROG}: this artifact carries no self-check canaries (exported before they existed)", err=True)
    return EXIT_SELF_CHECK_FAILED if result.status == "failed" else 0


def _open_detector(
    model, backend, device, threads, threshold, batch, quiet, self_check: bool = True, strict: bool = False
) -> Detector:
    if model is None:
        if not (DEMO_DIR / MANIFEST_NAME).is_file():
            raise UsageFailure(f"the embedded demo model is missing ({DEMO_DIR / MANIFEST_NAME}); pass --model PATH")
        model = DEMO_DIR
        if not quiet:
            click.echo(f"{PROG}: {DEMO_NOTE}", err=True)
    try:
        return Detector(
            model,
            backend=backend,
            device=device,
            threads=threads,
            threshold=threshold,
            batch=batch,
            self_check=self_check,
            strict=strict,
        )
    except SelfCheckFailed:
        raise
    except (ArtifactError, BackendUnavailable, ValueError) as exc:
        raise UsageFailure(str(exc)) from None


@dataclass(frozen=True)
class ImageOutputs:
    """Where the per-image PNGs go: mask and overlay folders (None = not written) and each input's file stem."""

    masks: str | None
    overlays: str | None
    stems: dict[str, str]

    def mask_path(self, path: str) -> str | None:
        return os.path.join(self.masks, f"{self.stems[path]}_mask.png") if self.masks else None

    def overlay_path(self, path: str) -> str | None:
        return os.path.join(self.overlays, f"{self.stems[path]}_overlay.png") if self.overlays else None


def _detect_all(detector: Detector, paths: list[str], outputs: ImageOutputs, masks_for: str = "all"):
    """Yield one record per path, in input order.

    A small thread pool keeps the model busy: while batch k is inferred, workers decode batch k+1
    and write the PNGs of batch k-1 (Pillow and zlib release the GIL for both).
    """
    size = detector.batch_size
    chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
    workers = max(2, min(4, os.cpu_count() or 2))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="maskclip-io") as pool:
        decoding: list[Future] = [pool.submit(_decode, p, detector) for p in chunks[0]] if chunks else []
        writing: list[Future] = []
        for index in range(len(chunks)):
            decoded = [f.result() for f in decoding]
            following = chunks[index + 1] if index + 1 < len(chunks) else []
            decoding = [pool.submit(_decode, p, detector) for p in following]
            answers = _infer(detector, decoded, masks_for)
            yield from (f.result() for f in writing)
            writing = [pool.submit(_finish, detector, item, detection, outputs) for item, detection in answers]
        yield from (f.result() for f in writing)


def _decode(path: str, detector: Detector) -> Decoded:
    start = time.perf_counter()
    try:
        image = load_image(path)
        sha256 = file_sha256(path)
        prepared = detector.prepare(image)
    except ImageLoadError as exc:
        return Decoded(path, error=str(exc))
    except (OSError, ValueError, MemoryError) as exc:
        return Decoded(path, error=f"{path}: {type(exc).__name__}: {exc}")
    return Decoded(path, sha256, image, prepared, ms=(time.perf_counter() - start) * 1e3 - prepared.ms)


def _infer(detector: Detector, chunk: list[Decoded], masks_for: str) -> list[tuple[Decoded, Detection | None]]:
    """Run the decodable images of a chunk; an inference failure fails this chunk, not the whole run."""
    decodable = [d for d in chunk if d.error is None]
    try:
        detections = detector.detect_prepared([d.prepared for d in decodable], masks_for)
        answers = dict(zip(map(id, decodable), detections, strict=True))
    except Exception as exc:  # ONNX Runtime / TensorRT raise their own exception classes
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        for d in decodable:
            d.error = f"{d.path}: inference failed: {reason}"
        answers = {}
    return [(d, answers.get(id(d))) for d in chunk]


def _finish(detector: Detector, decoded: Decoded, detection: Detection | None, outputs: ImageOutputs) -> dict:
    """Resize the mask, write the image's PNGs and return its JSON record (or its error record)."""
    if detection is None:
        return {"path": decoded.path, "error": decoded.error}
    start = time.perf_counter()
    fraction = detection.mask_fraction  # resizes the mask to the photo's size, here in a worker thread
    mask_path, overlay_path = None, None
    if detection.mask_computed:  # --masks-for fake: an image judged real has no mask to write
        mask_path, overlay_path = outputs.mask_path(decoded.path), outputs.overlay_path(decoded.path)
    try:
        if mask_path:
            save_mask_png(detection.mask, mask_path)
        if overlay_path:
            save_overlay_png(decoded.image, detection.mask, overlay_path)
    except OSError as exc:
        return {"path": decoded.path, "error": f"{decoded.path}: cannot write outputs: {exc}"}
    finishing_ms = (time.perf_counter() - start) * 1e3
    return {
        "path": decoded.path,
        "sha256": decoded.sha256,
        "width": detection.width,
        "height": detection.height,
        "fake_prob": round(detection.fake_prob, 6),
        "verdict": detection.verdict,
        "threshold": detection.threshold,
        "mask_fraction": None if fraction is None else round(fraction, 6),
        "mask_computed": detection.mask_computed,
        "mask": mask_path,
        "overlay": overlay_path,
        "backend": detector.backend,
        "model_id": detector.model_id,
        "self_check": detector.self_check.status,
        "ms": round(decoded.ms + detection.ms + finishing_ms, 2),
    }


def _output_stems(paths: list[str]) -> dict[str, str]:
    """Mask/overlay file stem per input: its own stem, plus a short path hash where two inputs share a stem."""
    counts = Counter(Path(p).stem for p in paths)
    stems = {}
    for path in paths:
        stem = Path(path).stem
        if counts[stem] > 1:
            stem = f"{stem}-{hashlib.sha1(path.encode()).hexdigest()[:8]}"
        stems[path] = stem
    return stems
