"""maskclip-serve: every endpoint, every error status, micro-batching, the queue bound, timeouts, metrics
and a real uvicorn process draining on SIGTERM. Answers are checked against maskclip-run's records
for the same files (the same record type, computed by another path)."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("fastapi", reason="maskclip-serve needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx (dev extra)")

from fastapi.testclient import TestClient  # noqa: E402
from serve_process import EXAMPLES, post_image, start_server, wait_until  # noqa: E402

from maskclip_runtime import cli  # noqa: E402
from maskclip_runtime.contract.artifact import load_artifact  # noqa: E402
from maskclip_runtime.detect.detector import Detector  # noqa: E402
from maskclip_runtime.detect.selfcheck import SelfCheckFailed, SelfCheckResult  # noqa: E402
from maskclip_runtime.errors import EXIT_VERIFICATION_FAILED  # noqa: E402
from maskclip_runtime.serve import cli as serve_cli  # noqa: E402
from maskclip_runtime.serve.app import ServeSettings, create_app  # noqa: E402
from maskclip_runtime.serve.batcher import Draining, MicroBatcher, QueueFull  # noqa: E402

COMPARED_FIELDS = (
    "sha256",
    "width",
    "height",
    "fake_prob",
    "verdict",
    "threshold",
    "mask_fraction",
    "backend",
    "model_id",
)


def demo_detector(**kwargs) -> Detector:
    return Detector(cli.DEMO_DIR, backend="onnxruntime", device="cpu", threads=1, batch=8, **kwargs)


def start_client(app) -> TestClient:
    client = TestClient(app)
    client.__enter__()
    wait_until(lambda: client.get("/readyz").status_code == 200)
    return client


class Gate:
    """Makes the Detector's forward pass wait until released: a test decides when inference ends."""

    def __init__(self, detector: Detector):
        self.open = threading.Event()
        self.entered = threading.Event()
        self.batch_sizes: list[int] = []
        real = detector.detect_prepared

        def gated(prepared, masks_for="all"):
            self.entered.set()
            self.open.wait(20)
            self.batch_sizes.append(len(prepared))
            return real(prepared, masks_for)

        detector.detect_prepared = gated


@pytest.fixture(scope="module")
def run_records(tmp_path_factory) -> dict[str, dict]:
    """maskclip-run's records for the example images, with its mask and overlay PNGs."""
    out = tmp_path_factory.mktemp("run")
    result = CliRunner().invoke(
        cli.main,
        [*map(str, EXAMPLES), "--json", str(out / "r.jsonl"), "--prob-maps", str(out / "m")]
        + ["--overlays", str(out / "o"), "--backend", "onnxruntime", "--device", "cpu", "--quiet"],
    )
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in (out / "r.jsonl").read_text().splitlines()]
    return {Path(r["path"]).name: r for r in records}


@pytest.fixture(scope="module")
def client():
    app = create_app(demo_detector, ServeSettings(max_wait_ms=2, max_queue=16, max_bytes=200_000, timeout_s=10))
    client = start_client(app)
    yield client
    client.__exit__(None, None, None)


def png_from_data_uri(uri: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri[len(prefix) :]))))


# ---- answers


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_detect_answers_maskclip_runs_record(client, run_records, path):
    expected = run_records[path.name]
    multipart = client.post("/v1/detect?masks_for=all", files={"file": (path.name, path.read_bytes(), "image/jpeg")})
    raw = client.post("/v1/detect?masks_for=all", content=path.read_bytes(), headers={"Content-Type": "image/jpeg"})
    assert multipart.status_code == raw.status_code == 200
    for answer, name in ((multipart.json(), path.name), (raw.json(), "-")):
        assert answer["path"] == name
        assert {k: answer[k] for k in COMPARED_FIELDS} == {k: expected[k] for k in COMPARED_FIELDS}
        assert answer["mask"] is None and answer["overlay"] is None
        assert set(answer) == set(expected)


