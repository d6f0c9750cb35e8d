"""The paper-size model (opensdi-vitl14, ~550M parameters, random init) exports in fp32 and int8 on a CPU.

Slow (many minutes on 2 cores, ~12 GB RAM): `pytest -m slow tests/test_export_vitl14.py -s`.
Records export time, file sizes and ONNX Runtime CPU latency at batch 1; the figures are printed and,
when MASKCLIP_EXPORT_RESULTS names a file, written there as JSON.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import numpy as np
import pytest
import torch
from PIL import Image

from maskclip_export.exporter import ExportOptions, ModelSource, export_artifact
from maskclip_export.manifest import state_dict_digest
from maskclip_export.verify import default_verification_images
from maskclip_runtime.artifact import load_artifact
from maskclip_runtime.backends.onnxruntime import OnnxRuntimeRunner


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


@pytest.mark.slow
def test_opensdi_vitl14_exports_fp32_and_int8(tmp_path):
    from maskclip_core.model import build_model

    torch.set_num_threads(1)  # the reference runs beside other jobs on 2 shared cores: no spinning pool
    torch.manual_seed(0)
    model = build_model("opensdi-vitl14").eval()
    source = ModelSource(model, "random init (opensdi-vitl14)", state_dict_digest(model))
    calib = tmp_path / "calib"
    calib.mkdir()
    for name, image in default_verification_images()[:4]:
        Image.fromarray(image).save(calib / f"{name}.png")

    results = {}
    for precision in ("fp32", "int8"):
        out = tmp_path / precision
        options = ExportOptions(out=out, precision=precision, calib=str(calib) if precision == "int8" else None)
        started = time.perf_counter()
        manifest = export_artifact(source, options, progress=False)
        seconds = time.perf_counter() - started
        assert manifest["verification"]["passed"], manifest["verification"]["failures"]
        load_artifact(out)
        files = {p.name: p.stat().st_size for p in out.iterdir()}
        if precision == "fp32":  # > 1 GiB of weights: stored as external data beside the graph
            assert "model.onnx.data" in files and "model.onnx.data" in manifest["files"]
        report = manifest["verification"]
        results[precision] = {
            "export_seconds_total": round(seconds, 1),
            "steps_seconds": manifest["export_seconds"],
            "files_mb": {name: round(size / 1e6, 1) for name, size in files.items()},
            "ort_cpu_latency_ms_batch1": round(_latency_ms(out / "model.onnx", model.config.image_size), 1),
            "gate": {k: report[k] for k in ("max_prob_diff", "flips", "mask_iou_mean", "mask_iou_min")},
            "threads": torch.get_num_threads(),
        }
        del manifest
    print(json.dumps(results, indent=2))
    if os.environ.get("MASKCLIP_EXPORT_RESULTS"):
        with open(os.environ["MASKCLIP_EXPORT_RESULTS"], "w") as f:
            json.dump(results, f, indent=2)
    assert results["int8"]["files_mb"]["model.onnx"] < results["fp32"]["files_mb"]["model.onnx.data"] / 2
