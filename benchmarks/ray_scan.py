"""Images/s of maskclip-run's pipeline: the plain run against --ray local with 1 and 2 actors on the same images.

    python -m maskclip_bench.ray_scan [--images N] [--repeats R] [--out FILE.json]

Each Ray run is what a user gets: the cluster starts, each actor loads the artifact and runs its self-check, the
records stream back. Reported per run: wall time, time to the first record (the fixed cost) and the steady rate
after it; medians over the repeats. The machine's CPU use (all processes, /proc/stat) is given for each run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from maskclip_runtime.command import write_json
from maskclip_runtime.detect.detector import DEMO_DIR, Detector
from maskclip_runtime.kernel.host import current_host
from maskclip_runtime.pipeline.steps import Plan, scan
from maskclip_runtime.present.image_sinks import ImageFiles
from maskclip_runtime.scale.ray_scan import Cluster, DetectorOptions, RayScan


def make_images(folder: Path, count: int, size: int = 384) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        pixels = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
        path = folder / f"image_{index:05d}.jpg"
        Image.fromarray(np.kron(pixels, np.ones((16, 16, 1), np.uint8))).save(path, quality=90)
        paths.append(str(path))
    return paths


def _cpu_busy() -> tuple[int, int]:
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def timed(records) -> dict:
    """Consume a record stream: wall time, time to the first record, the steady rate after it, CPU use."""
    busy0, total0 = _cpu_busy()
    started = time.perf_counter()
    first, count = None, 0
    for _ in records:
        count += 1
        first = first or time.perf_counter()
    ended = time.perf_counter()
    busy1, total1 = _cpu_busy()
    return {
        "images": count,
        "wall_s": ended - started,
        "first_record_s": first - started,
        "steady_images_per_s": (count - 1) / (ended - first),
        "machine_cpu_busy": (busy1 - busy0) / max(1, total1 - total0),
    }


def run_plain(paths: list[str]) -> dict:
    detector = Detector(DEMO_DIR, backend="onnxruntime", device="cpu")  # loading is outside the timing, as in Ray's
    try:
        return timed(scan(detector, paths, Plan(), ImageFiles.for_inputs(paths, None, None)))
    finally:
        detector.close()


def run_ray(paths: list[str], actors: int) -> dict:
    started = time.perf_counter()
    front = RayScan(DetectorOptions(str(DEMO_DIR), "onnxruntime", "cpu"), Cluster("local", actors))
    connected = time.perf_counter() - started
    try:
        result = timed(front.records(paths, Plan(), ImageFiles.for_inputs(paths, None, None)))
    finally:
        front.close()
    return {**result, "cluster_start_s": connected}


def median_of(runs: list[dict]) -> dict:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="ray_scan.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        paths = make_images(Path(folder), args.images)
        runs = {"plain": [], "ray_1_actors": [], "ray_2_actors": []}
        for _ in range(args.repeats):  # interleaved, so a burst of load from other users hits every row alike
            runs["plain"].append(run_plain(paths))
            for actors in (1, 2):
                runs[f"ray_{actors}_actors"].append(run_ray(paths, actors))
        results = {name: median_of(measured) for name, measured in runs.items()}
    machine = {"cpu": current_host().cpu, "cores": os.cpu_count(), "python": platform.python_version()}
    write_json({"machine": machine, "images": args.images, "repeats": args.repeats, "medians": results}, args.out)
    for name, result in results.items():
        print(name, {key: round(value, 3) for key, value in result.items()})


if __name__ == "__main__":
    main()
