"""The artifacts a benchmark times: exported through the exporter (gate included), reused across runs in one
work folder, timed even when their gate refused them; the gate's figures are what a row reports as parity."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .samples import calibration_images


def export_artifact(model, precision: str, out: Path, max_batch: int, workdir: Path, topology: str = "fused") -> None:
    """The exporter's artifact: fused graph (or `topology`), dynamic batch 1..max_batch, its gate included.

    An artifact the gate refuses is still timed (a speed benchmark of random weights must not depend
    on their masks): its graphs are installed at `out` with the refusal in the manifest, and the
    row's parity columns say so."""
    from maskclip_core.checkpoint import weights_digest
    from maskclip_export.exporter import ExportOptions, GateFailed, ModelSource, export_artifact
    from maskclip_runtime.contract.manifest import BatchSpec
    from maskclip_runtime.contract.precision_table import precision_row

    calibrated = precision_row(precision).calibrated
    options = ExportOptions(
        out=out,
        precision=precision,
        topology=topology,
        batch=BatchSpec.up_to(max_batch),
        calib=str(workdir / "calib") if calibrated else None,
    )
    if calibrated:
        calibration_images(workdir)
    source = ModelSource(model, "benchmark model", weights_digest(model))
    try:
        export_artifact(source, options, progress=False, log=lambda _: None)
    except GateFailed as refused:
        adopt_refused_artifact(refused.report_path.parent, out)


def adopt_refused_artifact(failed: Path, out: Path) -> None:
    """`<out>.failed/` (graphs + the failed manifest, whose verification says passed: false) -> `out`,
    loadable for timing. Only the benchmark does this, inside its own work folder."""
    from maskclip_export.exporter import FAILED_MANIFEST_NAME
    from maskclip_runtime.contract.artifact import MANIFEST_NAME

    os.replace(failed / FAILED_MANIFEST_NAME, failed / MANIFEST_NAME)
    if out.exists():
        shutil.rmtree(out)
    os.replace(failed, out)


def reusable_export_seconds(out: Path, model, precision: str, max_batch: int, topology: str = "fused") -> float | None:
    """The recorded export time of an artifact already in `out` for these exact weights, precision,
    topology and batch range (a re-run in the same --workdir skips the export); None when it must be
    exported."""
    import json

    from maskclip_core.checkpoint import weights_digest
    from maskclip_runtime.contract.manifest import MANIFEST_NAME, Manifest, ModelIdentity

    try:
        manifest = Manifest.from_dict(json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8")))
    except (OSError, ValueError):  # ManifestError is a ValueError
        return None
    expected = ModelIdentity(model.config.name, weights_digest(model), precision, topology)
    same = manifest.identity == expected and manifest.batch.max == max_batch
    return float(sum(manifest.export_seconds.values())) if same else None


def gate_summary(report: dict) -> dict:
    """The figures of a verification report a benchmark row carries."""
    return {
        "max_prob_diff": report["max_prob_diff"],
        "flips": report["flips"],
        "mask_iou": report["mask_iou_mean"],
        "images": report["images"],
        "passed": report["passed"],
        "failures": report.get("failures", []),
    }


def gate_parity(artifact_dir: Path, runtime: str) -> dict:
    """Parity with PyTorch from the export gate's report: the graphs' (ONNX Runtime CPU), or for a backend that
    runs files built from them (TensorRT's engines) their own gate's."""
    from maskclip_runtime.backends import registry
    from maskclip_runtime.contract.artifact import load_artifact

    manifest = load_artifact(artifact_dir).manifest
    graphs = registry.get(runtime).runs_onnx_graphs
    report = (manifest.verification if graphs else manifest.engine_verification) or {}
    if not report or report.get("skipped"):
        return {}
    return gate_summary(report)
