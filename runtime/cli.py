"""maskclip-run: detect generated images and pixels with an exported artifact.

Exit statuses are the table of errors.py (every command's): 1 some images failed (each reported, the rest
completed), 2 usage error or unusable model, inputs or destinations (found before any image is processed),
3 the artifact failed its on-device self-check, 4 the backend cannot run here, 5 the results could not be
written (e.g. a full disk), 128+N killed by signal N (SIGINT, SIGTERM, SIGHUP; the answers so far are
saved). Errors are one line on stderr, never a traceback: this is a tool people put in shell pipelines
and cron jobs.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import sys
import time
import warnings
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import click
from PIL import Image
from tqdm import tqdm

from .backends import registry
from .command import command
from .contract.artifact import MANIFEST_NAME
from .detect.detector import DEMO_DIR, MASKS_FOR, Detection, Detector, PreparedImage, backend_for, wants_mask
from .detect.selfcheck import SelfCheckFailed
from .detect.selfcheck import self_check as run_self_check
from .detect.tiling import detect_tiled, mask_policy
from .errors import MaskclipError, SomeInputsFailed, UsageError, VerificationFailed, message_of
from .kernel.atomic import prepare_output_file
from .kernel.hashing import file_sha256
from .kernel.inputs import expand_inputs
from .kernel.preprocess import DECODE_MARGIN, DEFAULT_MAX_PIXELS, ImageLoadError, decode_image
from .options import DEMO_NOTE, check_options, model_options
from .present.outputs import (
    DEFAULT_OVERLAY_SIZE,
    ResultsUnwritable,
    ResultTables,
    TableBusy,
    answer_problem,
    detection_record,
    made_for_another_image,
    save_mask_png,
    save_overlay_png,
    source_tag,
)
from .present.report import write_report

PROG = "maskclip-run"


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: stop like after Ctrl-C (the answers so far are already saved).

    A BaseException, like KeyboardInterrupt, so no per-image `except Exception` turns it into an image's error."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class Decoded:
    """One input after the worker threads are done with it: decoded, hashed and prepared, or failed."""

    path: str
    sha256: str | None = None
    image: Image.Image | None = None  # kept only when an overlay is drawn on it
    prepared: PreparedImage | None = None
    ms: float = 0.0
    error: str | None = None


@command(PROG, epilog="SIGTERM and SIGHUP stop the run like Ctrl-C: the answers so far are saved (--resume).")
@click.argument("images", nargs=-1)
@model_options
@click.option("--json", "json_target", default="-", show_default=True, help="JSON lines output file, - for stdout.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Also write a CSV table.")
@click.option(
    "--masks", type=click.Path(file_okay=False), help="Folder for binary mask PNGs (255 = over the threshold)."
)
@click.option(
    "--prob-maps", type=click.Path(file_okay=False), help="Folder for 8-bit probability-map PNGs (255 = certain)."
)
@click.option(
    "--overlays", type=click.Path(file_okay=False), help="Folder for overlay PNGs (heat map, outline, legend)."
)
@click.option(
    "--overlay-size",
    type=click.IntRange(min=0),
    default=DEFAULT_OVERLAY_SIZE,
    show_default=True,
    help="Long side of the overlay PNGs in pixels (0: the photo's own size).",
)
@click.option(
    "--tiles",
    is_flag=True,
    help="Masks at the image's own resolution from overlapping model-size tiles (the verdict stays the whole "
    "image's); fits models trained on native-resolution crops.",
)
@click.option(
    "--report", "report_path", type=click.Path(dir_okay=False), help="Also write a self-contained HTML report."
)
@click.option(
    "--masks-for",
    type=click.Choice(MASKS_FOR),
    help="Which images get a mask: all, fake (those not judged real) or none. Default: all when --masks or "
    "--overlays are asked (every image gets its files), else fake: without files a mask only gives "
    "mask_fraction, which is worth having for images judged fake, and a cascade artifact (maskclip-export "
    "--cascade) then skips the mask graphs for real images (about two thirds of the compute). Verdicts "
    "and fake_prob are the same whatever is chosen.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Skip images answered in the --json file by the same model, precision and threshold (failed ones retried).",
)
@click.option(
    "--max-pixels",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_PIXELS,
    show_default=True,
    help="Refuse larger images (decompression-bomb guard); a 108 Mpx photo is 108000000.",
)
@click.option("--null", "-0", "null_separated", is_flag=True, help="Paths on stdin are NUL-separated (find -print0).")
@click.option(
    "--self-check",
    "self_check_only",
    is_flag=True,
    help="Only run the artifact's self-check on this backend and device and print its JSON verdict.",
)
@check_options
@click.pass_context
def main(ctx: click.Context, **options) -> None:
    """Detect generated content in IMAGES (files, folders, globs, or - to read paths from stdin)."""
    logger = logging.getLogger("maskclip_runtime")
    handler = _StderrHandler()
    logger.addHandler(handler)
    try:
        with _signals_stop_the_run(), _library_stderr_silenced(options["quiet"]), _pixel_limit(options["max_pixels"]):
            run(**options)
    except ResultsUnwritable as exc:
        raise ResultsUnwritable(
            f"{exc} (the answers written so far are kept: fix this and rerun with --resume)"
        ) from None
    except (KeyboardInterrupt, Terminated) as exc:
        what = f"terminated by {exc}" if isinstance(exc, Terminated) else "interrupted"
        click.echo(f"{PROG}: {what} (results so far are saved; rerun with --resume)", err=True)
        ctx.exit(128 + (exc.signum if isinstance(exc, Terminated) else signal.SIGINT))
    finally:
        logger.removeHandler(handler)


@contextmanager
def _signals_stop_the_run():
    """SIGTERM and SIGHUP end the run like Ctrl-C: the images in flight finish or are dropped, the
    tables are closed, and the exit status says which signal it was."""

    def stop(signum, frame):
        raise Terminated(signum)

    try:
        stopping = [signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])]  # no SIGHUP on Windows
        previous = {signum: signal.signal(signum, stop) for signum in stopping}
    except ValueError:  # not the main thread (embedded use): leave signals to the host program
        previous = {}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def _pixel_limit(max_pixels: int):
    """Pillow's global decompression-bomb limit follows --max-pixels for the run (decode_image checks
    --max-pixels itself; Pillow would otherwise refuse above twice its default, whatever was asked)."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


