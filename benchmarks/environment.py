"""What a report was measured on: device, CPU and its features, GPU, library versions."""

from __future__ import annotations

import os
import platform

import numpy as np

from maskclip_runtime.kernel.host import current_host


def environment(device: str) -> dict:
    import onnxruntime
    import torch

    import maskclip_runtime

    host = current_host()
    versions = {
        "python": platform.python_version(),
        "maskclip": maskclip_runtime.__version__,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }
    try:
        import tensorrt

        versions["tensorrt"] = tensorrt.__version__
    except ImportError:
        versions["tensorrt"] = "not installed"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    if gpu:
        versions["cuda"] = torch.version.cuda
    return {
        "device": device if device != "cpu" else f"CPU ({os.cpu_count()} cores)",
        "cpu": host.cpu,
        "cpu_features": list(host.features),
        "cpu_cores": os.cpu_count(),
        "gpu": gpu,
        "platform": platform.platform(),
        "versions": versions,
    }
