"""The paper-size model (opensdi-vitl14, ~550M parameters, random init) exports in fp32, int8 and int8-cpu on a CPU.

Slow (many minutes each on 2 cores, ~13 GB RAM): `pytest -m slow tests/test_export_vitl14.py -s`.
Records export time, file sizes and ONNX Runtime CPU latency at batch 1; the figures are printed and,
when MASKCLIP_EXPORT_RESULTS names a JSON file, merged into it under the precision's name.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskclip_core.checkpoint import weights_digest
from maskclip_export.exporter import ExportOptions, GateFailed, ModelSource, export_artifact
from maskclip_export.verify import default_verification_images
from maskclip_runtime.backends.onnxruntime import OnnxRuntimeRunner
from maskclip_runtime.contract.artifact import load_artifact


def _latency_ms(path, size: int, runs: int = 3) -> float:
    runner = OnnxRuntimeRunner(path)
    image = np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
    runner.infer({"image": image})  # warm-up
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        runner.infer({"image": image})
        times.append((time.perf_counter() - started) * 1e3)
    runner.close()
    return statistics.median(times)


def _record(precision: str, result: dict) -> None:
    print(json.dumps({precision: result}, indent=2))
    target = os.environ.get("MASKCLIP_EXPORT_RESULTS")
    if target:
        path = Path(target)
        results = json.loads(path.read_text()) if path.is_file() else {}
        path.write_text(json.dumps({**results, precision: result}, indent=2) + "\n")


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "int8", "int8-cpu"])
def test_opensdi_vitl14_exports(precision, tmp_path):
    from maskclip_core.model import build_model

    torch.set_num_threads(1)  # the reference runs beside other jobs on 2 shared cores: no spinning pool
    torch.manual_seed(0)
    model = build_model("opensdi-vitl14").eval()
    source = ModelSource(model, "random init (opensdi-vitl14)", weights_digest(model))
    calib = None
    if precision.startswith("int8"):
        calib = tmp_path / "calib"
        calib.mkdir()
        for name, image in default_verification_images()[:4]:
            Image.fromarray(image).save(calib / f"{name}.png")
    out = tmp_path / precision
    started = time.perf_counter()
    options = ExportOptions(out=out, precision=precision, calib=calib and str(calib))
    try:
        manifest = export_artifact(source, options, progress=False).to_dict()
    except GateFailed as failed:
        # Random weights put the mask probabilities of opensdi-vitl14 within a few hundredths of the
        # threshold (reference masks of 0-2% of the pixels), where mask IoU is ill-conditioned: int8's
        # ~0.003 probability noise moves the IoU far more than it moves anything else. With 20
        # calibration images both int8 graphs pass (mask IoU 0.92 / 0.93, benchmarks/results); with the
        # 4 used here the gate may still refuse, and is right to: int8 must be judged on trained weights.
        # What is required here: every step ran, the detection output held, and the only failure is
        # the mask IoU.
        assert precision != "fp32", failed
        out = failed.report_path.parent
        manifest = json.loads((out / "manifest.failed.json").read_text())
        manifest["verification"] = json.loads(failed.report_path.read_text())
        report = manifest["verification"]
        assert [f for f in report["failures"] if "mask IoU" not in f] == []
        # Sanity bounds, not the gate (observed 2026-11-29: 0 flips, min pixel agreement 0.976).
        assert report["flips"] == 0 and report["mask_pixel_agreement_min"] >= 0.95
    else:
        load_artifact(out)
    seconds = time.perf_counter() - started
    report = manifest["verification"]
    files = {p.name: p.stat().st_size for p in out.iterdir() if p.suffix in (".onnx", ".data")}
    weights = sum(size for name, size in files.items() if name.startswith("model.onnx"))
    if precision == "fp32":  # > 1 GiB of weights: stored as external data beside the graph
        assert "model.onnx.data" in files and "model.onnx.data" in manifest["files"]
    else:  # int8 weights: about a quarter of fp32's 1.66 GB, in one file
        assert "model.onnx.data" not in files and weights < 0.6e9
    _record(
        precision,
        {
            "export_seconds_total": round(seconds, 1),
            "steps_seconds": manifest["export_seconds"],
            "files_mb": {name: round(size / 1e6, 1) for name, size in files.items()},
            "ort_cpu_latency_ms_batch1": round(_latency_ms(out / "model.onnx", model.config.image_size), 1),
            "gate": {
                k: report[k]
                for k in ("passed", "failures", "images", "max_prob_diff", "flips", "mask_iou_mean", "mask_iou_min")
            },
            "reference_mask_area_min": report["reference_mask_area_min"],
            "mask_pixel_agreement_min": report["mask_pixel_agreement_min"],
            "fp32_ops": manifest["fp32_ops"],
        },
    )