@contextmanager
def _library_stderr_silenced(quiet: bool):
    """-q: what libraries print themselves goes to /dev/null: Python warnings, and the lines libtiff,
    libjpeg or ONNX Runtime write straight to file descriptor 2. Our own messages keep the real stderr."""
    if not quiet:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    ours = sys.stderr
    if _fileno(sys.stderr) == 2:  # a real process: our stderr must move off descriptor 2 too
        sys.stderr = open(saved, "w", encoding=ours.encoding, errors="backslashreplace", closefd=False)  # noqa: SIM115
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if sys.stderr is not ours:
            sys.stderr.flush()
            sys.stderr = ours
        os.dup2(saved, 2)
        os.close(saved)


def _fileno(stream) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


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
    max_pixels: int,
    null_separated: bool,
    quiet: bool,
    self_check_only: bool = False,
    no_self_check: bool = False,
    strict: bool = False,
    masks_for: str | None = None,
    prob_maps: str | None = None,
    overlay_size: int = DEFAULT_OVERLAY_SIZE,
    report_path: str | None = None,
    tiles: bool = False,
) -> None:
    """Raises SomeInputsFailed when some images failed (each already reported), after every other is answered."""
    if self_check_only and no_self_check:
        raise UsageError("--self-check and --no-self-check contradict each other")
    registry.require(backend_for(model, backend))  # refused here before any model is read
    if self_check_only:
        return _self_check_only(model, backend, device, threads, batch, strict, quiet)
    if resume and json_target == "-":
        raise UsageError("--resume needs --json FILE (the answers of the earlier run)")
    if masks_for == "none" and (masks or overlays or prob_maps):
        raise UsageError("--masks-for none writes no masks: drop --masks/--overlays/--prob-maps or pick all/fake")
    masks_for = masks_for or ("all" if masks or overlays or prob_maps else "fake")
    _check_destinations(json_target, csv_path, masks, overlays, prob_maps, report_path)
    paths = expand_inputs(images, null_separated=null_separated, outputs=[f for f in (masks, overlays, prob_maps) if f])
    if not paths:
        raise UsageError("no input images (give files, folders, globs, or - to read paths from stdin)")
    detector = _open_detector(model, backend, device, threads, threshold, batch, quiet, not no_self_check, strict)
    card = detector.artifact.manifest.card
    if tiles and not quiet and not (card and card.native_crops):
        trained = card.summary() if card else "a model whose card does not say how it was trained"
        click.echo(f"{PROG}: warning: --tiles shows tiles at native resolution to {trained}: tile masks may "
                   "flag texture rather than edits", err=True)  # fmt: skip
    try:
        tables = ResultTables(json_target, csv_path)
    except TableBusy as exc:
        detector.close()
        raise UsageError(str(exc)) from None
    except OSError as exc:
        detector.close()
        raise UsageError(f"cannot write results: {exc}") from None
    failures = 0
    records: list[dict] = []
    try:
        wanted = MaskRequest(masks_for, tiles, masks is not None, overlays is not None)
        kept = _answers_to_keep(tables, detector, json_target, wanted) if resume else []
        tables.start(kept)
        records.extend(kept)
        outputs = ImageOutputs(masks, overlays, _output_stems(paths), prob_maps, overlay_size or None)
        if resume:
            answered = {os.path.realpath(r["path"]) for r in kept}
            todo = [p for p in paths if os.path.realpath(p) not in answered]
            if not quiet:
                click.echo(f"{PROG}: resuming: {len(paths) - len(todo)} of {len(paths)} images already done", err=True)
            paths = todo
        started = time.perf_counter()
        progress = tqdm(total=len(paths), disable=quiet or len(paths) <= 1, file=sys.stderr, unit="img", desc=PROG)
        try:
            decoding = DecodeOptions(
                max_pixels, None if overlays or tiles else DECODE_MARGIN * detector.artifact.preprocess.size, tiles
            )
            for record in _detect_all(detector, paths, outputs, decoding, masks_for):
                if "error" in record:
                    failures += 1
                    progress.write(f"{PROG}: {record['error']}", file=sys.stderr)
                tables.write(record)
                records.append(record)
                progress.update()
        finally:
            progress.close()
    finally:
        tables.close()
        detector.close()
    if report_path:
        try:
            write_report(records, report_path)
        except OSError as exc:
            raise ResultsUnwritable(f"cannot write the report {report_path}: {exc.strerror or exc}") from None
    if not quiet and len(paths) > 1:
        seconds = time.perf_counter() - started
        verdicts = Counter(r.get("verdict") for r in records[len(kept) :] if "error" not in r)
        counts = ", ".join(f"{verdicts[v]} {v}" for v in ("real", "uncertain", "fake"))
        click.echo(
            f"{PROG}: {len(paths)} images, {failures} failed ({counts}), {len(paths) / seconds:.1f} images/s "
            f"({detector.backend})",
            err=True,
        )
    if failures:
        raise SomeInputsFailed()  # each failure is already on stderr, and in the tables


