"""What machine is this: CPU model and the instruction-set features that change which kernels run.

Int8 and bf16 kernels differ between CPUs (x86 with or without VNNI, AVX-512, native bf16; ARM with or
without dot-product instructions), so an artifact records the features it assumes, the runtime
compares them with the host, and self-check results and benchmark reports name the host they ran on.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

# The features worth naming: they select different GEMM / convolution kernels in ONNX Runtime's MLAS,
# oneDNN and TensorRT's CPU-side tooling. Linux names, as in /proc/cpuinfo.
ISA_FEATURES = (
    # x86
    "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",
    # ARM
    "asimd", "asimddp", "asimdhp", "i8mm", "bf16", "sve", "sve2",
)  # fmt: skip
# JetPack's release file (benchmarks/gpu_check.py, which runs before the project is installed, reads it too).
TEGRA_RELEASE = Path("/etc/nv_tegra_release")
# Native bf16 matrix arithmetic, by platform: without it bf16 runs emulated (x86 AVX2: ~1 GFLOP/s).
BF16_FEATURES = ("avx512_bf16", "amx_bf16", "bf16")


@dataclass(frozen=True)
class Host:
    machine: str  # x86_64, aarch64, ...
    cpu: str  # the CPU's model name
    cores: int
    features: tuple[str, ...]  # the ISA_FEATURES this CPU has (empty where they cannot be read)
    features_known: bool  # False: the OS gave no feature list (not Linux), so nothing can be checked

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """One line: 'AMD EPYC 9454 (x86_64; avx2 avx512f avx512_vnni ...)'."""
        features = " ".join(self.features) if self.features_known else "features unknown"
        return f"{self.cpu} ({self.machine}; {features})"

    def has(self, feature: str) -> bool:
        return feature in self.features

    def missing(self, required: list[list[str]] | tuple) -> list[list[str]]:
        """Requirements this host does not meet. Each requirement is a list of alternatives (any one
        suffices), e.g. [["avx512_vnni", "avx_vnni"]]. Nothing is reported missing where features are
        unknown."""
        if not self.features_known:
            return []
        return [list(alternatives) for alternatives in required if not any(map(self.has, alternatives))]

    @property
    def native_bf16(self) -> bool:
        return any(map(self.has, BF16_FEATURES))


def _cpuinfo() -> dict[str, str]:
    """The first processor's block of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    if fields:
                        break
                    continue
                key, _, value = line.partition(":")
                fields.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    return fields


@functools.lru_cache(maxsize=1)
def current_host() -> Host:
    info = _cpuinfo()
    flags = info.get("flags") or info.get("features")  # x86: "flags"; ARM: "features"
    cpu = info.get("model name") or info.get("hardware") or platform.processor() or platform.machine()
    if not info.get("model name") and info.get("cpu implementer"):  # ARM names the core by part number
        cpu = f"ARM implementer {info['cpu implementer']} part {info.get('cpu part', '?')}"
    present = set(flags.split()) if flags else set()
    return Host(
        machine=platform.machine(),
        cpu=cpu,
        cores=os.cpu_count() or 1,
        features=tuple(f for f in ISA_FEATURES if f in present),
        features_known=flags is not None,
    )


def on_jetson() -> bool:
    """A Jetson (JetPack): an aarch64 machine with the Tegra release file."""
    return platform.machine() == "aarch64" and TEGRA_RELEASE.is_file()
