"""maskclip-serve's HTTP API over one Detector: detect, batch detect, model summary, health, metrics, page.

Errors are JSON `{"error": "one line"}` with a status that says whose fault it is: 400 undecodable
image or bad parameter, 413 body over the size limit, an image over the pixel limit or a request over
the decode budget (limits.py), 415 not an image, 429 queue full (retry),
503 not ready, shutting down or the decode budget busy, 504 over the per-request timeout, 500 inference failed.

`masks_for` (all, fake, none) says which images get a mask, as in maskclip-run: by default `all` when
the request asks for a mask or overlay image, else `fake`; on a cascade artifact an image judged real
then skips the localise graph. Every record says whether its mask was computed (`mask_computed`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import Enum
from importlib.resources import files

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..detect.detector import MASKS_FOR, Detection, Detector, PreparedImage
from ..errors import message_of
from ..kernel.preprocess import PreprocessSpec
from ..pipeline.steps import Item, Plan, Upload, decode, record
from ..present.image_sinks import InlineImages
from .batcher import Draining, MicroBatcher, QueueFull
from .docs import api_docs_html
from .limits import (
    DEFAULT_DECODE_BUDGET,
    DEFAULT_SERVE_MAX_PIXELS,
    DecodeBudget,
    OverBudget,
    decoded_size,
    request_bytes,
)
from .metrics import ServeMetrics

log = logging.getLogger("maskclip_runtime")

# Upload types taken as images; Pillow decides the actual format from the bytes.
GENERIC_UPLOAD_TYPES = ("application/octet-stream", "")
GATE_SUMMARY_KEYS = (
    "passed",
    "images",
    "candidate_backend",
    "tolerances",
    "max_prob_diff",
    "flip_rate",
    "mask_iou_mean",
)
RAW_UPLOAD_NAME = "-"  # the record's "path" for a body that is the image itself (like stdin in maskclip-run)


@dataclass(frozen=True)
class ServeSettings:
    max_wait_ms: float = 5.0  # how long the first image of a batch waits for company
    max_queue: int = 64  # images waiting for the model; more -> 429
    max_bytes: int = 20 * 1024 * 1024  # request body limit -> 413
    timeout_s: float = 30.0  # per request, from arrival to answer -> 504
    max_pixels: int = DEFAULT_SERVE_MAX_PIXELS  # larger images are refused from their header -> 413
    decode_budget: int = DEFAULT_DECODE_BUDGET  # decode memory of all requests together (limits.py)


class ServeError(Exception):
    """A request that gets an error status and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class ImageFormat(str, Enum):
    png = "png"


MasksFor = Enum("MasksFor", {policy: policy for policy in MASKS_FOR}, type=str)


class ServerState:
    """The Detector is loaded in a thread, so /healthz answers at once and /readyz says when it is usable."""

    def __init__(self, load_detector: Callable[[], Detector], settings: ServeSettings, metrics: ServeMetrics):
        self.settings = settings
        self.metrics = metrics
        self.detector: Detector | None = None
        self.batcher: MicroBatcher | None = None
        self.load_error: str | None = None
        self.draining = False
        self._load_detector = load_detector
        self._lock = threading.Lock()

    def load(self, on_load_failure: Callable[[Exception], None]) -> None:
        try:
            detector = self._load_detector()
        except Exception as exc:  # unusable artifact or device, failed self-check: one line, then the server stops
            self.load_error = message_of(exc)
            on_load_failure(exc)
            return
        batcher = MicroBatcher(
            detector,
            self.settings.max_wait_ms,
            self.settings.max_queue,
            on_batch=self.metrics.observe_batch,
            on_depth=self.metrics.queue_depth.set,
        )
        with self._lock:
            if self.draining:  # shut down while loading
                batcher.close()
                detector.close()
                return
            self.detector, self.batcher = detector, batcher
        log.info(f"ready: model {detector.model_id} on {detector.backend}, up to {detector.batch_size} images per pass")

    def close(self) -> None:
        """Refuse new work, finish queued work, release the model."""
        with self._lock:
            self.draining = True
            batcher, detector = self.batcher, self.detector
        if batcher is not None:
            batcher.close()
        if detector is not None:
            detector.close()

    def not_ready_reason(self) -> str | None:
        if self.draining:
            return "shutting down"
        if self.load_error is not None:
            return f"model failed to load: {self.load_error}"
        if self.batcher is None:
            return "model loading"
        return None

    def ready_batcher(self) -> MicroBatcher:
        reason = self.not_ready_reason()
        if reason is not None:
            raise ServeError(503, reason)
        return self.batcher


