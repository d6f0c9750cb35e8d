"""A real maskclip-serve process and a plain HTTP client for it, shared by the serve and page tests."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from maskclip_runtime.detect.detector import DEMO_DIR

EXAMPLES = sorted((DEMO_DIR / "examples").glob("*.jpg"))


def wait_until(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(*args: str) -> tuple[subprocess.Popen, str]:
    """A real maskclip-serve process on a free loopback port; returns (process, base url) once ready."""
    port = free_port()
    command = [sys.executable, "-m", "maskclip_runtime.serve", "--port", str(port), "--quiet", *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"maskclip-serve exited {process.returncode}: {process.stderr.read()}")
        try:
            return urllib.request.urlopen(url + "/readyz", timeout=2).status == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    wait_until(ready, timeout=60)
    return process, url


def post_image(url: str, path: Path, timeout: float = 30) -> tuple[int, dict]:
    request = urllib.request.Request(url + "/v1/detect", data=path.read_bytes(), headers={"Content-Type": "image/jpeg"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
