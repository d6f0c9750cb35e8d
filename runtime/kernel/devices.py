"""Device names, parsed in one place: "cpu", "cuda", "cuda:N", and "tensorrt" / "tensorrt:N" (ONNX
Runtime's TensorRT provider on GPU N). Case and surrounding spaces do not matter."""

from __future__ import annotations

import re
from typing import NamedTuple

from ..errors import InputError

_DEVICE = re.compile(r"^(cpu|cuda|tensorrt)(?::(\d+))?$")


class DeviceError(InputError, ValueError):
    """A device name that is none of the accepted forms."""


class Device(NamedTuple):
    kind: str  # "cpu", "cuda" or "tensorrt"
    index: int  # the GPU's number; 0 for the CPU

    @property
    def gpu(self) -> bool:
        return self.kind != "cpu"


def parse_device(device: str) -> Device:
    """'cpu' | 'cuda' | 'cuda:N' | 'tensorrt' | 'tensorrt:N' -> Device(kind, index); DeviceError otherwise."""
    match = _DEVICE.match(str(device).strip().lower())
    if not match:
        raise DeviceError(f"unknown device {device!r}: use cpu, cuda, cuda:N, tensorrt or tensorrt:N")
    return Device(match.group(1), int(match.group(2) or 0))