def test_mask_and_overlay_pngs_match_maskclip_runs_files(client, run_records):
    path = EXAMPLES[1]
    answer = client.post("/v1/detect?mask=png&overlay=png", files={"file": (path.name, path.read_bytes())}).json()
    expected = run_records[path.name]
    prob_map = Path(expected["overlay"]).parent.parent / "m" / f"{path.stem}_prob.png"
    np.testing.assert_array_equal(png_from_data_uri(answer["mask"]), np.asarray(Image.open(prob_map)))
    # The run's overlay file is the server's overlay (the photo is under the size cap) above a legend strip.
    overlay = png_from_data_uri(answer["overlay"])
    assert overlay.shape[:2] == (expected["height"], expected["width"])
    with Image.open(expected["overlay"]) as png:
        assert png.height > expected["height"]
        np.testing.assert_array_equal(overlay, np.asarray(png)[: expected["height"], : expected["width"]])


def test_batch_endpoint_answers_in_order_and_reports_a_bad_file(client, run_records):
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in EXAMPLES]
    files.insert(1, ("files", ("notes.jpg", b"not an image at all", "image/jpeg")))
    response = client.post("/v1/detect/batch?masks_for=all", files=files)
    assert response.status_code == 200
    records = response.json()["records"]
    assert [r["path"] for r in records] == [EXAMPLES[0].name, "notes.jpg", *(p.name for p in EXAMPLES[1:])]
    assert set(records[1]) == {"path", "error"}
    for record in records[:1] + records[2:]:
        expected = run_records[record["path"]]
        assert {k: record[k] for k in COMPARED_FIELDS} == {k: expected[k] for k in COMPARED_FIELDS}


