"""maskclip-run: detect generated images and pixels with an exported artifact.

Exit statuses are the table of errors.py (every command's): 1 some images failed (each reported, the rest
completed), 2 usage error or unusable model, inputs or destinations (found before any image is processed),
3 the artifact failed its on-device self-check, 4 the backend cannot run here, 5 the results could not be
written (e.g. a full disk), 128+N killed by signal N (SIGINT, SIGTERM, SIGHUP; the answers so far are
saved). Errors are one line on stderr, never a traceback: this is a tool people put in shell pipelines
and cron jobs.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import click
from PIL import Image
from tqdm import tqdm

from .backends import registry
from .command import command
from .contract.artifact import MANIFEST_NAME
from .detect.detector import DEMO_DIR, MASKS_FOR, Detector, backend_for, wants_mask
from .detect.selfcheck import SelfCheckFailed
from .detect.selfcheck import self_check as run_self_check
from .detect.tiling import mask_policy
from .errors import MaskclipError, SomeInputsFailed, UsageError, VerificationFailed
from .kernel.atomic import prepare_output_file
from .kernel.inputs import expand_inputs, input_key
from .kernel.preprocess import DEFAULT_MAX_PIXELS
from .options import DEMO_NOTE, check_options, model_options
from .pipeline.steps import Plan, scan
from .present.image_sinks import ImageFiles
from .present.outputs import DEFAULT_OVERLAY_SIZE, ResultsUnwritable, ResultTables, TableBusy, answer_problem
from .present.report import write_report

PROG = "maskclip-run"


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: stop like after Ctrl-C (the answers so far are already saved).

    A BaseException, like KeyboardInterrupt, so no per-image `except Exception` turns it into an image's error."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


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
@click.option(
    "--ray",
    "ray_address",
    metavar="local|ADDRESS",
    help="Run on a Ray cluster (the ray extra): 'local' starts one on this machine, ADDRESS joins one (as "
    "`ray start --head` prints it). Inputs may be URIs (s3://, gs://, hdfs://, file://).",
)
@click.option(
    "--ray-actors", type=click.IntRange(min=1), default=1, show_default=True, help="Detectors in the Ray actor pool."
)
@click.option(
    "--ray-gpus-per-actor",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="GPUs each actor reserves (0.5: two actors share a GPU).",
)
@click.option(
    "--parquet",
    type=click.Path(file_okay=False),
    help="With --ray: the workers write the records as Parquet parts into this folder (nothing streamed back).",
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
    ray_address: str | None = None,
    ray_actors: int = 1,
    ray_gpus_per_actor: float = 0.0,
    parquet: str | None = None,
) -> None:
    """Raises SomeInputsFailed when some images failed (each already reported), after every other is answered."""
    if self_check_only and no_self_check:
        raise UsageError("--self-check and --no-self-check contradict each other")
    registry.require(backend_for(model, backend))  # refused here before any model is read
    if self_check_only:
        return _self_check_only(model, backend, device, threads, batch, strict, quiet)
    masks_for = _masks_policy(masks_for, masks, overlays, prob_maps)
    if resume and json_target == "-":
        raise UsageError("--resume needs --json FILE (the answers of the earlier run)")
    _check_scale_options(ray_address, parquet, resume, report_path, json_target, csv_path)
    _check_destinations(json_target, csv_path, masks, overlays, prob_maps, report_path)
    paths = expand_inputs(images, null_separated=null_separated, outputs=[f for f in (masks, overlays, prob_maps) if f])
    if not paths:
        raise UsageError("no input images (give files, folders, globs, or - to read paths from stdin)")
    model_options = (model, backend, device, threads, threshold, batch, quiet, not no_self_check, strict)
    detector, records_of = _open_scan(model_options, ray_address, ray_actors, ray_gpus_per_actor)
    card = detector.artifact.manifest.card
    if tiles and not quiet and not (card and card.native_crops):
        trained = card.summary() if card else "a model whose card does not say how it was trained"
        click.echo(f"{PROG}: warning: --tiles shows tiles at native resolution to {trained}: tile masks may "
                   "flag texture rather than edits", err=True)  # fmt: skip
    images_out = ImageFiles.for_inputs(paths, masks, overlays, prob_maps, overlay_size or None)
    plan = Plan(masks_for, tiles, images_out.wants_full_size, max_pixels)
    if parquet:
        return _scan_to_parquet(detector, paths, plan, images_out, parquet, quiet)
    tables = _open_tables(json_target, csv_path, detector.close)
    try:
        wanted = MaskRequest(masks_for, tiles, masks is not None, overlays is not None)
        kept = _answers_to_keep(tables, detector, json_target, wanted) if resume else []
        tables.start(kept)
        paths = _still_to_do(paths, kept, quiet) if resume else paths
        started = time.perf_counter()
        answered = _deliver(records_of(paths, plan, images_out), tables, len(paths), quiet)
    finally:
        tables.close()
        detector.close()
    _finish_run(kept + answered, len(kept), report_path, quiet, time.perf_counter() - started, detector.backend)


def _check_scale_options(ray_address, parquet, resume, report_path, json_target, csv_path) -> None:
    if parquet is None:
        return
    if not ray_address:
        raise UsageError("--parquet is written by Ray workers: add --ray local|ADDRESS")
    if resume or report_path or json_target != "-" or csv_path:
        raise UsageError("--parquet leaves the records with the workers: drop --json/--csv/--resume/--report")
    if os.path.isdir(parquet) and any(os.scandir(parquet)):
        raise UsageError(f"--parquet {parquet}: the folder is not empty (give a new or empty one)")


def _open_scan(model_options: tuple, ray_address: str | None, actors: int, gpus_per_actor: float):
    """(what the run reads model_id, threshold and backend from, records_of(paths, plan, images)): a Detector
    and the pipeline's scan here, or a Ray scan whose actors each hold a Detector."""
    if not ray_address:
        detector = _open_detector(*model_options)
        return detector, partial(scan, detector)
    from .scale.ray_scan import Cluster, DetectorOptions, RayScan

    model, backend, device, threads, threshold, batch, quiet, self_check, strict = model_options
    if model is None:
        model = _demo_model(quiet)
    options = DetectorOptions(str(model), backend, device, threads, threshold, batch, self_check, strict)
    front = RayScan(options, Cluster(ray_address, actors, gpus_per_actor))
    return front, front.records


