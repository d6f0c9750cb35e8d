"""Issue 24, maskclip-serve: what a hostile request or a busy port can do to the server process."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from maskclip_runtime.errors import EXIT_NOT_FINISHED

pytest.importorskip("fastapi")


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
