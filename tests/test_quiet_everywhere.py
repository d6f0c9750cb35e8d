"""Issue 24: -q on every command; under it, stderr holds nothing but an error line."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from maskclip_runtime.errors import EXIT_USAGE

SETUP = Path(__file__).resolve().parents[1] / "setup.py"
SCRIPTS = dict(re.findall(r'"(maskclip-[a-z]+)=([\w.]+:\w+)"', SETUP.read_text()))


def entry_point(script: str):
    module, function = SCRIPTS[script].split(":")
    return getattr(importlib.import_module(module), function)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_command_takes_q(script):
    result = CliRunner().invoke(entry_point(script), ["--help"])
    assert result.exit_code == 0 and re.search(r"-q, --quiet", result.output), script


@pytest.mark.torch  # maskclip-synth and maskclip-import run on torch
def test_q_silences_progress_but_not_the_error(tmp_path):
    synth = entry_point("maskclip-synth")
    args = ["--out", str(tmp_path / "s"), "--count", "2", "--test-count", "0", "--generators", "sd15-like"]
    loud = CliRunner().invoke(synth, args + ["--min-size", "64", "--max-size", "64"])
    assert loud.exit_code == 0 and loud.stderr  # the progress bar
    quiet = CliRunner().invoke(synth, args + ["--min-size", "64", "--max-size", "64", "-q"])
    assert quiet.exit_code == 0 and quiet.stderr == ""
    failed = CliRunner().invoke(
        entry_point("maskclip-import"), [str(tmp_path / "none.pth"), "--out", str(tmp_path / "c"), "-q"]
    )
    assert failed.exit_code == EXIT_USAGE and len(failed.stderr.strip().splitlines()) == 1
