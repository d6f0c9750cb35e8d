"""The cascade on a stream with a stated fake share, beside the full graph in the same run.

    python -m maskclip_bench.cascade_bench demo --shares 0.1,0.5,1.0 --json benchmarks/results/cascade-demo.json
    python -m maskclip_bench.cascade_bench --config opensdi-vitl14      # random weights; 17 GB RAM to export

Rows, all ONNX Runtime fp32 on the CPU, one artifact of each topology exported from the same weights:
  full graph      the fused artifact, every image gets its mask (what every image costs without a cascade)
  verdict only    the cascade artifact, masks_for="none": the screen graph alone
  N % fake        the cascade artifact, masks_for="fake" on a stream where N % of the images are judged fake
The stream's fake share is set by the threshold: it is placed between the screen's probabilities so that
exactly that share of the stream lies above it (random or demo weights judge few synthetic photos fake).
What the cascade costs depends only on how many images it localises, so this is the cost of a real stream
with that share. Rows run interleaved, round after round, and report the median round, so load from other
processes on a shared machine hits every row alike. Preprocessing is done once beforehand (it is the same
for every row). The counted FLOPs of each graph give the speed-up to expect where compute dominates.
"""

from __future__ import annotations

import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import click
import numpy as np

from maskclip_runtime.command import command, json_option, write_json
from maskclip_runtime.errors import InputError

from .artifacts import export_artifact, reusable_export_seconds
from .bench import default_workdir
from .cli import _csv, load_models, resolve_models
from .environment import environment
from .report import TARGET_MODEL
from .samples import sample_images

# The targets on opensdi-vitl14 fp32, batch 1, CPU (speed-up over the full graph's images/s).
TARGETS = {"verdict only": ("min", 2.8), "10% fake": ("min", 2.5), "100% fake": ("min", 0.95)}


def cascade_macs(config) -> dict[str, float]:
    """GMACs per image of the full graph, the screen graph and the localise graph (counted, meta device)."""
    from maskclip_core.info import count_macs

    macs = count_macs(config)
    screen = macs["clip"] + macs["heads_verdict"]
    localise = macs["mae_vca"] + macs["heads_mask"]
    return {"full": macs["image_total"], "screen": screen, "localise": localise}


def expected_speedup(macs: dict[str, float], fake_share: float | None) -> float:
    """Full graph's MACs / the cascade's per image, when a share of the images is localised (None: none)."""
    return macs["full"] / (macs["screen"] + (fake_share or 0.0) * macs["localise"])


def threshold_for_share(fake_prob: np.ndarray, share: float) -> tuple[float, float]:
    """(threshold, achieved share): the threshold midway between the probabilities around the share's cut."""
    ranked = np.sort(fake_prob)[::-1]
    count = round(share * len(ranked))
    if count == 0:
        threshold = 1.0
    elif count == len(ranked):
        threshold = float(ranked[-1]) / 2  # 0 when a probability is 0: that image stays real
    else:
        threshold = float((ranked[count - 1] + ranked[count]) / 2)
    return threshold, float((fake_prob > threshold).mean())


def _artifact(model, name: str, topology: str, workdir: Path, batch: int, say) -> Path:
    out = workdir / f"{name}-fp32-{topology}-b{batch}"
    if reusable_export_seconds(out, model, "fp32", batch, topology) is None:
        say(f"exporting {out.name}")
        export_artifact(model, "fp32", out, batch, workdir, topology=topology)
    return out


