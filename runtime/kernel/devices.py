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


# OpenVINO names its devices itself ("CPU", "GPU", "GPU.1", "NPU"): passed through, upper-cased.
_OPENVINO_DEVICE = re.compile(r"^[a-z]+(?:\.\d+)?$")


def openvino_device(device: str | None) -> str:
    """None -> "CPU"; an OpenVINO device name ("cpu", "gpu", "GPU.1", "npu") -> its upper-case form;
    DeviceError otherwise. Whether this machine has it is OpenVINO's to say (the runner asks)."""
    name = "cpu" if device is None else str(device).strip().lower()
    if not _OPENVINO_DEVICE.match(name):
        raise DeviceError(f"unknown OpenVINO device {device!r}: use CPU, GPU, GPU.N or NPU")
    return name.upper()


def check_device_name(device: str) -> None:
    """A --device value any backend accepts: parse_device's forms, or an OpenVINO device name; DeviceError
    otherwise (which backend can use it is checked when the backend is built)."""
    try:
        parse_device(device)
    except DeviceError:
        try:
            openvino_device(device)
        except DeviceError:
            raise DeviceError(
                f"unknown device {device!r}: use cpu, cuda, cuda:N, tensorrt, tensorrt:N, or with --backend "
                f"openvino an OpenVINO device (CPU, GPU, GPU.N, NPU)"
            ) from None