def create_app(
    load_detector: Callable[[], Detector],
    settings: ServeSettings = ServeSettings(),
    on_load_failure: Callable[[Exception], None] = lambda exc: None,
) -> FastAPI:
    """The app; load_detector runs in a thread at startup, on_load_failure(exception) if it raises."""
    metrics = ServeMetrics()
    state = ServerState(load_detector, settings, metrics)
    budget = DecodeBudget(settings.decode_budget)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(target=state.load, args=(on_load_failure,), name="maskclip-load", daemon=True).start()
        yield
        await run_in_threadpool(state.close)

    app = FastAPI(
        title="maskclip-serve",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(_no_unknown_parameters)],
    )
    app.state.serve = state
    app.add_middleware(_Instrumented, metrics=metrics, max_bytes=settings.max_bytes)

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Starlette's own refusals (unknown path, wrong method, malformed multipart) in the same shape.
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid value')}"}, status_code=400)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(api_docs_html(app.openapi()))

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        reason = state.not_ready_reason()
        if reason is not None:
            return JSONResponse({"ready": False, "reason": reason}, status_code=503)
        return JSONResponse({"ready": True, "model_id": state.detector.model_id, "backend": state.detector.backend})

    @app.get("/v1/model")
    async def model() -> dict:
        state.ready_batcher()
        return model_summary(state.detector)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    _detection_routes(app, state, budget)
    return app


def _detection_routes(app: FastAPI, state: ServerState, budget: DecodeBudget) -> None:
    """POST /v1/detect and /v1/detect/batch: uploads -> the pipeline's decode, the micro-batcher, its records."""
    settings = state.settings

    @app.post("/v1/detect")
    async def detect(
        request: Request,
        mask: ImageFormat | None = Query(None),
        overlay: ImageFormat | None = Query(None),
        masks_for: MasksFor | None = Query(None),
    ) -> dict:
        """One image: multipart field `file`, or the image bytes as the body -> maskclip-run's record."""
        deadline = time.monotonic() + settings.timeout_s
        images, plan = _request_plan(mask, overlay, masks_for, settings.max_pixels)
        batcher = state.ready_batcher()
        (upload,) = await _uploads(request, "file", many=False, limit=1)
        spec = batcher.detector.artifact.preprocess
        async with _budgeted(budget, plan, spec, images, [upload], deadline):
            item = await run_in_threadpool(decode, upload, spec, plan)
            if item.error is not None:
                raise ServeError(_refusal_status(item), item.error)
            (detection,) = await _infer(batcher, [item.prepared], plan.masks_for, deadline)
            return await run_in_threadpool(_record, state, item, detection, images)

    @app.post("/v1/detect/batch")
    async def detect_batch(
        request: Request,
        mask: ImageFormat | None = Query(None),
        overlay: ImageFormat | None = Query(None),
        masks_for: MasksFor | None = Query(None),
    ) -> dict:
        """Several images as repeated multipart fields `files` -> {"records": [...]} in upload order.

        An undecodable file gets an error record ({"path", "error"}) and the others are answered,
        as in maskclip-run.
        """
        deadline = time.monotonic() + settings.timeout_s
        images, plan = _request_plan(mask, overlay, masks_for, settings.max_pixels)
        batcher = state.ready_batcher()
        uploads = await _uploads(request, "files", many=True, limit=settings.max_queue)
        spec = batcher.detector.artifact.preprocess
        async with _budgeted(budget, plan, spec, images, uploads, deadline):
            # One after another: the budget covers one decode at a time per request (limits.py).
            items = [await run_in_threadpool(decode, upload, spec, plan) for upload in uploads]
            good = [item for item in items if item.error is None]
            try:
                prepared = [item.prepared for item in good]
                found = await _infer(batcher, prepared, plan.masks_for, deadline) if good else []
            except ServeError as exc:
                if exc.status != 500:
                    raise
                for item in good:  # as in maskclip-run: a failed forward pass fails its images, each with a record
                    item.error = f"{item.path}: {exc}"
                good, found = [], []
            # Taken out one by one: a Detection keeps the full-size mask it made, so none outlives its record.
            detections = dict(zip(map(id, good), found, strict=True))
            records = []
            for item in items:
                detection = detections.pop(id(item), None)
                records.append(await run_in_threadpool(_record, state, item, detection, images))
                del detection
            return {"records": records}


