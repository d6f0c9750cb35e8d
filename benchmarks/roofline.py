"""The device's measured GEMM ceiling and the model's counted FLOPs, to say how close a backend gets.

A row's achieved GFLOP/s = counted model FLOPs x batch / latency. The ceiling is what one large
square matmul reaches on the same device in the same run (numpy and torch fp32; bf16 or fp16 where
the device has it), so "fraction of ceiling" compares like with like on whatever machine runs it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from maskclip_runtime.kernel.devices import parse_device
from maskclip_runtime.kernel.host import current_host


@dataclass(frozen=True)
class GemmCeiling:
    library: str  # "numpy", "torch"
    dtype: str  # "float32", "bfloat16", "float16"
    device: str  # "cpu", "cuda"
    size: int  # n of the n x n x n matmul
    seconds: float  # best of the timed repeats
    gflops: float

    def to_dict(self) -> dict:
        return asdict(self)


def matmul_flops(n: int) -> int:
    """An n x n by n x n matmul: n^3 multiply-adds = 2 n^3 FLOPs."""
    return 2 * n**3


def gflops(flops: float, seconds: float) -> float:
    return flops / seconds / 1e9 if seconds > 0 else float("nan")


def _best_seconds(run, repeats: int) -> float:
    run()  # warm-up: thread pools, packing buffers, lazy initialisation
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def numpy_ceiling(n: int = 2048, repeats: int = 5) -> GemmCeiling:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    seconds = _best_seconds(lambda: a @ b, repeats)
    return GemmCeiling("numpy", "float32", "cpu", n, seconds, gflops(matmul_flops(n), seconds))


def torch_ceiling(dtype: str = "float32", device: str = "cpu", n: int = 2048, repeats: int = 5) -> GemmCeiling:
    import torch

    torch_dtype = getattr(torch, dtype)
    generator = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(device=device, dtype=torch_dtype)
    b = torch.randn(n, n, generator=generator).to(device=device, dtype=torch_dtype)

    def run():
        a @ b
        if parse_device(device).gpu:
            torch.cuda.synchronize()

    with torch.inference_mode():
        seconds = _best_seconds(run, repeats)
    return GemmCeiling("torch", dtype, device, n, seconds, gflops(matmul_flops(n), seconds))


def measure_ceilings(device: str = "cpu", n: int = 2048, repeats: int = 5) -> list[GemmCeiling]:
    """numpy fp32 and torch fp32 always (CPU); torch bf16 on a CPU that runs it natively (emulated bf16 on
    AVX2 runs near 1 GFLOP/s: minutes per matmul, and no ceiling of anything); torch fp32/fp16/bf16 on CUDA."""
    ceilings = [numpy_ceiling(n, repeats), torch_ceiling("float32", "cpu", n, repeats)]
    if current_host().native_bf16:
        ceilings.append(torch_ceiling("bfloat16", "cpu", n, repeats))
    if parse_device(device).gpu:
        cuda_n = max(n, 8192)  # a GPU needs a bigger problem to reach its peak
        ceilings.append(torch_ceiling("float32", device, cuda_n, repeats))
        ceilings.append(torch_ceiling("float16", device, cuda_n, repeats))
        ceilings.append(torch_ceiling("bfloat16", device, cuda_n, repeats))
    return ceilings


def best_of(*runs: list[GemmCeiling]) -> list[GemmCeiling]:
    """Per (library, dtype, device) the fastest of several measurements: on a shared machine a ceiling
    measured once can be depressed by other processes, and the ceiling is what the device can reach."""
    best: dict[tuple[str, str, str], GemmCeiling] = {}
    for ceiling in (c for run in runs for c in run):
        key = (ceiling.library, ceiling.dtype, ceiling.device)
        if key not in best or ceiling.gflops > best[key].gflops:
            best[key] = ceiling
    return list(best.values())


def best_ceiling(ceilings: list[GemmCeiling], dtype: str, device: str) -> GemmCeiling | None:
    """The fastest measured matmul of this dtype on this kind of device ("cpu" / "cuda")."""
    kind = parse_device(device).kind
    matching = [c for c in ceilings if c.dtype == dtype and parse_device(c.device).kind == kind]
    return max(matching, key=lambda c: c.gflops, default=None)