def _scan_to_parquet(front, paths: list[str], plan: Plan, images_out: ImageFiles, folder: str, quiet: bool) -> None:
    """--parquet: the workers write the records; the failed ones are reported here, as in every run."""
    started = time.perf_counter()
    try:
        failed = front.write_parquet(paths, plan, images_out, folder)
    finally:
        front.close()
    for record in failed:
        click.echo(f"{PROG}: {record['error']}", err=True)
    if not quiet:
        rate = len(paths) / (time.perf_counter() - started)
        click.echo(f"{PROG}: {len(paths)} images, {len(failed)} failed, {rate:.1f} images/s -> {folder}", err=True)
    if failed:
        raise SomeInputsFailed()


def _masks_policy(masks_for: str | None, masks: str | None, overlays: str | None, prob_maps: str | None) -> str:
    """--masks-for as asked; by default all when mask files are asked, else fake."""
    if masks_for == "none" and (masks or overlays or prob_maps):
        raise UsageError("--masks-for none writes no masks: drop --masks/--overlays/--prob-maps or pick all/fake")
    return masks_for or ("all" if masks or overlays or prob_maps else "fake")


def _open_tables(json_target: str, csv_path: str | None, on_failure) -> ResultTables:
    """The results tables, locked for this run; on_failure() (release the model) when they cannot be opened."""
    try:
        return ResultTables(json_target, csv_path)
    except (TableBusy, OSError) as exc:
        on_failure()
        raise UsageError(str(exc) if isinstance(exc, TableBusy) else f"cannot write results: {exc}") from None


def _still_to_do(paths: list[str], kept: list[dict], quiet: bool) -> list[str]:
    answered = {input_key(r["path"]) for r in kept}
    todo = [p for p in paths if input_key(p) not in answered]
    if not quiet:
        click.echo(f"{PROG}: resuming: {len(paths) - len(todo)} of {len(paths)} images already done", err=True)
    return todo


def _deliver(records: Iterable[dict], tables: ResultTables, total: int, quiet: bool) -> list[dict]:
    """The sinks: each record to the tables as it comes, its error (if any) to stderr, the progress bar on."""
    answered = []
    with tqdm(total=total, disable=quiet or total <= 1, file=sys.stderr, unit="img", desc=PROG) as progress:
        for record in records:
            if "error" in record:
                progress.write(f"{PROG}: {record['error']}", file=sys.stderr)
            tables.write(record)
            answered.append(record)
            progress.update()
    return answered


def _finish_run(records: list[dict], kept: int, report_path: str | None, quiet: bool, seconds: float, backend: str):
    """The HTML report, the summary line, and exit status 1 when some images failed."""
    if report_path:
        try:
            write_report(records, report_path)
        except OSError as exc:
            raise ResultsUnwritable(f"cannot write the report {report_path}: {exc.strerror or exc}") from None
    answered = records[kept:]
    failures = sum("error" in r for r in answered)
    if not quiet and len(answered) > 1:
        verdicts = Counter(r.get("verdict") for r in answered if "error" not in r)
        counts = ", ".join(f"{verdicts[v]} {v}" for v in ("real", "uncertain", "fake"))
        click.echo(
            f"{PROG}: {len(answered)} images, {failures} failed ({counts}), {len(answered) / seconds:.1f} images/s "
            f"({backend})",
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
            kept.setdefault(input_key(record["path"]), record)
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


def _demo_model(quiet: bool) -> Path:
    if not (DEMO_DIR / MANIFEST_NAME).is_file():
        raise UsageError(f"the embedded demo model is missing ({DEMO_DIR / MANIFEST_NAME}); pass --model PATH")
    if not quiet:
        click.echo(f"{PROG}: {DEMO_NOTE}", err=True)
    return DEMO_DIR


def _open_detector(
    model, backend, device, threads, threshold, batch, quiet, self_check: bool = True, strict: bool = False
) -> Detector:
    if model is None:
        model = _demo_model(quiet)
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