def model_summary(detector: Detector) -> dict:
    """What /v1/model answers: which model, how it was exported and how it passed the gate."""
    artifact = detector.artifact
    manifest = artifact.manifest
    batch = artifact.batch
    return {
        "model_id": artifact.model_id,
        "config": manifest.identity.config_name,
        "source": manifest.source,
        "precision": manifest.precision,
        "topology": manifest.topology,
        "backend": detector.backend,
        "self_check": detector.self_check.status,
        "demo": detector.demo,
        "card": manifest.card.to_dict() if manifest.card else None,
        "threshold": detector.threshold,
        "input_size": artifact.preprocess.size,
        "batch": {"dynamic": batch.dynamic, "min": batch.min, "opt": batch.opt, "max": batch.max},
        "server_batch": detector.batch_size,
        "package_version": manifest.package_version,
        "gate": {key: manifest.verification.get(key) for key in GATE_SUMMARY_KEYS},
    }


async def _no_unknown_parameters(request: Request) -> None:
    """A query parameter no endpoint takes (?threshold=0.1) is refused, not silently ignored."""
    route = request.scope.get("route")
    known = {param.alias for param in route.dependant.query_params} if route is not None else set()
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        takes = ", ".join(sorted(known)) or "none"
        raise ServeError(400, f"unknown query parameter {', '.join(unknown)} (this endpoint takes: {takes})")


async def _uploads(request: Request, field: str, many: bool, limit: int) -> list[Upload]:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "multipart/form-data":
        form = await request.form()  # the body size limit bounds the parts; the count is checked below
        parts = [part for part in form.getlist(field) if isinstance(part, UploadFile)]
        if not parts:
            raise ServeError(400, f"the multipart body has no file field named {field!r}")
        if not many and len(parts) > 1:
            raise ServeError(400, f"{len(parts)} files in one request: send several to /v1/detect/batch")
        if len(parts) > limit:
            raise ServeError(413, f"{len(parts)} images in one request; at most {limit} (--max-queue)")
        uploads = []
        for part in parts:
            _check_image_type(part.content_type or "", part.filename or field)
            uploads.append(Upload(part.filename or field, await part.read()))
        return uploads
    if many:
        raise ServeError(415, f"send multipart/form-data with one {field!r} field per image, not {media or 'no type'}")
    _check_image_type(media, "the request body")
    return [Upload(RAW_UPLOAD_NAME, await request.body())]


def _check_image_type(media: str, what: str) -> None:
    media = media.split(";")[0].strip().lower()
    if not (media.startswith("image/") or media in GENERIC_UPLOAD_TYPES):
        raise ServeError(
            415, f"{what} is {media}, not an image: send image bytes or multipart/form-data with a 'file' field"
        )


