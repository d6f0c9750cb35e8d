"""Timing: latency samples, their percentiles, achieved GFLOP/s, and paired speed-ups on alternating calls."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from .roofline import gflops


def percentiles(samples_ms: Sequence[float]) -> dict:
    """p50 / p90 / p99 / mean of latency samples in ms (numpy's linear interpolation)."""
    values = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(values.mean()), "n": len(values)}


def time_calls(fn: Callable[[], object], warmup: int, iters: int) -> list[float]:
    """Wall time of each of `iters` calls in ms, after `warmup` untimed calls."""
    return time_calls_and_part(lambda: (fn(), 0.0)[1], warmup, iters)[0]


def time_calls_and_part(fn: Callable[[], float], warmup: int, iters: int) -> tuple[list[float], list[float]]:
    """(wall time of each of `iters` calls, the ms of the part of it that fn times itself and returns), after
    `warmup` untimed calls: both from the same calls, so the part never exceeds its call."""
    for _ in range(warmup):
        fn()
    whole, part = [], []
    for _ in range(iters):
        start = time.perf_counter()
        part.append(fn())
        whole.append((time.perf_counter() - start) * 1e3)
    return whole, part


def achieved_gflops(flops_per_image: int, batch: int, p50_ms: float) -> float:
    return gflops(flops_per_image * batch, p50_ms / 1e3)


def paired_speedup(slow: Callable[[], object], fast: Callable[[], object], pairs: int) -> dict:
    """slow/fast time ratio measured on alternating calls, the order flipped every pair.

    Rows are timed one after another, so on a shared machine a burst of load can land on one row and
    not the other; a pair's two calls run back to back under the same conditions, and the median of
    the per-pair ratios is robust to the bursts."""
    slow(), fast()  # warm both
    ratios, slow_ms, fast_ms = [], [], []
    for i in range(pairs):
        timed = {}
        for name, fn in (("slow", slow), ("fast", fast)) if i % 2 == 0 else (("fast", fast), ("slow", slow)):
            start = time.perf_counter()
            fn()
            timed[name] = (time.perf_counter() - start) * 1e3
        slow_ms.append(timed["slow"])
        fast_ms.append(timed["fast"])
        ratios.append(timed["slow"] / timed["fast"])
    return {
        "pairs": pairs,
        "speedup_median": float(np.median(ratios)),
        "speedup_min": float(np.min(ratios)),
        "speedup_max": float(np.max(ratios)),
        "slow_ms_median": float(np.median(slow_ms)),
        "fast_ms_median": float(np.median(fast_ms)),
    }
