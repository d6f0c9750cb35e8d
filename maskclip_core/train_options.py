"""A training run's options: stored with the run at its start and in every checkpoint, restored by --resume.

`maskclip-train --resume OUT/last` alone continues the run with its own options. Options given
with it replace the stored ones, except those that fix what a step means (which images, in which
order, through which model: FIXED_ON_RESUME); a different value there is refused, since the result
would be neither the old run nor a new one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from maskclip_core.checkpoint import CheckpointError
from maskclip_runtime.kernel.atomic import write_text_atomic

OPTIONS_FILE = "args.json"  # in the run folder, written at the start
TRAINING_STATE = "training_state.json"  # in each checkpoint folder, holds the options under "args"
FIXED_ON_RESUME = ("data", "split", "config", "seed", "batch_size", "clip_weights", "mae_weights")


@dataclass
class TrainArgs:
    data: str
    out: str
    split: str | None = None
    config: str = "opensdi-vitl14"  # registered name or a JSON file (config dict or checkpoint config.json)
    clip_weights: str | None = None
    mae_weights: str | None = None
    random_init: bool = False  # allow backbones without pretrained weights (weights.require_pretrained)
    epochs: int = 50
    batch_size: int = 16  # per process
    lr: float = 1e-4
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    seed: int = 42
    workers: int = 2
    bf16: bool = False
    clip_grad: float | None = None
    skip_nonfinite: bool = True  # skip steps with inf/NaN gradients, as the authors' GradScaler does
    max_steps: int | None = None  # stop early; the cosine schedule still spans all epochs
    save_every: int = 500
    log_every: int = 10
    resume: str | None = None
    device: str = "auto"
    force: bool = False  # start even when the memory estimate exceeds what is available


def training_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder to resume from: OUT/last itself, or the run folder OUT that holds it."""
    path = Path(path)
    if not (path / TRAINING_STATE).is_file() and (path / "last" / TRAINING_STATE).is_file():
        path = path / "last"
    if not (path / TRAINING_STATE).is_file():
        raise CheckpointError(f"{path}: not a training checkpoint (no {TRAINING_STATE}); pass OUT/last of a run")
    return path


def store_options(args: TrainArgs) -> Path:
    """OUT/args.json: the options this run (or this resumed part of it) runs with."""
    path = Path(args.out) / OPTIONS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(asdict(args), indent=2) + "\n")
    return path


def _same(given, stored) -> bool:
    if isinstance(given, str) and isinstance(stored, str):  # paths given from another folder are still equal
        return given == stored or Path(given).expanduser().resolve() == Path(stored).expanduser().resolve()
    return given == stored


def resume_args(resume: str | Path, given: dict) -> TrainArgs:
    """The resumed run's stored options, with `given` (options set explicitly) replacing those that may change."""
    checkpoint = training_checkpoint(resume)
    try:
        stored = json.loads((checkpoint / TRAINING_STATE).read_text())["args"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{checkpoint / TRAINING_STATE}: holds no run options ({exc})") from None
    known = {f.name for f in fields(TrainArgs)}
    stored = {k: v for k, v in stored.items() if k in known}
    for name in FIXED_ON_RESUME:
        if name in given and not _same(given[name], stored.get(name)):
            option = "--" + name.replace("_", "-")
            raise ValueError(
                f"{option} {given[name]} differs from the resumed run's {stored.get(name)}; "
                f"{', '.join(FIXED_ON_RESUME)} stay as the run started (start a new run, another --out, to change them)"
            )
    return TrainArgs(**{**stored, **given, "resume": str(checkpoint)})