def _check_destinations(
    json_target: str,
    csv_path: str | None,
    masks: str | None,
    overlays: str | None,
    prob_maps: str | None = None,
    report_path: str | None = None,
) -> None:
    """Every output must be writable before the first image is processed, not found unusable after the last."""
    tables = [path for path in (None if json_target == "-" else json_target, csv_path) if path]
    if len(tables) == 2 and os.path.realpath(tables[0]) == os.path.realpath(tables[1]):
        raise UsageError(f"--json and --csv name the same file ({csv_path}); give two different files")
    if report_path and os.path.realpath(report_path) in map(os.path.realpath, tables):
        raise UsageError(f"--report names a results table ({report_path}); give it a file of its own")
    for path in tables:
        prepare_output_file(path)
    if report_path:
        prepare_output_file(report_path, "the report")
    for folder in (masks, overlays, prob_maps):
        if not folder:
            continue
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create output folder: {exc}") from None
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UsageError(f"cannot write into output folder {folder}: permission denied")


@dataclass(frozen=True)
class MaskRequest:
    """What this run asks of each image's mask: --resume keeps an earlier answer only if it has that."""

    masks_for: str
    tiles: bool
    mask_files: bool
    overlay_files: bool

    def satisfied_by(self, record: dict, model_size: int) -> bool:
        if not wants_mask(self.masks_for, record["verdict"]):
            return True
        # Records written before these fields existed had every mask, resized from the global view.
        if not record.get("mask_computed", True):
            return False
        policy = mask_policy(record["width"], record["height"], model_size, self.tiles)
        if record.get("mask_policy", "resize") != policy:
            return False
        return not (self.mask_files and record.get("mask") is None) and not (
            self.overlay_files and record.get("overlay") is None
        )


