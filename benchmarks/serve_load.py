"""Load test of maskclip-serve on loopback against maskclip-run on the same artifact and batch size.

python -m maskclip_bench.serve_load [--model ARTIFACT] [--requests 300] [--seconds 60] [--concurrency 1,4,16]
                                   [--rounds 3] [--json FILE]

1. maskclip-run over a folder of the example images (--batch B): its own images/s line, the
   reference (the server's work per image is the same: decode, preprocess, forward, resize the mask).
2. maskclip-serve with --batch B, then for each concurrency c: c clients on keep-alive connections
   POST the same files as raw bodies until --requests answers or --seconds pass; images/s, p50/p99
   latency, errors. Steps 1 and 2 alternate for --rounds rounds; medians are reported.
3. The queue bound: a server with a small --max-queue, warmed at that many clients, then flooded
   with 8x as many; every request must be answered 200 or 429, and memory must stay near the warm
   figure (the queue, not the request count, decides what is held).
Bounded in requests and time at every step; it stops by itself. No torch: runs in a runtime-only
environment with the serve extra.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import click

from maskclip_runtime.command import command, json_option, write_json
from maskclip_runtime.contract.artifact import load_artifact
from maskclip_runtime.detect.detector import DEMO_DIR

TARGET_FRACTION = 0.8  # the server should reach this share of maskclip-run's images/s at the top concurrency
CLI_RATE = re.compile(r"([\d.]+) images/s")


@dataclass
class LoadResult:
    concurrency: int
    requests: int
    seconds: float
    images_per_s: float
    p50_ms: float
    p99_ms: float
    statuses: dict[int, int]

    @property
    def errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != 200)


def example_folder(count: int, folder: Path) -> list[Path]:
    """`count` image files cycling over the bundled examples (distinct names, identical contents)."""
    examples = sorted((DEMO_DIR / "examples").glob("*.jpg"))
    paths = []
    for index in range(count):
        source = examples[index % len(examples)]
        path = folder / f"{index:05d}-{source.name}"
        shutil.copyfile(source, path)
        paths.append(path)
    return paths


def cli_images_per_s(model: str, folder: Path, batch: int, threads: int | None) -> float:
    """maskclip-run's own figure (timed from after the model loaded, like a warm server)."""
    command = [sys.executable, "-c", "from maskclip_runtime.cli import main; main()", str(folder), "--model", model]
    command += ["--batch", str(batch)]
    command += ["--json", os.devnull] + (["--threads", str(threads)] if threads else [])
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise click.ClickException(f"maskclip-run failed: {result.stderr.strip().splitlines()[-1]}")
    rates = CLI_RATE.findall(result.stderr)
    if not rates:
        raise click.ClickException(f"maskclip-run printed no images/s line: {result.stderr.strip()}")
    return float(rates[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A maskclip-serve process on loopback, stopped with SIGTERM on exit."""

    def __init__(self, *args: str):
        self.port = free_port()
        command = [sys.executable, "-m", "maskclip_runtime.serve", "--port", str(self.port), "--quiet", *args]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not self._ready():
            if self.process.poll() is not None:
                raise click.ClickException(f"maskclip-serve exited: {self.process.stderr.read().strip()}")
            if time.monotonic() > deadline:
                self.stop()
                raise click.ClickException("maskclip-serve did not become ready in 120 s")
            time.sleep(0.1)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def load(port: int, bodies: list[bytes], concurrency: int, requests: int, seconds: float) -> LoadResult:
    """`concurrency` clients, each on one keep-alive connection, until `requests` are answered or time is up."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    issued = 0
    deadline = time.monotonic() + seconds

    def take_ticket() -> int | None:
        nonlocal issued
        with lock:
            if issued >= requests or time.monotonic() > deadline:
                return None
            issued += 1
            return issued

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while (ticket := take_ticket()) is not None:
            body = bodies[ticket % len(bodies)]
            started = time.perf_counter()
            try:
                connection.request("POST", "/v1/detect", body=body, headers={"Content-Type": "image/jpeg"})
                response = connection.getresponse()
                response.read()
                status = response.status
            except OSError:
                status = 0  # connection failed: counted as an error
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            elapsed = time.perf_counter() - started
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    latencies.append(elapsed)
        connection.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    answered = statuses.get(200, 0)
    quantiles = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else [0.0] * 99
    return LoadResult(
        concurrency=concurrency,
        requests=sum(statuses.values()),
        seconds=wall,
        images_per_s=answered / wall,
        p50_ms=quantiles[49] * 1e3,
        p99_ms=quantiles[98] * 1e3,
        statuses=statuses,
    )


def _median_result(rounds: list[LoadResult]) -> LoadResult:
    """Median images/s and latencies over rounds; statuses summed (an error in any round counts)."""
    statuses: dict[int, int] = {}
    for result in rounds:
        for status, count in result.statuses.items():
            statuses[status] = statuses.get(status, 0) + count
    return LoadResult(
        concurrency=rounds[0].concurrency,
        requests=sum(r.requests for r in rounds),
        seconds=sum(r.seconds for r in rounds),
        images_per_s=statistics.median(r.images_per_s for r in rounds),
        p50_ms=statistics.median(r.p50_ms for r in rounds),
        p99_ms=statistics.median(r.p99_ms for r in rounds),
        statuses=statuses,
    )


def _csv_ints(ctx, param, value: str) -> list[int]:
    try:
        return [int(item) for item in value.split(",") if item.strip()]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@command("maskclip_bench.serve_load")
@click.option("--model", type=click.Path(exists=True), help="Artifact folder (default: the embedded demo model).")
@click.option("--batch", type=click.IntRange(min=1), help="Batch for both (default: the artifact's max).")
@click.option("--threads", type=click.IntRange(min=1), help="ONNX Runtime threads for both.")
@click.option("--concurrency", default="1,4,16", show_default=True, callback=_csv_ints)
@click.option("--requests", default=300, show_default=True, type=click.IntRange(min=1), help="Per concurrency level.")
@click.option("--seconds", default=60.0, show_default=True, type=click.FloatRange(min=1), help="Per level, at most.")
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(min=1), help="Alternating repeats.")
@click.option("--max-wait-ms", default=5.0, show_default=True, type=click.FloatRange(min=0))
@click.option("--queue-bound", default=8, show_default=True, type=click.IntRange(min=1), help="--max-queue of step 3.")
@json_option("the figures (also)")
def main(model, batch, threads, concurrency, requests, seconds, rounds, max_wait_ms, queue_bound, json_path) -> None:
    """Load-test maskclip-serve on loopback against maskclip-run's throughput at the same batch."""
    model = str(model or DEMO_DIR)
    artifact = load_artifact(model)
    batch = min(batch or artifact.batch.max, artifact.batch.max)
    common = ["--model", model, "--batch", str(batch)] + (["--threads", str(threads)] if threads else [])
    with tempfile.TemporaryDirectory(prefix="maskclip-load-") as temp:
        paths = example_folder(requests, Path(temp))
        bodies = [p.read_bytes() for p in paths[: min(len(paths), 3)]]
        click.echo(f"model {artifact.model_id}, batch {batch}, {os.cpu_count()} CPUs, {requests} requests per level")
        # Rounds alternate maskclip-run and the server levels, so a burst of load from elsewhere on a
        # shared machine hits both; medians over rounds are reported.
        cli_rates: list[float] = []
        rounds_of: dict[int, list[LoadResult]] = {level: [] for level in concurrency}
        with Server(*common, "--max-wait-ms", str(max_wait_ms)) as server:
            load(server.port, bodies, concurrency=2, requests=20, seconds=seconds)  # warm-up
            for _ in range(rounds):
                cli_rates.append(cli_images_per_s(model, Path(temp), batch, threads))
                for level in concurrency:
                    rounds_of[level].append(load(server.port, bodies, level, requests, seconds))
        cli_rate = statistics.median(cli_rates)
        rates = ", ".join(f"{r:.1f}" for r in cli_rates)
        click.echo(f"maskclip-run --batch {batch}: {cli_rate:.1f} images/s median of {rounds} runs ({rates})")
        click.echo(f"maskclip-serve, median of {rounds} rounds:")
        click.echo("concurrency  images/s  p50 ms  p99 ms  errors  vs maskclip-run")
        results = [_median_result(rounds_of[level]) for level in concurrency]
        for result in results:
            click.echo(
                f"{result.concurrency:>11}  {result.images_per_s:>8.1f}  {result.p50_ms:>6.1f}  {result.p99_ms:>6.1f}  "
                f"{result.errors:>6}  {result.images_per_s / cli_rate:>6.0%}"
            )

        overload = 8 * queue_bound
        with Server(*common, "--max-wait-ms", str(max_wait_ms), "--max-queue", str(queue_bound)) as server:
            load(server.port, bodies, queue_bound, 10 * queue_bound, seconds)  # warm: arenas and threads exist
            warm_rss = server.rss_mib()
            peak = [warm_rss]
            sampling = threading.Event()

            def sample_rss() -> None:
                while not sampling.wait(0.05):
                    peak.append(server.rss_mib())

            sampler = threading.Thread(target=sample_rss)
            sampler.start()
            flood = load(server.port, bodies, overload, 4 * requests, seconds)
            sampling.set()
            sampler.join()
        first_half, second_half = peak[: len(peak) // 2 or 1], peak[len(peak) // 2 :]
        other = {status: n for status, n in flood.statuses.items() if status not in (200, 429)}
        click.echo(
            f"queue bound {queue_bound}, {overload} clients: {flood.statuses.get(200, 0)} answered 200, "
            f"{flood.statuses.get(429, 0)} answered 429, {sum(other.values())} other{f' {other}' if other else ''}; "
            f"server RSS {warm_rss:.0f} MiB warm; at most {max(first_half):.0f} MiB in the flood's first half, "
            f"{max(second_half):.0f} MiB in its second"
        )

    top = max(results, key=lambda r: r.concurrency) if results else None
    if top is not None:
        met = top.images_per_s >= TARGET_FRACTION * cli_rate and top.errors == 0
        verdict = "met" if met else "missed"
        click.echo(
            f"target: server >= {TARGET_FRACTION:.0%} of maskclip-run's images/s at concurrency {top.concurrency} "
            f"with no errors: {verdict} ({top.images_per_s / cli_rate:.0%}, {top.errors} errors)"
        )
    if json_path:
        report = {
            "model_id": artifact.model_id,
            "batch": batch,
            "cpus": os.cpu_count(),
            "cli_images_per_s": cli_rates,
            "levels": {level: [asdict(r) for r in rounds_of[level]] for level in concurrency},
            "queue_bound": {
                "max_queue": queue_bound,
                "clients": overload,
                "statuses": flood.statuses,
                "rss_mib": {"warm": warm_rss, "first_half_max": max(first_half), "second_half_max": max(second_half)},
            },
        }
        write_json(report, json_path)


if __name__ == "__main__":
    main()