def test_health_readiness_and_model_summary(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    manifest = load_artifact(cli.DEMO_DIR).manifest
    model = client.get("/v1/model").json()
    assert model["model_id"] == manifest.model_id == ready.json()["model_id"]
    assert model["precision"] == manifest.precision
    assert model["backend"] == "onnxruntime-cpu"
    assert model["batch"]["max"] == manifest.batch.max == model["server_batch"]
    assert model["input_size"] == manifest.preprocess.size
    assert model["gate"]["passed"] is manifest.verification["passed"]
    assert model["gate"]["max_prob_diff"] == manifest.verification["max_prob_diff"]


def test_page_is_self_contained(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    # Offline: no script, style, font or image from anywhere else.
    assert "http://" not in page.text and "https://" not in page.text and "//cdn" not in page.text


# ---- errors


def _truncated_jpeg() -> bytes:
    data = EXAMPLES[0].read_bytes()
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("request_kwargs", "status"),
    [
        ({"content": b"x" * 200_001, "headers": {"Content-Type": "image/jpeg"}}, 413),
        ({"files": {"file": ("big.jpg", b"x" * 200_001)}}, 413),
        ({"content": "hello", "headers": {"Content-Type": "text/plain"}}, 415),
        ({"files": {"file": ("a.txt", b"hello", "text/plain")}}, 415),
        ({"content": b"hello, not an image", "headers": {"Content-Type": "image/jpeg"}}, 415),
        ({"content": b"", "headers": {"Content-Type": "image/jpeg"}}, 400),
        ({"content": _truncated_jpeg(), "headers": {"Content-Type": "image/jpeg"}}, 400),
        ({"files": {"image": ("a.jpg", EXAMPLES[0].read_bytes())}}, 400),
        (
            {"files": [("file", ("a.jpg", EXAMPLES[0].read_bytes())), ("file", ("b.jpg", EXAMPLES[1].read_bytes()))]},
            400,
        ),
    ],
    ids=[
        "too-large",
        "too-large-multipart",
        "text-body",
        "text-part",
        "unknown-format",
        "empty",
        "truncated",
        "no-file",
        "two-files",
    ],
)
def test_bad_requests_get_their_status_and_one_line(client, request_kwargs, status):
    response = client.post("/v1/detect", **request_kwargs)
    assert response.status_code == status
    body = response.json()
    assert set(body) == {"error"} and body["error"] and "\n" not in body["error"]


def test_chunked_body_over_the_limit_is_cut_off(client):
    def chunks():
        for _ in range(30):
            yield b"y" * 10_000  # 300 kB in total, no Content-Length

    response = client.post("/v1/detect", content=chunks(), headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 413


def test_bad_query_parameter_is_400(client):
    response = client.post(
        "/v1/detect?mask=jpeg", content=EXAMPLES[0].read_bytes(), headers={"Content-Type": "image/jpeg"}
    )
    assert response.status_code == 400 and set(response.json()) == {"error"}


def test_too_many_files_and_unknown_paths_answer_in_the_same_shape():
    app = create_app(demo_detector, ServeSettings(max_queue=2))
    client = start_client(app)
    try:
        files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in EXAMPLES]  # 3 > max_queue 2
        too_many = client.post("/v1/detect/batch", files=files)
        unknown = client.get("/v2/nothing")
        wrong_method = client.get("/v1/detect")
    finally:
        client.__exit__(None, None, None)
    assert too_many.status_code == 413 and set(too_many.json()) == {"error"}
    assert unknown.status_code == 404 and set(unknown.json()) == {"error"}
    assert wrong_method.status_code == 405 and set(wrong_method.json()) == {"error"}


def test_batch_endpoint_wants_multipart(client):
    response = client.post("/v1/detect/batch", content=EXAMPLES[0].read_bytes(), headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 415


def test_metrics_count_requests_rejections_and_batches():
    app = create_app(demo_detector, ServeSettings(max_wait_ms=1, max_bytes=50_000))
    client = start_client(app)
    try:
        for path in EXAMPLES:
            assert client.post(
                "/v1/detect", content=path.read_bytes(), headers={"Content-Type": "image/jpeg"}
            ).is_success
        client.post("/v1/detect", content=b"x" * 60_000, headers={"Content-Type": "image/jpeg"})
        client.post("/v1/detect", content=b"text", headers={"Content-Type": "text/plain"})
        text = client.get("/metrics").text
    finally:
        client.__exit__(None, None, None)
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[:1] != "#"}
    assert samples['maskclip_requests_total{endpoint="/v1/detect",status="200"}'] == len(EXAMPLES)
    assert samples['maskclip_rejections_total{reason="too_large"}'] == 1
    assert samples['maskclip_rejections_total{reason="unsupported_media_type"}'] == 1
    assert samples["maskclip_batch_size_sum"] == len(EXAMPLES)
    assert samples['maskclip_request_seconds_count{endpoint="/v1/detect"}'] == len(EXAMPLES) + 1  # the 413 had no route
    assert samples["maskclip_queue_depth"] == 0
    verdicts = {v: samples.get(f'maskclip_images_total{{verdict="{v}"}}', 0) for v in ("fake", "real")}
    assert sum(verdicts.values()) == len(EXAMPLES)


# ---- readiness, queue bound, timeout


def test_not_ready_until_the_detector_is_loaded_and_never_if_it_fails():
    release = threading.Event()

    def slow_loader():
        release.wait(20)
        return demo_detector()

    client = TestClient(create_app(slow_loader))
    with client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503
        assert client.get("/v1/model").status_code == 503
        assert (
            client.post(
                "/v1/detect", content=EXAMPLES[0].read_bytes(), headers={"Content-Type": "image/jpeg"}
            ).status_code
            == 503
        )
        release.set()
        wait_until(lambda: client.get("/readyz").status_code == 200)

    failures = []

    def broken_loader():
        raise RuntimeError("self-check failed: outputs differ from the manifest's reference")

    with TestClient(create_app(broken_loader, on_load_failure=failures.append)) as client:
        wait_until(lambda: failures)
        ready = client.get("/readyz")
        assert ready.status_code == 503 and set(ready.json()) == {"ready", "reason"}
        assert client.get("/v1/model").status_code == 503
    assert [type(f) for f in failures] == [RuntimeError]


def test_full_queue_answers_429_and_queued_work_still_finishes():
    app = create_app(demo_detector, ServeSettings(max_wait_ms=0, max_queue=3))
    client = start_client(app)
    try:
        batcher = app.state.serve.batcher
        gate = Gate(batcher.detector)
        image = batcher.detector.prepare(Image.open(EXAMPLES[0]).convert("RGB"))
        first = batcher.submit([image])  # taken by the batcher, held in the gated forward pass
        assert gate.entered.wait(10)
        queued = batcher.submit([image] * 3)  # the queue is now full
        response = client.post("/v1/detect", content=EXAMPLES[0].read_bytes(), headers={"Content-Type": "image/jpeg"})
        assert response.status_code == 429 and set(response.json()) == {"error"}
        assert 'maskclip_rejections_total{reason="queue_full"} 1.0' in client.get("/metrics").text
        gate.open.set()
        results = [f.result(timeout=10) for f in first + queued]
        assert len({r.fake_prob for r in results}) == 1
        assert client.post(
            "/v1/detect", content=EXAMPLES[0].read_bytes(), headers={"Content-Type": "image/jpeg"}
        ).is_success
    finally:
        gate.open.set()
        client.__exit__(None, None, None)


def test_slow_inference_answers_504_and_the_abandoned_image_is_skipped():
    app = create_app(demo_detector, ServeSettings(max_wait_ms=0, timeout_s=0.3))
    client = start_client(app)
    try:
        batcher = app.state.serve.batcher
        gate = Gate(batcher.detector)
        image = batcher.detector.prepare(Image.open(EXAMPLES[0]).convert("RGB"))
        blocker = batcher.submit([image])
        assert gate.entered.wait(10)
        response = client.post("/v1/detect", content=EXAMPLES[1].read_bytes(), headers={"Content-Type": "image/jpeg"})
        assert response.status_code == 504
        gate.open.set()
        blocker[0].result(timeout=10)
        wait_until(lambda: batcher.depth == 0)
        assert gate.batch_sizes == [1]  # the timed-out request never reached the model
    finally:
        gate.open.set()
        client.__exit__(None, None, None)


def test_masks_for_defaults_to_fake_without_images_and_leaves_verdicts_unchanged(client, run_records):
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in EXAMPLES]
    plain = client.post("/v1/detect/batch", files=files).json()["records"]
    every = client.post("/v1/detect/batch?masks_for=all", files=files).json()["records"]
    none = client.post("/v1/detect/batch?masks_for=none", files=files).json()["records"]
    verdicts = [r["verdict"] for r in every]
    assert {"real", "fake"} <= set(verdicts)  # the examples hold both, so the default policy shows
    assert [r["mask_computed"] for r in plain] == [v != "real" for v in verdicts]
    assert [r["mask_computed"] for r in every] == [True] * len(EXAMPLES)
    assert [r["mask_computed"] for r in none] == [False] * len(EXAMPLES)
    for answers in (plain, none):
        assert [r["fake_prob"] for r in answers] == [r["fake_prob"] for r in every]
        assert all(r["mask_fraction"] is None for r in answers if not r["mask_computed"])
    for record, reference in zip(plain, every, strict=True):
        if record["mask_computed"]:
            assert record["mask_fraction"] == reference["mask_fraction"]
    with_images = client.post("/v1/detect/batch?overlay=png&masks_for=fake", files=files).json()["records"]
    assert [r["overlay"] is not None for r in with_images] == [v != "real" for v in verdicts]
    refused = client.post("/v1/detect?mask=png&masks_for=none", content=EXAMPLES[0].read_bytes())
    assert refused.status_code == 400
    assert client.post("/v1/detect?masks_for=some", content=EXAMPLES[0].read_bytes()).status_code == 400


