"""The console scripts (from setup.py) and running one in a subprocess that refuses the heavy imports."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# console script -> (module, function), from setup.py: the list users get, whatever this venv installed
SCRIPTS = {
    name: (module, function)
    for name, module, function in re.findall(
        r'"(maskclip-[a-z]+)=([\w.]+):(\w+)"', (ROOT / "setup.py").read_text(encoding="utf-8")
    )
}
# What the base install lacks (the extras train, export, cpu and serve).
BLOCKED = (
    "torch",
    "torchvision",
    "open_clip",
    "timm",
    "safetensors",
    "onnx",
    "onnxslim",
    "polygraphy",
    "onnxruntime",
    "fastapi",
    "uvicorn",
    "openvino",
    "nncf",
    "ray",
)
WITHOUT_TORCH = f"""
import sys

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {BLOCKED!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Refuse())
module, function, *args = sys.argv[1:]
sys.argv = [module, *args]
getattr(__import__(module, fromlist=[function]), function)()
"""


def run_without_torch(script: str, *args: str) -> subprocess.CompletedProcess:
    module, function = SCRIPTS[script]
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH, module, function, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def run_cli(*args, stdin: str | None = None) -> tuple[int, str, str]:
    """maskclip-run in this process (click's runner): exit code, stdout, stderr."""
    from click.testing import CliRunner

    from maskclip_runtime import cli

    result = CliRunner().invoke(cli.main, [str(a) for a in args], input=stdin)
    return result.exit_code, result.stdout, result.stderr