def run(model, name: str, shares, images: int, rounds: int, batch: int, threads, workdir: Path, say) -> dict:
    from maskclip_runtime.detect.detector import Detector
    from maskclip_runtime.kernel.preprocess import load_image

    fused_dir = _artifact(model, name, "fused", workdir, batch, say)
    cascade_dir = _artifact(model, name, "cascade", workdir, batch, say)
    # Timing only: the parity that matters here is measured below, against the same backend.
    fused = Detector(fused_dir, backend="onnxruntime", device="cpu", threads=threads, batch=batch, self_check=False)
    cascade = Detector(cascade_dir, backend="onnxruntime", device="cpu", threads=threads, batch=batch, self_check=False)
    try:
        paths = sample_images(workdir / "stream", images)
        prepared = [cascade.prepare(load_image(p)) for p in paths]
        say(f"{name}: parity and thresholds on {images} images")
        full_answers = fused.detect_prepared(prepared, "all")
        chained = cascade.detect_prepared(prepared, "all")
        verdict_only = cascade.detect_prepared(prepared, "none")
        probs = np.array([d.fake_prob for d in verdict_only])
        parity = {
            "cascade_fake_prob_bit_identical_across_masks_for": bool(
                np.array_equal(probs, [d.fake_prob for d in chained])
            ),
            "max_prob_diff_cascade_vs_fused": float(
                np.abs(probs - np.array([d.fake_prob for d in full_answers])).max()
            ),
            "max_mask_diff_cascade_vs_fused": float(
                max(np.abs(a.model_mask - b.model_mask).max() for a, b in zip(chained, full_answers, strict=True))
            ),
        }
        rows = [{"row": "full graph", "artifact": "fused", "masks_for": "all", "fake_share": None}]
        rows.append({"row": "verdict only", "artifact": "cascade", "masks_for": "none", "fake_share": None})
        for share in shares:
            threshold, achieved = threshold_for_share(probs, share)
            rows.append(
                {
                    "row": f"{share:.0%} fake",
                    "artifact": "cascade",
                    "masks_for": "fake",
                    "fake_share": achieved,
                    "threshold": threshold,
                }
            )
        detectors = {"fused": fused, "cascade": cascade}
        default_threshold = cascade.threshold
        times: dict[str, list[float]] = {row["row"]: [] for row in rows}
        for round_index in range(rounds + 1):  # round 0 warms every row up and is not counted
            say(f"{name}: round {round_index}/{rounds}")
            for row in rows:
                detector = detectors[row["artifact"]]
                detector.threshold = row.get("threshold", default_threshold)
                began = time.perf_counter()
                answers = detector.detect_prepared(prepared, row["masks_for"])
                seconds = time.perf_counter() - began
                if round_index:
                    times[row["row"]].append(seconds)
                row["masks_computed"] = sum(a.mask_computed for a in answers)
        cascade.threshold = default_threshold
    finally:
        fused.close()
        cascade.close()
    macs = cascade_macs(model.config)
    for row in rows:
        seconds = float(np.median(times[row["row"]]))
        row["images_per_s"] = images / seconds
        row["ms_per_image"] = seconds * 1e3 / images
        row["round_seconds"] = times[row["row"]]  # all of them: how noisy the machine was
    full = rows[0]["images_per_s"]
    for row in rows:
        row["speedup"] = row["images_per_s"] / full
        row["expected_speedup_flops"] = 1.0 if row["artifact"] == "fused" else expected_speedup(macs, row["fake_share"])
    return {"model": name, "config": model.config.name, "gmacs": macs, "parity": parity, "rows": rows}


def check_targets(result: dict) -> list[dict]:
    by_row = {row["row"]: row for row in result["rows"]}
    checks = []
    for row_name, (_, limit) in TARGETS.items():
        row = by_row.get(row_name)
        if row is not None:
            checks.append({"row": row_name, "speedup": row["speedup"], "min": limit, "met": row["speedup"] >= limit})
    return checks


