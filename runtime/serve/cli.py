"""maskclip-serve: an HTTP server (API, web page, metrics) over one exported artifact.

One process, one Detector, one micro-batching queue: scale out with more processes or replicas,
not with workers inside one (each would load its own copy of the model and queue).
SIGTERM/SIGINT: /readyz turns 503, in-flight requests are answered, the model is released, then
the process ends by that signal as uvicorn does (status 143 / 130 in a shell). Exit status 2: usage
error or unusable model; 3: the artifact failed its on-device self-check; 1: the server failed.
Errors are one line on stderr.
"""

from __future__ import annotations

import logging
import sys
from functools import partial

import click

from ..artifact import ArtifactError, load_artifact
from ..backends.base import BackendUnavailable
from ..cli import DEMO_DIR, DEMO_NOTE, EXIT_SELF_CHECK_FAILED, _check_device
from ..detector import Detector
from ..selfcheck import SelfCheckFailed

PROG = "maskclip-serve"
SERVE_EXTRA_HINT = "install the serve extra: pip install 'maskclip[serve]'"
log = logging.getLogger("maskclip_runtime")


@click.command(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="SIGTERM drains in-flight requests, then exits by the signal. Exit status: 1 server failure, "
    "2 usage error or unusable model, 3 the artifact failed its on-device self-check.",
)
@click.option("--model", type=click.Path(), help="Artifact folder or manifest.json (default: embedded demo model).")
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "tensorrt"]), default="auto", show_default=True)
@click.option("--device", callback=_check_device, help="cpu, cuda or cuda:N (default: the GPU when usable).")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), help="Verdict and mask threshold (default: manifest).")
@click.option("--batch", type=click.IntRange(min=1), help="Most images per forward pass (default: the artifact's max).")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for ONNX Runtime.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="How long the first image of a batch waits for more requests.")  # fmt: skip
@click.option("--max-queue", type=click.IntRange(min=1), default=64, show_default=True,
              help="Images waiting for the model; past it requests get 429.")  # fmt: skip
@click.option("--max-bytes", type=click.IntRange(min=1), default=20 * 1024 * 1024, show_default=True,
              help="Request body limit; larger requests get 413.")  # fmt: skip
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              help="Seconds per request; slower answers become 504.")  # fmt: skip
@click.option("--no-self-check", is_flag=True, help="Skip the artifact's on-device self-check (as in maskclip-run).")
@click.option(
    "--strict", is_flag=True, help="Refuse, not just warn, when the host lacks CPU features the artifact assumes."
)
@click.option("--triton", is_flag=True, help="Serve through NVIDIA Triton (pytriton): KServe v2 over HTTP and gRPC.")
@click.option("--quiet", "-q", is_flag=True, help="Only errors on stderr.")
def main(**options) -> None:
    """Serve an artifact over HTTP: POST /v1/detect, /v1/detect/batch; GET /, /v1/model, /healthz, /readyz, /metrics."""
    sys.exit(serve(**options))


def serve(
    model: str | None,
    backend: str,
    device: str | None,
    threshold: float | None,
    batch: int | None,
    threads: int | None,
    host: str,
    port: int,
    max_wait_ms: float,
    max_queue: int,
    max_bytes: int,
    timeout_s: float,
    no_self_check: bool,
    strict: bool,
    triton: bool,
    quiet: bool,
) -> int:
    handler = _StderrHandler(logging.WARNING if quiet else logging.INFO)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        if model is None:
            model = str(DEMO_DIR)
            log.info(DEMO_NOTE)
        try:
            artifact = load_artifact(model)  # a wrong path or a tampered file: refuse before listening
        except ArtifactError as exc:
            return _fail(str(exc), 2)
        load_detector = partial(
            Detector,
            artifact.dir,
            backend=backend,
            device=device,
            threads=threads,
            threshold=threshold,
            batch=batch or artifact.batch.max,
            self_check=not no_self_check,
            strict=strict,
        )
        if triton:
            from .triton import TritonUnavailable, serve_with_triton

            try:
                return serve_with_triton(load_detector, host, port, max_wait_ms)
            except (TritonUnavailable, ArtifactError, BackendUnavailable, ValueError) as exc:
                return _fail(str(exc), _load_failure_status(exc))
        try:
            import uvicorn

            from .app import ServeSettings, create_app
        except ImportError as exc:
            return _fail(f"{exc.name} is not installed; {SERVE_EXTRA_HINT}", 2)
        settings = ServeSettings(max_wait_ms=max_wait_ms, max_queue=max_queue, max_bytes=max_bytes, timeout_s=timeout_s)
        return _run_uvicorn(uvicorn, create_app, settings, load_detector, host, port, quiet)
    finally:
        log.removeHandler(handler)


def _run_uvicorn(uvicorn, create_app, settings, load_detector, host: str, port: int, quiet: bool) -> int:
    failure: list[Exception] = []

    class DrainingServer(uvicorn.Server):
        """On SIGTERM/SIGINT /readyz turns 503 at once (load balancers stop sending), then uvicorn
        stops accepting connections, waits for in-flight requests and runs the app's shutdown."""

        def handle_exit(self, sig, frame) -> None:
            app.state.serve.draining = True
            super().handle_exit(sig, frame)

    def on_load_failure(exc: Exception) -> None:
        failure.append(exc)
        server.should_exit = True

    app = create_app(load_detector, settings, on_load_failure)
    config = uvicorn.Config(
        app, host=host, port=port, workers=1, access_log=False, log_level="warning" if quiet else "info"
    )
    server = DrainingServer(config)
    log.info(f"serving on http://{host}:{port} (model loads in the background; GET /readyz says when)")
    server.run()
    if failure:
        return _fail(f"cannot load the model: {app.state.serve.load_error}", _load_failure_status(failure[0]))
    return 0 if server.started else 1


def _load_failure_status(exc: Exception) -> int:
    """maskclip-run's table: 3 the artifact failed its on-device self-check, 2 anything else unusable."""
    return EXIT_SELF_CHECK_FAILED if isinstance(exc, SelfCheckFailed) else 2


def _fail(message: str, status: int) -> int:
    click.echo(f"{PROG}: error: {message}", err=True)
    return status


class _StderrHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"{PROG}: {record.getMessage()}", err=True)