# ---- the batcher itself


def test_one_forward_pass_serves_requests_with_different_mask_policies():
    detector = demo_detector()
    prepared = [detector.prepare(Image.open(p).convert("RGB")) for p in EXAMPLES]
    gate = Gate(detector)
    batcher = MicroBatcher(detector, max_wait_ms=0, max_queue=16)
    first = batcher.submit(prepared[:1], "none")
    assert gate.entered.wait(10)
    policies = ["all", "none", "fake"][: len(prepared)]
    futures = [f for p, policy in zip(prepared, policies, strict=True) for f in batcher.submit([p], policy)]
    gate.open.set()
    answers = [f.result(timeout=10) for f in futures]
    first[0].result(timeout=10)
    batcher.close()
    assert gate.batch_sizes == [1, len(prepared)]
    expected = detector.detect_prepared(prepared, "all")
    for answer, reference, policy in zip(answers, expected, policies, strict=True):
        assert answer.fake_prob == reference.fake_prob
        assert answer.mask_computed == (policy == "all" or (policy == "fake" and reference.verdict != "real"))


def test_concurrent_images_share_a_forward_pass_with_the_same_answers():
    detector = demo_detector()
    images = [Image.open(p).convert("RGB") for p in EXAMPLES] * 2
    prepared = [detector.prepare(image) for image in images]
    expected = detector.detect(images[:1]) + detector.detect(images[1:])
    gate = Gate(detector)
    sizes = []
    batcher = MicroBatcher(detector, max_wait_ms=0, max_queue=16, on_batch=lambda size, seconds: sizes.append(size))
    futures = batcher.submit(prepared[:1])
    assert gate.entered.wait(10)
    futures += [f for p in prepared[1:] for f in batcher.submit([p])]  # arrive one by one while the model is busy
    gate.open.set()
    answers = [f.result(timeout=10) for f in futures]
    batcher.close()
    assert sizes == [1, len(images) - 1]
    for answer, reference in zip(answers, expected, strict=True):
        assert answer.fake_prob == pytest.approx(reference.fake_prob, abs=1e-6)
        np.testing.assert_allclose(answer.model_mask, reference.model_mask, atol=1e-6)