def render(report: dict) -> str:
    lines = []
    for result in report["results"]:
        macs = result["gmacs"]
        lines.append(
            f"## {result['model']} (config {result['config']}): GMACs per image full {macs['full']:.2f}, "
            f"screen {macs['screen']:.2f}, localise {macs['localise']:.2f}"
        )
        lines.append("")
        lines.append(
            "| row | masks_for | fake share | masks computed | images/s | ms/image | speed-up | FLOP speed-up |"
        )
        lines.append("|---|---|---|---|---|---|---|---|")
        for row in result["rows"]:
            share = "-" if row["fake_share"] is None else f"{row['fake_share']:.0%}"
            lines.append(
                f"| {row['row']} | {row['masks_for']} | {share} | {row['masks_computed']} | {row['images_per_s']:.2f} "
                f"| {row['ms_per_image']:.1f} | {row['speedup']:.2f}x | {row['expected_speedup_flops']:.2f}x |"
            )
        lines.append("")
        lines.append("parity: " + ", ".join(f"{k} {v}" for k, v in result["parity"].items()))
        for check in result.get("targets", []):
            status = "met" if check["met"] else "NOT met"
            lines.append(f"target {check['row']}: {check['speedup']:.2f}x >= {check['min']}x: {status}")
        lines.append("")
    expectation = report["flop_expectation"]
    lines.append(
        f"{TARGET_MODEL} from counted FLOPs (not measured): full {expectation['gmacs']['full']:.1f}, screen "
        f"{expectation['gmacs']['screen']:.1f}, localise {expectation['gmacs']['localise']:.1f} GMACs; "
        + ", ".join(f"{k} {v:.2f}x" for k, v in expectation["speedup"].items())
    )
    return "\n".join(lines)


@command("maskclip_bench.cascade_bench", extra="export")
@click.argument("models", nargs=-1)
@click.option("--config", "configs", multiple=True, help="Config name (random weights); repeatable.")
@click.option("--shares", default="0.1,0.5,1.0", show_default=True, callback=_csv(float), help="Fake shares.")
@click.option("--images", default=20, show_default=True, type=click.IntRange(1), help="Images in the stream.")
@click.option("--rounds", default=5, show_default=True, type=click.IntRange(1), help="Timed rounds per row.")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(1), help="Images per forward pass.")
@click.option("--threads", type=click.IntRange(1), help="ONNX Runtime threads (default: its own).")
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights of config models.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), help="Artifacts (reused when same).")
@json_option("the report")
def main(models, configs, shares, images, rounds, batch, threads, seed, workdir, json_path):
    """Benchmark the cascade topology on MODELS (demo, config names, checkpoints; default: demo and tiny)."""
    if not shares or not all(0.0 <= s <= 1.0 for s in shares):
        raise click.BadParameter("shares must lie in [0, 1]", param_hint="--shares")
    say = lambda text: click.echo(text, err=True)  # noqa: E731 - progress goes to stderr
    names = list(models) + list(configs) or ["demo", "tiny"]
    resolved = resolve_models(names, None, None)
    artifacts = [name for name, existing in resolved if existing is not None]
    if artifacts:
        raise InputError(f"{', '.join(artifacts)}: the cascade benchmark exports its own graphs from a model (give "
                         "demo, a config or a checkpoint)")  # fmt: skip
    workdir = workdir or default_workdir()
    results = []
    for name, model, description in load_models(resolved, seed):
        result = run(model.eval(), name, shares, images, rounds, batch, threads, workdir, say)
        result["description"] = description
        if model.config.name == TARGET_MODEL and batch == 1:
            result["targets"] = check_targets(result)
        results.append(result)
    from maskclip_core.config import get_config

    target_macs = cascade_macs(get_config(TARGET_MODEL))
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m maskclip_bench.cascade_bench", *map(shlex.quote, sys.argv[1:])]),
        "environment": environment("cpu"),
        "images": images,
        "rounds": rounds,
        "batch": batch,
        "results": results,
        "flop_expectation": {
            "model": TARGET_MODEL,
            "gmacs": target_macs,
            "speedup": {
                "verdict only": expected_speedup(target_macs, None),
                **{f"{s:.0%} fake": expected_speedup(target_macs, s) for s in shares},
            },
        },
    }
    if json_path:
        write_json(report, json_path)
    if json_path != "-":  # stdout holds one document
        click.echo(render(report))


if __name__ == "__main__":
    main()
