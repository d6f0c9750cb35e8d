"""maskclip-serve --triton: the Detector behind a real tritonserver (PyTriton), called with tritonclient over
HTTP and gRPC on loopback; without PyTriton the command says in one line what it needs."""

from __future__ import annotations

import importlib.util
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from maskclip_runtime import cli
from maskclip_runtime.detect.detector import Detector

EXAMPLES = sorted((cli.DEMO_DIR / "examples").glob("*.jpg"))
HAVE_PYTRITON = importlib.util.find_spec("pytriton") is not None


@pytest.mark.skipif(HAVE_PYTRITON, reason="PyTriton is installed here")
def test_triton_without_pytriton_is_one_clear_line():
    from maskclip_runtime.errors import EXIT_BACKEND_UNAVAILABLE
    from maskclip_runtime.serve import cli as serve_cli

    result = CliRunner().invoke(serve_cli.main, ["--triton", "--quiet"])
    assert result.exit_code == EXIT_BACKEND_UNAVAILABLE
    assert result.stderr.count("\n") == 1


def free_port_triple() -> int:
    """A base port with base, base+1 and base+2 free (HTTP, gRPC, metrics)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + 2 > 65535:
            continue
        try:
            sockets = [socket.socket() for _ in range(3)]
            for offset, s in enumerate(sockets):
                s.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no three consecutive free ports")


@pytest.fixture(scope="module")
def triton_server():
    pytest.importorskip("pytriton", reason="maskclip-serve --triton needs PyTriton: pip install 'maskclip[triton]'")
    import tritonclient.http

    port = free_port_triple()
    command = [sys.executable, "-m", "maskclip_runtime.serve", "--triton", "--port", str(port), "--quiet"]
    command += ["--backend", "onnxruntime", "--device", "cpu", "--max-wait-ms", "20"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    client = tritonclient.http.InferenceServerClient(f"127.0.0.1:{port}")
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None:
            pytest.fail(f"maskclip-serve --triton exited {process.returncode}: {process.stderr.read()[-2000:]}")
        try:
            if client.is_model_ready("maskclip"):
                break
        except Exception:  # not listening yet
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("Triton did not become ready in 120 s")
        time.sleep(0.5)
    yield port, process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def _infer(module, url: str, payloads: list[bytes]) -> dict[str, np.ndarray]:
    client = module.InferenceServerClient(url)
    image = module.InferInput("image", [len(payloads), 1], "BYTES")
    image.set_data_from_numpy(np.array([[p] for p in payloads], dtype=np.object_))
    result = client.infer("maskclip", [image])
    return {name: result.as_numpy(name) for name in ("fake_prob", "verdict", "mask_fraction", "mask", "error")}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_triton_answers_like_the_detector(triton_server, protocol):
    import tritonclient.grpc
    import tritonclient.http

    port, _ = triton_server
    module, url = {
        "http": (tritonclient.http, f"127.0.0.1:{port}"),
        "grpc": (tritonclient.grpc, f"127.0.0.1:{port + 1}"),
    }[protocol]
    payloads = [p.read_bytes() for p in EXAMPLES] + [b"not an image"]
    answer = _infer(module, url, payloads)

    with Detector(cli.DEMO_DIR, backend="onnxruntime", device="cpu") as detector:
        expected = detector.detect([Image.open(p).convert("RGB") for p in EXAMPLES])
    for row, detection in enumerate(expected):
        assert answer["fake_prob"][row, 0] == pytest.approx(detection.fake_prob, abs=1e-5)
        assert answer["verdict"][row, 0] == detection.verdict.encode()
        assert answer["mask_fraction"][row, 0] == pytest.approx(detection.mask_fraction, abs=1e-6)
        np.testing.assert_allclose(answer["mask"][row], detection.model_mask, atol=1e-5)
        assert answer["error"][row, 0] == b""
    assert answer["verdict"][-1, 0] == b"error" and answer["error"][-1, 0]


def test_triton_stops_on_sigterm(triton_server):
    _, process = triton_server
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) is not None
