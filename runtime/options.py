"""The options maskclip-run and maskclip-serve share: which artifact, on which backend and device, how.

One definition each, so the two commands cannot drift apart in names, defaults, checks or help.
"""

from __future__ import annotations

import click

from .backends import registry
from .command import option_group
from .kernel.devices import check_device_name

DEMO_NOTE = "using the embedded demo model (tiny, trained on synthetic edits)"


def _check_device(ctx, param, value: str | None) -> str | None:
    if value is not None:
        try:
            check_device_name(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


# --model, --backend, --device, --threshold, --batch, --threads
model_options = option_group(
    click.option("--model", type=click.Path(), help="Artifact folder or manifest.json (default: embedded demo model)."),
    click.option("--backend", type=click.Choice(registry.choices()), default="auto", show_default=True),
    click.option(
        "--device",
        callback=_check_device,
        help="cpu, cuda or cuda:N; with --backend openvino: CPU, GPU, NPU (default: the GPU when usable).",
    ),
    click.option(
        "--threshold", type=click.FloatRange(0.0, 1.0), help="Verdict and mask threshold (default: manifest)."
    ),
    click.option("--batch", type=click.IntRange(min=1), help="Most images per forward pass (default: the artifact's)."),
    click.option("--threads", type=click.IntRange(min=1), help="CPU threads for ONNX Runtime or OpenVINO."),
)

# --no-self-check, --strict, --quiet
check_options = option_group(
    click.option(
        "--no-self-check",
        is_flag=True,
        help="Skip the self-check (canaries compared with PyTorch on first use on a machine; cached once passed).",
    ),
    click.option(
        "--strict", is_flag=True, help="Refuse, not just warn, when the host lacks CPU features the artifact assumes."
    ),
    click.option(
        "--quiet", "-q", is_flag=True, help="No progress, notes or library chatter on stderr (errors still shown)."
    ),
)
