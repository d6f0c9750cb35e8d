"""Peak memory of `maskclip-export`, per step: the export runs in a child process, which this script
watches from outside (resident size from /proc every 50 ms; the step from the export's progress line),
and whose ru_maxrss the kernel reports when it ends (os.wait4).

    python -m maskclip_bench.export_memory --json out.json -- --config opensdi-vitl14 --no-verify --out /tmp/a

Everything after `--` goes to maskclip-export (not --quiet: the progress line names the steps).
The figures of benchmarks/results/export-memory.md were measured with it.
Linux only (/proc, wait4).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time

import click

from maskclip_runtime.command import command, write_json

# tqdm: "<step>:  40%|████  | 2/5 ...", where a step may hold a colon itself ("verify: PyTorch (64 images)")
_PROGRESS = re.compile(r"(.+?):\s+\d+%\|")


def _resident_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        return None
    return None


class ProgressLines:
    """A child's stderr, fed as it arrives: the step its progress bar shows now, and its other lines.

    tqdm starts each refresh of the bar with "\r" and ends none, so the bar being shown is the text after
    the last "\r": it is read at once, not when the next refresh arrives (the bar of a long step refreshes
    only at its start, so a step would otherwise be seen only once it had ended)."""

    def __init__(self) -> None:
        self.step = "start"
        self.lines: list[str] = []
        self._partial = ""

    def feed(self, text: str) -> None:
        *done, self._partial = re.split(r"[\r\n]", self._partial + text)
        for part in done:
            if not self._shows_step(part) and part.strip():
                self.lines.append(part)
        self._shows_step(self._partial)

    def _shows_step(self, text: str) -> bool:
        match = _PROGRESS.match(text)
        if match:
            self.step = match.group(1).strip()
        return match is not None


def measure_export(args: list[str], interval_s: float = 0.05) -> dict:
    """Run maskclip-export with `args`; returns its exit status, wall time, peak resident MB (the
    kernel's ru_maxrss) and the peak resident MB sampled during each step, in order."""
    child = subprocess.Popen(
        [sys.executable, "-c", "from maskclip_export.cli import main; main()", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    progress = ProgressLines()
    steps: dict[str, float] = {}

    def read_progress() -> None:
        while chunk := os.read(child.stderr.fileno(), 4096):  # what has arrived, not a full block
            progress.feed(chunk.decode(errors="replace"))

    reader = threading.Thread(target=read_progress, daemon=True)
    reader.start()
    started = time.perf_counter()
    while True:  # reaped here, not by Popen, so that the kernel's rusage of the child comes back
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        resident = _resident_mb(child.pid)
        if resident is not None:
            steps[progress.step] = max(steps.get(progress.step, 0.0), resident)
        time.sleep(interval_s)
    seconds = time.perf_counter() - started
    stderr = progress.lines
    child.returncode = os.waitstatus_to_exitcode(status)
    reader.join()
    return {
        "args": args,
        "exit_status": child.returncode,
        "seconds": round(seconds, 1),
        "peak_mb": round(usage.ru_maxrss * 1024 / 1e6, 1),  # MB of 10^6 bytes, as maskclip-export prints GB
        "step_peak_mb": {name: round(mb, 1) for name, mb in steps.items()},
        "summary": next((line for line in stderr if line.startswith("maskclip-export:")), None),
        "errors": [line for line in stderr if "error" in line.lower()],
    }


@command("maskclip-bench-export-memory", ignore_unknown_options=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True), help="Write the result here.")
@click.argument("export_args", nargs=-1, type=click.UNPROCESSED, required=True)
def main(json_path, export_args):
    """Run maskclip-export with EXPORT_ARGS and print its peak resident memory, overall and per step."""
    result = measure_export(list(export_args))
    click.echo(f"exit {result['exit_status']}, {result['seconds']:.0f} s, peak {result['peak_mb'] / 1e3:.2f} GB")
    for name, mb in result["step_peak_mb"].items():
        click.echo(f"  {mb / 1e3:6.2f} GB  {name}")
    if json_path:
        write_json(result, json_path)


if __name__ == "__main__":
    main()
