"""maskclip-bench: one table across backends for this device (latency, throughput, memory, parity, roofline).

What it benchmarks: configs and checkpoints (exported here at each precision, gate included), or what
exists, as trtexec --loadEngine and benchmark_app do: an artifact folder (its graphs, and its engines where
it has them) or an engine file, each with its recorded precision and gate. Every argument is checked before
any work, the GEMM-ceiling measurement included (an unknown name, an unreadable artifact, a backend or batch
size it cannot run is status 2, a CUDA device PyTorch cannot use is 4): measuring takes minutes, and a typo
must not cost them.
"""

from __future__ import annotations

import os
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

import click
from click.core import ParameterSource

from maskclip_core.config import list_configs
from maskclip_runtime.backends import registry
from maskclip_runtime.command import command, json_option, write_json
from maskclip_runtime.errors import BackendUnavailable, InputError

from .backends import BACKENDS, DEFAULT_BACKENDS, ExistingArtifact, existing_artifact
from .bench import BenchSettings, attach_ceilings, batch_sizes_for, default_workdir, run
from .environment import environment
from .op_profile import ort_op_profile
from .pytorch import cuda_unavailable_reason
from .report import TARGET_MODEL, evaluate_targets, render_markdown, write_markdown
from .roofline import best_ceiling, best_of, measure_ceilings


def _csv(kind):
    def parse(ctx, param, value):
        items = [item.strip() for item in value.split(",") if item.strip()]
        try:
            return [kind(item) for item in items]
        except ValueError as err:
            raise click.BadParameter(str(err)) from None

    return parse


def resolve_models(
    names: list[str], backends: list[str] | None, batch_sizes: list[int] | None
) -> list[tuple[str, ExistingArtifact | None]]:
    """Each name -> (name, its ExistingArtifact, or None for demo / a config / a checkpoint); InputError
    before any work for an unknown name, a broken artifact or engine, or an artifact that runs none of the
    --backends / --batch-sizes asked for explicitly (None: not given)."""
    from maskclip_core.checkpoint import read_checkpoint_config

    known = list_configs()
    resolved = []
    for name in names:
        existing = existing_artifact(Path(name)) if Path(name).exists() else None
        if existing is None and Path(name).exists():
            read_checkpoint_config(name)  # neither artifact nor checkpoint: CheckpointError, status 2
        elif existing is None and name != "demo" and name not in known:
            raise InputError(
                f"unknown model {name}: give demo, a config ({', '.join(known)}), a checkpoint, an artifact "
                "folder or an engine file"
            )
        if existing is not None:
            if backends is not None and not set(backends) & set(existing.rows):
                raise InputError(f"{name} runs as {', '.join(existing.rows)}, none of --backends {','.join(backends)}")
            outside = [b for b in batch_sizes or () if b not in batch_sizes_for(existing, [b])]
            if outside:
                raise InputError(
                    f"{name} takes batches {existing.batch.min}..{existing.batch.max}, not --batch-sizes "
                    f"{','.join(map(str, outside))}"
                )
        resolved.append((name, existing))
    return resolved


def load_models(names: list[tuple[str, ExistingArtifact | None]], seed: int) -> list[tuple[str, object, str]]:
    """(name, artifact) -> (name, model or artifact, description): "demo", config names (random weights drawn
    from `seed`, so a re-run reuses the artifacts in --workdir), checkpoint paths or existing artifacts."""
    import torch

    from maskclip_core.checkpoint import load_checkpoint
    from maskclip_core.config import get_config
    from maskclip_core.model import build_model

    models = []
    for name, existing in names:
        if existing is not None:
            engine = existing.given.suffix == ".engine"
            label = existing.given.name if engine else existing.dir.name
            what = "engine file" if engine else "artifact"
            models.append((label, existing, f"{what} {name} (as exported; its own gate)"))
            continue
        if name == "demo":
            from maskclip_core.demo import DEMO_CHECKPOINT, load_demo_model

            description = f"the embedded demo model ({DEMO_CHECKPOINT.name}: tiny config trained on synthetic edits)"
            models.append(("demo", load_demo_model(), description))
            continue
        if Path(name).exists():
            model = load_checkpoint(name)
            models.append((Path(name).stem, model, f"checkpoint {name} (config {model.config.name})"))
            continue
        get_config(name)  # unknown names fail here with the registry's message
        torch.manual_seed(seed)  # the same random weights every run: artifacts in --workdir are reused
        models.append((name, build_model(name), f"config {name}, RANDOM weights (speed only; parity is still real)"))
    return models


