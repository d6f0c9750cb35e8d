"""Issue 24, maskclip-serve: what a hostile request or a busy port can do to the server process."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import subprocess
import sys
import urllib.request
from functools import partial
from pathlib import Path

import pytest
from PIL import Image

from maskclip_runtime.detect.detector import DEMO_DIR, Detector
from maskclip_runtime.errors import EXIT_NOT_FINISHED

pytest.importorskip("fastapi")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx (dev extra)")

from fastapi.testclient import TestClient  # noqa: E402
from serve_process import EXAMPLES, start_server, wait_until  # noqa: E402

from maskclip_runtime.serve.app import ServeSettings, create_app  # noqa: E402
from maskclip_runtime.serve.limits import DecodeBudget, OverBudget  # noqa: E402


def test_a_port_in_use_is_one_line_and_status_5():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "maskclip_runtime.serve", "--port", str(port), "--quiet"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == EXIT_NOT_FINISHED, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


BOMB_SIDE = 13000  # issue 24's decode bomb: a 519 KB one-colour PNG that decodes to 507 MB of RGB


@pytest.fixture(scope="module")
def bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (BOMB_SIDE, BOMB_SIDE), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def png_bytes(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (90, 120, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def app_client(**settings) -> TestClient:
    detector = partial(Detector, DEMO_DIR, backend="onnxruntime", device="cpu", threads=1)
    client = TestClient(create_app(detector, ServeSettings(**settings)))
    client.__enter__()
    wait_until(lambda: client.get("/readyz").status_code == 200)
    return client


def test_a_decode_bomb_is_refused_from_its_header(bomb):
    client = app_client()
    try:
        answer = client.post("/v1/detect", content=bomb, headers={"Content-Type": "image/png"})
        assert answer.status_code == 413 and "50,000,000-pixel" in answer.json()["error"]
        files = [
            ("files", ("bomb.png", bomb, "image/png")),
            ("files", ("ok.jpg", EXAMPLES[0].read_bytes(), "image/jpeg")),
        ]
        records = client.post("/v1/detect/batch", files=files).json()["records"]
        assert "50,000,000-pixel" in records[0]["error"] and records[1]["verdict"] in ("real", "fake")
    finally:
        client.__exit__(None, None, None)


def test_a_request_over_the_decode_budget_is_413_and_a_small_one_passes():
    client = app_client(decode_budget=40 * 1024 * 1024)
    try:
        big = png_bytes(2000)  # 4 Mpx: about 48 MB to decode
        answer = client.post("/v1/detect", content=big, headers={"Content-Type": "image/png"})
        assert answer.status_code == 413 and "decode budget" in answer.json()["error"]
        small = client.post("/v1/detect", content=png_bytes(600), headers={"Content-Type": "image/png"})
        assert small.status_code == 200, small.text
    finally:
        client.__exit__(None, None, None)


def test_the_budget_makes_a_request_wait_for_memory_and_gives_up_at_the_timeout():
    budget = DecodeBudget(100)

    async def scenario():
        order = []

        async def request(name, nbytes, hold_s):
            async with budget.hold(nbytes, timeout=5):
                order.append(f"{name} in")
                await asyncio.sleep(hold_s)
            order.append(f"{name} out")

        await asyncio.gather(request("a", 60, 0.2), request("b", 60, 0))
        assert order == ["a in", "a out", "b in", "b out"] and budget.free == 100
        async with budget.hold(100, timeout=1):
            with pytest.raises(asyncio.TimeoutError):
                async with budget.hold(1, timeout=0.05):
                    pass
        with pytest.raises(OverBudget):
            async with budget.hold(101, timeout=1):
                pass
        assert budget.free == 100

    asyncio.run(scenario())


def peak_rss_mb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from /proc")
def test_38_bombs_in_one_batch_keep_the_server_small(bomb):
    """The issue's request: 38 bombs in one 20 MB body (6 of them took the server past 6 GB before)."""
    process, url = start_server("--backend", "onnxruntime", "--device", "cpu")
    try:
        before = peak_rss_mb(process.pid)
        boundary = "hostile"
        part = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="bomb.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        body = b"".join(part + bomb + b"\r\n" for _ in range(38)) + f"--{boundary}--\r\n".encode()
        request = urllib.request.Request(
            url + "/v1/detect/batch?overlay=png",
            data=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            records = json.loads(response.read())["records"]
        assert len(records) == 38 and all("50,000,000-pixel" in r["error"] for r in records)
        assert peak_rss_mb(process.pid) - before < 200  # the body and its parts; no pixel was decoded
    finally:
        process.terminate()
        process.wait(30)


def test_model_summary_and_records_say_demo():
    client = app_client()
    try:
        summary = client.get("/v1/model").json()
        assert summary["demo"] is True and "synthetic" in summary["card"]["trained_on"]
        answer = client.post("/v1/detect", content=EXAMPLES[0].read_bytes(), headers={"Content-Type": "image/jpeg"})
        assert answer.json()["demo"] is True
    finally:
        client.__exit__(None, None, None)


def test_unknown_query_parameters_are_400():
    client = app_client()
    try:
        image = {"content": EXAMPLES[0].read_bytes(), "headers": {"Content-Type": "image/jpeg"}}
        answer = client.post("/v1/detect?threshold=0.1&tiles=1", **image)
        assert answer.status_code == 400 and "threshold" in answer.json()["error"]
        assert client.post("/v1/detect?mask=png", **image).status_code == 200
        assert client.get("/v1/model?x=1").status_code == 400
    finally:
        client.__exit__(None, None, None)


def test_docs_are_served_offline():
    client = app_client()
    try:
        page = client.get("/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "/v1/detect/batch" in page.text and "all | fake | none" in page.text
        assert "http://" not in page.text and "https://" not in page.text and "<script" not in page.text
    finally:
        client.__exit__(None, None, None)
