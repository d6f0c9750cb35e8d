"""Memory a training run needs, estimated before anything is allocated, against what the device has free.

Parameters, their gradients and AdamW's two moments are counted from the model built on PyTorch's
meta device (shapes only, no memory). Activations are the tensors autograd keeps for the backward
pass, counted in meta-device forward passes of one and of two images (each storage once, parameters
excluded): that gives the part every batch pays once (the learnt prompts through the text tower)
and the part each image adds. Counted in fp32 (bf16 autocast only lowers it), and with attention as
PyTorch's reference kernel keeps it (the meta device has no fused kernels; on the CPU the `tiny`
model keeps about 5 % less). The backward pass's temporaries, the data loader and the CUDA context
come on top, so a run well over the estimate cannot fit and one just under it may still be tight.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from maskclip_core.config import MaskCLIPConfig
from maskclip_core.model import build_model

GB = 1e9


class NotEnoughMemory(ValueError):
    """The run's estimated memory exceeds what the device has available (`--force` runs it anyway)."""


@dataclass(frozen=True)
class MemoryEstimate:
    parameters: int  # bytes, all of them (frozen CLIP included)
    gradients: int  # trainable parameters' gradients
    moments: int  # AdamW's exp_avg and exp_avg_sq
    activations: int  # kept for the backward pass, for the whole batch

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.moments + self.activations

    def describe(self) -> str:
        parts = zip(
            ("parameters", "gradients", "Adam moments", "activations"),
            (self.parameters, self.gradients, self.moments, self.activations),
            strict=True,
        )
        return f"{self.total / GB:.1f} GB (" + ", ".join(f"{name} {n / GB:.1f}" for name, n in parts) + ")"


def _saved_for_backward(model: torch.nn.Module, cfg: MaskCLIPConfig, images: int) -> int:
    """Bytes autograd keeps from one forward pass of `images` images (meta tensors: nothing is computed)."""
    owned = {t.untyped_storage()._cdata for t in (*model.parameters(), *model.buffers())}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in owned:  # views of one activation share its storage: count it once
            storages[storage._cdata] = storage.nbytes()
        return tensor

    x = torch.empty(images, 3, cfg.image_size, cfg.image_size, device="meta")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(x)
    return sum(storages.values())


def estimate_training_memory(cfg: MaskCLIPConfig, batch_size: int) -> MemoryEstimate:
    """What one training process of `cfg` at `batch_size` images holds at the end of its forward pass."""
    with torch.device("meta"):
        model = build_model(cfg).train()
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    one, two = _saved_for_backward(model, cfg, 1), _saved_for_backward(model, cfg, 2)
    per_image = two - one
    activations = one - per_image + batch_size * per_image
    return MemoryEstimate(parameters, trainable, 2 * trainable, activations)


def available_memory(device: torch.device) -> int:
    """Bytes free for this process: the GPU's free memory, or the host's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(cfg: MaskCLIPConfig, batch_size: int, device: torch.device, processes: int = 1) -> MemoryEstimate:
    """Raise NotEnoughMemory when `processes` runs of this size (sharing the host on CPU) exceed what is free."""
    estimate = estimate_training_memory(cfg, batch_size)
    sharing = processes if device.type == "cpu" else 1
    needed, free = estimate.total * sharing, available_memory(device)
    if needed > free:
        per = f" per process, x{sharing}" if sharing > 1 else ""
        raise NotEnoughMemory(
            f"{cfg.name} at batch {batch_size} needs at least {estimate.describe()}{per} but {device} has "
            f"{free / GB:.1f} GB available; lower --batch-size, use a larger device, or pass --force to try anyway"
        )
    return estimate
