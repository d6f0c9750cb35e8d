"""Peak memory of a benchmark row: resident memory on the CPU, device memory on a CUDA GPU."""

from __future__ import annotations

import gc
import os
import threading

from maskclip_runtime.kernel.devices import parse_device


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _gpu_used_bytes(index: int) -> int:
    import torch

    free, total = torch.cuda.mem_get_info(index)
    return total - free


class PeakMemory:
    """Peak memory growth (MB) while the block runs, sampled every few ms in a thread: resident memory
    on the CPU, device memory in use (every allocator: torch, ONNX Runtime, TensorRT) on a CUDA device."""

    def __init__(self, device: str = "cpu", interval_s: float = 0.005):
        self._interval = interval_s
        self._stop = threading.Event()
        if parse_device(device).gpu:
            import torch

            torch.cuda.empty_cache()  # the previous row's cached blocks are not this row's
            index = parse_device(device).index
            self._read = lambda: _gpu_used_bytes(index)
        else:
            self._read = _rss_bytes
        self.peak_mb = 0.0

    def __enter__(self) -> PeakMemory:
        gc.collect()
        self._base = self._read()
        self._peak = self._base
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self._peak = max(self._peak, self._read())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._read())
        self.peak_mb = (self._peak - self._base) / 1e6
