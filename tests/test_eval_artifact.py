"""The same data and metric code scores an exported artifact exactly like its PyTorch checkpoint."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from maskclip_core.data.synth import synthesize
from maskclip_core.demo import DEMO_CHECKPOINT

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("onnxruntime")


def _cli(command, *args):
    code = f"from {command[0]} import {command[1]}; {command[1]}()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_artifact_and_checkpoint_score_the_same(tmp_path):
    data = synthesize(tmp_path / "synth", seed=3, train_count=0, test_count=8, min_size=128, max_size=128)
    art = _cli(
        ("maskclip_export.cli", "main"),
        "--checkpoint",
        str(DEMO_CHECKPOINT),
        "--out",
        str(tmp_path / "art"),
        "--batch",
        "4",
        "--dynamic",
        "--quiet",
    )
    assert art.returncode == 0, art.stderr[-2000:]
    reports = {}
    for name, source in (
        ("artifact", ["--artifact", str(tmp_path / "art"), "--backend", "onnxruntime"]),
        ("checkpoint", ["--checkpoint", str(DEMO_CHECKPOINT)]),
    ):
        out = tmp_path / f"{name}.json"
        r = _cli(
            ("maskclip_core.cli", "evaluate"),
            "--data",
            str(data),
            "--split",
            "test",
            "--device",
            "cpu",
            "--workers",
            "0",
            "--json",
            str(out),
            *source,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        reports[name] = json.loads(out.read_text())
    assert reports["artifact"]["predictor"].startswith("artifact:onnxruntime")
    for gen, row in reports["checkpoint"]["metrics"].items():
        for key, value in row.items():
            other = reports["artifact"]["metrics"][gen][key]
            assert other == pytest.approx(value, abs=1e-3, nan_ok=True) if value is not None else other is None