@asynccontextmanager
async def _budgeted(
    budget: DecodeBudget, plan: Plan, spec: PreprocessSpec, images: InlineImages, uploads: list[Upload], deadline: float
):
    """Hold the decode memory the request's images need (from their headers) while it is answered."""
    reduce_to = plan.reduce_to(spec)
    sizes = [decoded_size(u.data, plan.max_pixels, reduce_to) for u in uploads]
    tensor_bytes = 3 * spec.size * spec.size * 4
    nbytes = request_bytes(sizes, tensor_bytes, images.mask or images.overlay, plan.full_size)
    try:
        async with budget.hold(nbytes, max(0.0, deadline - time.monotonic())):
            yield
    except OverBudget as exc:
        raise ServeError(413, str(exc)) from None
    except asyncio.TimeoutError:
        raise ServeError(503, "the server is busy decoding other requests; retry later") from None


def _refusal_status(item: Item) -> int:
    """An undecodable upload: 415 when it is no image format at all, 413 over the pixel limit, else 400."""
    return 415 if item.unknown_format else 413 if item.too_large else 400


def _masks_policy(masks_for: MasksFor | None, images_asked: bool) -> str:
    """The request's masks_for; a mask or overlay image asked for with masks_for=none is a bad request."""
    if masks_for is None:
        return "all" if images_asked else "fake"
    if masks_for is MasksFor.none and images_asked:
        raise ServeError(400, "masks_for=none computes no mask: drop mask= and overlay=, or ask for masks")
    return masks_for.value


async def _infer(
    batcher: MicroBatcher, images: list[PreparedImage], masks_for: str, deadline: float
) -> list[Detection]:
    try:
        futures = batcher.submit(images, masks_for)
    except QueueFull as exc:
        raise ServeError(429, f"{exc}; retry later") from None
    except Draining as exc:
        raise ServeError(503, str(exc)) from None
    waiting = asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
    try:
        # On timeout the queued images are cancelled too: the batcher skips them.
        return await asyncio.wait_for(waiting, max(0.0, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        raise ServeError(504, "no answer within the per-request timeout") from None
    except Exception as exc:  # raised by the backend inside the batcher thread
        reason = message_of(exc)
        raise ServeError(500, f"inference failed: {reason}") from None


def _request_plan(
    mask: ImageFormat | None, overlay: ImageFormat | None, masks_for: MasksFor | None, max_pixels: int
) -> tuple[InlineImages, Plan]:
    images = InlineImages(mask is not None, overlay is not None)
    policy = _masks_policy(masks_for, images.mask or images.overlay)
    return images, Plan(policy, full_size=images.wants_full_size, max_pixels=max_pixels)


def _record(state: ServerState, item: Item, detection: Detection | None, images: InlineImages) -> dict:
    answer = record(state.detector, item, detection, images)
    if "error" not in answer:
        state.metrics.images.labels(answer["verdict"]).inc()
    return answer


class _Instrumented:
    """Pure ASGI middleware: the body size limit (413) and request metrics.

    The limit is checked against Content-Length before anything is read, and against the bytes
    actually received for chunked bodies, so an oversized upload is never held in memory.
    """

    def __init__(self, app, metrics: ServeMetrics, max_bytes: int):
        self.app = app
        self.metrics = metrics
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        received = 0
        too_large = ServeError(413, f"request body over the {self.max_bytes:,}-byte limit")

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise too_large
            return message

        async def recording_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_bytes:
                response = JSONResponse({"error": str(too_large)}, status_code=413)
                await response(scope, receive, recording_send)
            else:
                await self.app(scope, limited_receive, recording_send)
        finally:
            route = scope.get("route")
            endpoint = route.path if route is not None else "other"
            self.metrics.observe_request(endpoint, status, time.perf_counter() - started)


PAGE = files(__package__).joinpath("page.html").read_text(encoding="utf-8")
