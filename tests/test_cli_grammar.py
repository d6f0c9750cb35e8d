"""One grammar for every console script: -h, the exit-status table, errors as statuses, --help without torch."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner
from console_scripts import ROOT, SCRIPTS, run_without_torch  # noqa: E402

from maskclip_runtime.command import command
from maskclip_runtime.errors import (
    EXIT_BACKEND_UNAVAILABLE,
    EXIT_INTERRUPTED,
    EXIT_NOT_FINISHED,
    EXIT_SOME_INPUTS_FAILED,
    EXIT_STATUSES,
    EXIT_USAGE,
    EXIT_VERIFICATION_FAILED,
    BackendUnavailable,
    InputError,
    NotFinished,
    SomeInputsFailed,
    UsageError,
    VerificationFailed,
)


def test_setup_lists_every_command():
    assert {"maskclip-run", "maskclip-serve", "maskclip-export", "maskclip-bench", "maskclip-train"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_works_without_torch_and_shows_the_exit_table(script):
    done = run_without_torch(script, "-h")
    assert done.returncode == 0, done.stderr[-2000:]
    for status, _ in EXIT_STATUSES:
        assert re.search(rf"^\s+{status}\s", done.stdout, re.MULTILINE), (script, status)


@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("maskclip-info", ["--config", "tiny"]),
        ("maskclip-export", ["--config", "tiny", "--out", "{tmp}/art"]),
        ("maskclip-bench", ["tiny", "--out", "{tmp}/bench"]),
        ("maskclip-import", ["{tmp}/missing.pth", "--out", "{tmp}/ckpt"]),
    ],
)
def test_a_command_that_needs_torch_names_the_extra_and_exits_4(script, args, tmp_path):
    done = run_without_torch(script, *(a.format(tmp=tmp_path) for a in args))
    assert done.returncode == EXIT_BACKEND_UNAVAILABLE, done.stderr[-2000:]
    (line,) = done.stderr.strip().splitlines()
    assert 'pip install -c constraints.txt -e ".[' in line and "Traceback" not in done.stderr


def _raising(exc: BaseException):
    @command("maskclip-test")
    def main():
        raise exc

    return main


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (UsageError("contradicting options"), EXIT_USAGE),
        (InputError("no such file"), EXIT_USAGE),
        (FileNotFoundError(2, "No such file or directory", "x.png"), EXIT_USAGE),
        (VerificationFailed("gate"), EXIT_VERIFICATION_FAILED),
        (BackendUnavailable("no TensorRT"), EXIT_BACKEND_UNAVAILABLE),
        (ModuleNotFoundError("No module named 'torch'", name="torch"), EXIT_BACKEND_UNAVAILABLE),
        (NotFinished("disk full"), EXIT_NOT_FINISHED),
        (ZeroDivisionError("a bug"), EXIT_NOT_FINISHED),
        (ModuleNotFoundError("No module named 'mystery'", name="mystery"), EXIT_NOT_FINISHED),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_each_error_class_is_one_line_and_its_status(exc, status):
    result = CliRunner().invoke(_raising(exc), [])
    assert result.exit_code == status
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("maskclip-test: error: ")


def test_some_inputs_failed_adds_no_line_of_its_own_and_ctrl_c_is_130():
    result = CliRunner().invoke(_raising(SomeInputsFailed()), [])
    assert result.exit_code == EXIT_SOME_INPUTS_FAILED and result.stderr == ""
    assert CliRunner().invoke(_raising(KeyboardInterrupt()), []).exit_code == EXIT_INTERRUPTED


def test_click_usage_errors_and_h_follow_the_table():
    @command("maskclip-test")
    @click.option("--n", type=int)
    def main(n):
        pass

    assert CliRunner().invoke(main, ["--n", "x"]).exit_code == EXIT_USAGE
    assert CliRunner().invoke(main, ["-h"]).exit_code == 0


def test_the_readme_shows_the_one_exit_table():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = [line for line in readme.splitlines() if re.match(r"^\| \d+ \| ", line)]
    assert rows == [f"| {status} | {meaning} |" for status, meaning in EXIT_STATUSES]


@pytest.mark.parametrize(
    ("module", "extra"), [("torch", "export"), ("onnx", "export"), ("onnxruntime", "cpu"), ("fastapi", "serve")]
)
def test_a_missing_module_names_the_extra_that_installs_it(module, extra):
    @command("maskclip-test", extra="export")
    def main():
        raise ModuleNotFoundError(f"No module named {module!r}", name=module)

    result = CliRunner().invoke(main, [])
    # the hint works from a checkout, with the pinned versions
    assert (
        result.exit_code == EXIT_BACKEND_UNAVAILABLE
        and f'pip install -c constraints.txt -e ".[{extra}]"' in result.stderr
    )


def test_a_reader_that_goes_away_stops_the_command_quietly():
    """`maskclip-run photos --json - | head -1`: status 128+SIGPIPE and no error line, not an internal error."""
    run = subprocess.Popen(
        [sys.executable, "-c", "from maskclip_runtime.cli import main; main()", str(ROOT / "runtime/demo/examples"),
         "--json", "-", "--batch", "1", "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    first = run.stdout.readline()
    run.stdout.close()  # the reader goes away after one record
    status = run.wait(timeout=120)
    stderr = run.stderr.read().decode()
    assert first.startswith(b'{"path"')
    assert status in (0, 128 + signal.SIGPIPE) and "error" not in stderr, stderr