@command("maskclip-bench", extra="export", quiet=True)
@click.argument("models", nargs=-1)
@click.option("--config", "configs", multiple=True, help="Config name to benchmark (random weights); repeatable.")
@click.option(
    "--backends",
    default=",".join(DEFAULT_BACKENDS),
    show_default=True,
    callback=_csv(str),
    help=f"Comma-separated, from {', '.join(BACKENDS)}.",
)
@click.option("--batch-sizes", default="1,8", show_default=True, callback=_csv(int), help="Comma-separated.")
@click.option("--warmup", default=2, show_default=True, type=click.IntRange(0), help="Untimed calls per row.")
@click.option("--iters", default=10, show_default=True, type=click.IntRange(1), help="Timed calls per row.")
@click.option("--device", default="cpu", show_default=True, help="cpu, or cuda[:N] for PyTorch CUDA / ORT CUDA / TRT.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the report: NAME.md and NAME.json (default: the Markdown on stdout).",
)
@click.option("--name", default="bench", show_default=True, help="File name of the report in --out, without suffix.")
@json_option("the report (also, or instead of --out)")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where artifacts are exported; an artifact already there for the same weights is reused.",
)
@click.option(
    "--pairs",
    default=7,
    show_default=True,
    type=click.IntRange(0),
    help="Alternating call pairs per paired speed-up (PyTorch vs ORT fp32, ORT fp32 vs int8); 0: none.",
)
@click.option("--profile/--no-profile", default=True, show_default=True, help="ORT per-op-type profile at batch 1.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights of config models.")
@click.option("--note", "notes", multiple=True, help="A line for the report's notes; repeatable.")
def main(
    models,
    configs,
    backends,
    batch_sizes,
    warmup,
    iters,
    device,
    out,
    name,
    json_path,
    workdir,
    pairs,
    profile,
    seed,
    notes,
):
    """Benchmark MODELS: demo, config names (tiny, opensdi-vitl14: random weights), checkpoint paths, artifact
    folders (or their manifest.json) or engine files.

    Default: tiny."""
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise click.BadParameter(f"unknown backend(s) {', '.join(unknown)}", param_hint="--backends")
    if not batch_sizes or min(batch_sizes) < 1:
        raise click.BadParameter("batch sizes must be >= 1", param_hint="--batch-sizes")
    ctx = click.get_current_context()
    given = lambda option: ctx.get_parameter_source(option) is not ParameterSource.DEFAULT  # noqa: E731
    resolved = resolve_models(
        list(models) + list(configs) or ["tiny"],
        backends if given("backends") else None,
        batch_sizes if given("batch_sizes") else None,
    )
    if given("backends"):
        # Rows asked for by name (and valid for the models) on a backend that cannot run here: refused before
        # any model is built.
        for runtime in sorted({BACKENDS[b][0] for b in backends} & set(registry.names())):
            registry.require(runtime)
    import torch  # noqa: F401 - every model is built with it: without the extra, refused before any work

    if device.startswith("cuda"):
        reason = cuda_unavailable_reason(device)
        if reason:  # before minutes of model building and exports end in a GEMM-ceiling traceback
            raise BackendUnavailable(reason)
    settings = BenchSettings(backends, batch_sizes, warmup, iters, device, workdir or default_workdir(), pairs)
    say = lambda text: click.echo(text, err=True)  # noqa: E731 - progress goes to stderr

    load_at_start = os.getloadavg()
    say("measuring the GEMM ceiling")
    ceilings = measure_ceilings(device)
    summaries, rows = run(load_models(resolved, seed), settings, say)
    say("measuring the GEMM ceiling again")
    ceilings = best_of(ceilings, measure_ceilings(device))
    attach_ceilings(rows, ceilings, device)
    fp32_ceiling = best_ceiling(ceilings, "float32", device)
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(arg) for arg in ["maskclip-bench", *sys.argv[1:]]),
        "environment": environment(device),
        "warmup": warmup,
        "iters": iters,
        "batch_sizes": list(batch_sizes),
        "ceilings": [c.to_dict() for c in ceilings],
        "ceiling_fp32_gflops": fp32_ceiling.gflops if fp32_ceiling else None,
        "models": summaries,
        "rows": rows,
        "notes": list(notes),
        "load_average": {"start": list(load_at_start), "end": list(os.getloadavg())},
    }
    if profile and device == "cpu":
        report["op_profiles"] = _op_profiles(settings, rows)
    if any(s["name"] == TARGET_MODEL for s in summaries) and 1 in batch_sizes:
        report["targets"] = evaluate_targets(report)
    _write(report, out, name, json_path)


def _write(report: dict, out: Path | None, name: str, json_path: str | None) -> None:
    """NAME.md and NAME.json under --out, the JSON document at --json; the markdown on stdout otherwise."""
    markdown = render_markdown(report)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        write_markdown(out / f"{name}.md", markdown)
        write_json(report, str(out / f"{name}.json"))
    if json_path:
        write_json(report, json_path)
    if not out and json_path != "-":  # stdout holds one document
        click.echo(markdown)


def _op_profiles(settings: BenchSettings, rows: list[dict]) -> dict:
    import numpy as np

    from maskclip_runtime.contract.artifact import load_artifact

    profiles = {}
    for row in rows:
        if row["status"] != "ok" or row["batch"] != min(settings.batch_sizes) or not row["backend"].startswith("ort-"):
            continue
        size = load_artifact(row["artifact"]).preprocess.size
        batch = np.random.default_rng(0).standard_normal((row["batch"], 3, size, size), dtype=np.float32)
        profiles[f"{row['model']} {row['backend']}"] = ort_op_profile(Path(row["artifact"]), batch)
    return profiles