def _answers_to_keep(tables: ResultTables, detector: Detector, json_target: str, wanted: MaskRequest) -> list[dict]:
    """The earlier run's answers that --resume keeps: successful ones, one per file, whose mask is what this
    run asks for (failed ones, and ones without that mask, are done again).

    Answers made with another model, precision or threshold are not mixed into this run's table:
    the run is refused and the file left as it is."""
    kept: dict[str, dict] = {}
    for record in tables.previous_records():
        if "error" in record:
            continue
        problem = answer_problem(record)
        if problem is not None:
            note = f"the record of {record['path']} is unusable ({problem}); answering it again"
            click.echo(f"{PROG}: note: {json_target}: {note}", err=True)
            continue
        made_with = (
            record.get("model_id"),
            record.get("precision", detector.artifact.precision),
            record.get("threshold"),
        )
        if made_with != (detector.model_id, detector.artifact.precision, detector.threshold):
            raise UsageError(
                f"{json_target} holds answers made with model {made_with[0]}, precision {made_with[1]}, threshold "
                f"{made_with[2]}; --resume only continues a run with the same ones (use another --json file)"
            )
        if wanted.satisfied_by(record, detector.artifact.preprocess.size):
            kept.setdefault(os.path.realpath(record["path"]), record)
    return list(kept.values())


def _self_check_only(model, backend, device, threads, batch, strict, quiet) -> None:
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
    if result.status == "failed":
        raise VerificationFailed(f"the self-check failed on {detector.backend} (the verdict above says where)")


def _open_detector(
    model, backend, device, threads, threshold, batch, quiet, self_check: bool = True, strict: bool = False
) -> Detector:
    if model is None:
        if not (DEMO_DIR / MANIFEST_NAME).is_file():
            raise UsageError(f"the embedded demo model is missing ({DEMO_DIR / MANIFEST_NAME}); pass --model PATH")
        model = DEMO_DIR
        if not quiet:
            click.echo(f"{PROG}: {DEMO_NOTE}", err=True)
    try:
        detector = Detector(
            model,
            backend=backend,
            device=device,
            threads=threads,
            threshold=threshold,
            batch=batch,
            self_check=self_check,
            strict=strict,
        )
    except MaskclipError:  # already says what is wrong, with its own exit status
        raise
    except ValueError as exc:  # options the artifact cannot take (e.g. a --batch beyond its profile)
        raise UsageError(str(exc)) from None
    if batch is not None and batch != detector.batch_size and not quiet:
        profile = detector.artifact.batch
        limit = f"at most {profile.max}" if profile.dynamic else f"exactly {profile.max} (a fixed-batch export)"
        click.echo(
            f"{PROG}: note: --batch {batch}: this artifact runs {limit} images per pass; using {detector.batch_size}",
            err=True,
        )
    return detector


@dataclass(frozen=True)
class DecodeOptions:
    max_pixels: int
    reduce_to: int | None  # see decode_image; None when the full-size photo is needed (overlays, tiles)
    tiles: bool = False  # masks stitched from native-resolution tiles (tiling.py)


@dataclass(frozen=True)
class ImageOutputs:
    """Where the per-image PNGs go: mask and overlay folders (None = not written) and each input's file stem.

    A PNG of that name made for another image (an earlier run on another folder) is never overwritten:
    the new one gets the input's path hash in its name instead."""

    masks: str | None
    overlays: str | None
    stems: dict[str, str]
    prob_maps: str | None = None
    overlay_size: int | None = None  # long side of an overlay; None: the photo's own size

    def mask_path(self, path: str) -> str | None:
        return self._png_path(self.masks, path, "mask")

    def prob_map_path(self, path: str) -> str | None:
        return self._png_path(self.prob_maps, path, "prob")

    def overlay_path(self, path: str) -> str | None:
        return self._png_path(self.overlays, path, "overlay")

    def _png_path(self, folder: str | None, path: str, kind: str) -> str | None:
        if not folder:
            return None
        stem = self.stems[path]
        png = os.path.join(folder, f"{stem}_{kind}.png")
        if made_for_another_image(png, path):
            png = os.path.join(folder, f"{stem}-{source_tag(path)[:8]}_{kind}.png")
        return png