def test_max_wait_lets_a_lone_image_go_after_the_wait():
    detector = demo_detector()
    batcher = MicroBatcher(detector, max_wait_ms=150, max_queue=4)
    image = detector.prepare(Image.open(EXAMPLES[0]).convert("RGB"))
    started = time.monotonic()
    (future,) = batcher.submit([image])
    future.result(timeout=10)
    waited = time.monotonic() - started
    batcher.close()
    assert waited >= 0.15


def test_batcher_bound_and_drain_on_close():
    detector = demo_detector()
    gate = Gate(detector)
    batcher = MicroBatcher(detector, max_wait_ms=0, max_queue=2)
    image = detector.prepare(Image.open(EXAMPLES[0]).convert("RGB"))
    running = batcher.submit([image])
    assert gate.entered.wait(10)
    with pytest.raises(QueueFull):
        batcher.submit([image] * 3)  # all or nothing: 3 never fit in 2
    queued = batcher.submit([image] * 2)
    with pytest.raises(QueueFull):
        batcher.submit([image])
    closer = threading.Thread(target=batcher.close)
    closer.start()
    wait_until(lambda: batcher._closing)
    with pytest.raises(Draining):
        batcher.submit([image])
    gate.open.set()
    closer.join(10)
    assert all(f.done() and f.exception() is None for f in running + queued)


# ---- the command


def test_unusable_model_exits_2_before_listening(tmp_path):
    result = CliRunner().invoke(serve_cli.main, ["--model", str(tmp_path / "nothing"), "--port", "1"])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "error" in result.stderr


def test_failed_self_check_stops_the_server_with_maskclip_runs_exit_status(monkeypatch):
    def failing_detector(*args, **kwargs):
        raise SelfCheckFailed("self-check failed on onnxruntime-cpu cpu", SelfCheckResult("failed"))

    monkeypatch.setattr(serve_cli, "Detector", failing_detector)
    result = CliRunner().invoke(serve_cli.main, ["--port", "0", "--quiet"])
    assert result.exit_code == EXIT_VERIFICATION_FAILED
    assert result.stderr.count("\n") == 1


def test_sigterm_answers_in_flight_requests_then_exits(run_records):
    # A lone image waits up to 1.5 s for company, so it is surely in flight when SIGTERM arrives.
    process, url = start_server("--max-wait-ms", "1500", "--backend", "onnxruntime", "--device", "cpu")
    try:
        answers = []
        sender = threading.Thread(target=lambda: answers.append(post_image(url, EXAMPLES[2])))
        sender.start()
        time.sleep(0.5)
        os.kill(process.pid, signal.SIGTERM)
        sender.join(30)
        status = process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    assert answers and answers[0][0] == 200
    assert answers[0][1]["fake_prob"] == run_records[EXAMPLES[2].name]["fake_prob"]
    assert status == -signal.SIGTERM  # uvicorn re-raises the signal once drained, as process managers expect
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/healthz", timeout=2)


def test_server_process_serves_the_embedded_demo_by_default():
    process, url = start_server()
    try:
        status, record = post_image(url, EXAMPLES[0])
        summary = json.loads(urllib.request.urlopen(url + "/v1/model", timeout=5).read())
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert status == 200 and record["model_id"] == summary["model_id"]
    assert summary["source"] == "embedded demo model"
    assert process.returncode == -signal.SIGTERM
