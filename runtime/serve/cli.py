"""maskclip-serve: an HTTP server (API, web page, metrics) over one exported artifact.

One process, one Detector, one micro-batching queue: scale out with more processes or replicas,
not with workers inside one (each would load its own copy of the model and queue).
SIGTERM/SIGINT: /readyz turns 503, in-flight requests are answered, the model is released, then
the process ends by that signal as uvicorn does (status 143 / 130 in a shell). Other exit statuses are
the table of errors.py (every command's): 2 usage error or unusable model, 3 the artifact failed its
on-device self-check, 4 the serve (or triton) extra or the backend is missing, 5 the server failed.
Errors are one line on stderr.
"""

from __future__ import annotations

import logging
import socket
from functools import partial

import click

from ..backends import registry
from ..command import command
from ..detect.detector import DEMO_DIR, Detector, backend_for, model_artifact
from ..errors import BackendUnavailable, MaskclipError, NotFinished, UsageError, install_hint, message_of
from ..kernel.preprocess import DEFAULT_MAX_PIXELS
from ..options import DEMO_NOTE, check_options, model_options
from .limits import DEFAULT_DECODE_BUDGET, DEFAULT_SERVE_MAX_PIXELS

PROG = "maskclip-serve"
SERVE_EXTRA_HINT = f"install the serve extra, from the checkout: {install_hint('serve')}"
log = logging.getLogger("maskclip_runtime")


@command(PROG, epilog="SIGTERM drains in-flight requests, then exits by the signal (143; 130 for Ctrl-C).")
@model_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="How long the first image of a batch waits for more requests.")  # fmt: skip
@click.option("--max-queue", type=click.IntRange(min=1), default=64, show_default=True,
              help="Images waiting for the model; past it requests get 429.")  # fmt: skip
@click.option("--max-bytes", type=click.IntRange(min=1), default=20 * 1024 * 1024, show_default=True,
              help="Request body limit; larger requests get 413.")  # fmt: skip
@click.option("--max-pixels", type=click.IntRange(1, DEFAULT_MAX_PIXELS), default=DEFAULT_SERVE_MAX_PIXELS,
              show_default=True, help="Refuse larger images (413), from their header.")  # fmt: skip
@click.option("--decode-budget", type=click.IntRange(min=1), default=DEFAULT_DECODE_BUDGET, show_default=True,
              help="Bytes of decode memory all requests hold together; a request needing more gets 413.")  # fmt: skip
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              help="Seconds per request; slower answers become 504.")  # fmt: skip
@click.option("--triton", is_flag=True, help="Serve through NVIDIA Triton (pytriton): KServe v2 over HTTP and gRPC.")
@check_options
def main(**options) -> None:
    """Serve an artifact over HTTP: POST /v1/detect, /v1/detect/batch; GET /, /v1/model, /healthz, /readyz, /metrics."""
    serve(**options)


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
    max_pixels: int,
    decode_budget: int,
    no_self_check: bool,
    strict: bool,
    triton: bool,
    quiet: bool,
) -> None:
    handler = _StderrHandler(logging.WARNING if quiet else logging.INFO)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        registry.require(backend_for(model, backend))  # refused here before any model is read
        if model is None:
            model = str(DEMO_DIR)
            log.info(DEMO_NOTE)
        artifact = model_artifact(model)  # a wrong path or a tampered file: refuse before listening
        load_detector = partial(
            Detector,
            model,
            backend=backend,
            device=device,
            threads=threads,
            threshold=threshold,
            batch=batch or artifact.batch.max,
            self_check=not no_self_check,
            strict=strict,
        )
        if triton:
            from .triton import serve_with_triton

            try:
                serve_with_triton(load_detector, host, port, max_wait_ms)
            except ValueError as exc:
                raise _load_failure(exc) from None
            return
        try:
            import uvicorn

            from .app import ServeSettings, create_app
        except ImportError as exc:
            raise BackendUnavailable(f"{exc.name} is not installed; {SERVE_EXTRA_HINT}") from None
        settings = ServeSettings(max_wait_ms, max_queue, max_bytes, timeout_s, max_pixels, decode_budget)
        _run_uvicorn(uvicorn, create_app, settings, load_detector, host, port, quiet)
    finally:
        log.removeHandler(handler)


def _run_uvicorn(uvicorn, create_app, settings, load_detector, host: str, port: int, quiet: bool) -> None:
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
    sock = _listening_socket(host, port)
    port = sock.getsockname()[1]
    log.info(f"serving on http://{host}:{port} (model loads in the background; GET /readyz says when)")
    server.run(sockets=[sock])
    if failure:
        raise _load_failure(failure[0]) from None
    if not server.started:
        raise NotFinished(f"the server did not start on {host}:{port} (see the lines above)")


def _listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound here: a port in use is one line and status 5 before the model loads
    (uvicorn's own bind ends the process from inside its event loop)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise NotFinished(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _load_failure(exc: Exception) -> MaskclipError:
    """The error the model's loading ended with, as the error the command reports (a self-check keeps its 3)."""
    return exc if isinstance(exc, MaskclipError) else UsageError(f"cannot load the model: {message_of(exc)}")


class _StderrHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"{PROG}: {record.getMessage()}", err=True)