def _detect_all(
    detector: Detector, paths: list[str], outputs: ImageOutputs, decoding: DecodeOptions, masks_for: str = "all"
):
    """Yield one record per path, in input order.

    A small thread pool keeps the model busy: while batch k is inferred, workers decode batch k+1
    and write the PNGs of batch k-1 (Pillow and zlib release the GIL for both).
    """
    size = detector.batch_size
    chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
    workers = max(2, min(4, os.cpu_count() or 2))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="maskclip-io") as pool:
        decoding_now: list[Future] = [pool.submit(_decode, p, detector, decoding) for p in chunks[0]] if chunks else []
        writing: list[Future] = []
        for index in range(len(chunks)):
            decoded = [f.result() for f in decoding_now]
            following = chunks[index + 1] if index + 1 < len(chunks) else []
            decoding_now = [pool.submit(_decode, p, detector, decoding) for p in following]
            answers = _infer(detector, decoded, masks_for, decoding.tiles)
            yield from (f.result() for f in writing)
            writing = [pool.submit(_finish, detector, item, detection, outputs) for item, detection in answers]
        yield from (f.result() for f in writing)


def _decode(path: str, detector: Detector, decoding: DecodeOptions) -> Decoded:
    start = time.perf_counter()
    try:
        decoded = decode_image(path, decoding.max_pixels, decoding.reduce_to)
        sha256 = file_sha256(path)
        prepared = detector.prepare(decoded.image, size=(decoded.width, decoded.height))
    except ImageLoadError as exc:
        return Decoded(path, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - whatever fails here fails this image only
        return Decoded(path, error=f"{path}: {type(exc).__name__}: {exc}")
    image = decoded.image if decoding.reduce_to is None else None
    return Decoded(path, sha256, image, prepared, ms=(time.perf_counter() - start) * 1e3 - prepared.ms)


def _infer(
    detector: Detector, chunk: list[Decoded], masks_for: str, tiles: bool = False
) -> list[tuple[Decoded, Detection | None]]:
    """Run the decodable images of a chunk; an inference failure fails this chunk, not the whole run."""
    decodable = [d for d in chunk if d.error is None]
    try:
        detections = detector.detect_prepared([d.prepared for d in decodable], masks_for)
        answers = dict(zip(map(id, decodable), detections, strict=True))
        if tiles:  # native-resolution masks, for the images that get a mask at all
            for d in decodable:
                if answers[id(d)].mask_computed:
                    answers[id(d)] = detect_tiled(detector, d.image, answers[id(d)])
    except Exception as exc:  # ONNX Runtime / TensorRT raise their own exception classes
        reason = message_of(exc)
        for d in decodable:
            d.error = f"{d.path}: inference failed: {reason}"
        answers = {}
    return [(d, answers.get(id(d))) for d in chunk]


# A full disk or quota is not this image's fault: every following image would fail the same way.
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _finish(detector: Detector, decoded: Decoded, detection: Detection | None, outputs: ImageOutputs) -> dict:
    """Resize the mask, write the image's PNGs and return its JSON record (or its error record)."""
    if detection is None:
        return {"path": decoded.path, "error": decoded.error}
    start = time.perf_counter()
    mask_path, overlay_path, prob_map_path = None, None, None
    if detection.mask_computed:  # --masks-for fake: an image judged real has no mask to write
        mask_path, overlay_path = outputs.mask_path(decoded.path), outputs.overlay_path(decoded.path)
        prob_map_path = outputs.prob_map_path(decoded.path)
    try:
        if mask_path:
            save_mask_png(detection.mask, mask_path, source=decoded.path, threshold=detection.threshold)
        if prob_map_path:
            save_mask_png(detection.mask, prob_map_path, source=decoded.path)
        if overlay_path:
            save_overlay_png(decoded.image, detection.mask, overlay_path, decoded.path, detection, outputs.overlay_size)
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            written = mask_path or prob_map_path or overlay_path
            raise ResultsUnwritable(f"cannot write {written}: {exc.strerror}") from None
        return {"path": decoded.path, "error": f"{decoded.path}: cannot write outputs: {exc}"}
    finishing_ms = (time.perf_counter() - start) * 1e3
    ms = decoded.ms + detection.ms + finishing_ms
    return detection_record(decoded.path, decoded.sha256, detection, detector, ms, mask_path, overlay_path)


def _output_stems(paths: list[str]) -> dict[str, str]:
    """Mask/overlay file stem per input: its own stem, plus a short path hash where two inputs share a stem."""
    counts = Counter(Path(p).stem for p in paths)
    stems = {}
    for path in paths:
        stem = Path(path).stem
        if counts[stem] > 1:
            stem = f"{stem}-{source_tag(path)[:8]}"
        stems[path] = stem
    return stems
