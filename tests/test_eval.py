"""Evaluation: predictor abstraction, report format, CLI (checkpoint path, bad inputs, synth)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from maskclip_core.checkpoint import save_checkpoint
from maskclip_core.data import open_samples
from maskclip_core.data.synth import synthesize
from maskclip_core.evaluate import TorchPredictor, evaluate, report
from maskclip_core.model import build_model
from maskclip_runtime.errors import EXIT_USAGE

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthesize(
        tmp_path_factory.mktemp("synth"),
        seed=1,
        train_count=0,
        test_count=8,
        generators=["sd15-like", "flux-like"],
        min_size=64,
        max_size=64,
    )


class Oracle:
    """A predictor that knows the answers: checks that evaluate() wires data to metrics correctly."""

    def __init__(self, samples, spec):
        from maskclip_core.data import MaskCLIPDataset

        self.items = MaskCLIPDataset(samples, spec)
        self.spec, self.threshold, self.name, self.seen = spec, 0.5, "oracle", 0

    def __call__(self, images):
        batch = [self.items[self.seen + i] for i in range(len(images))]
        np.testing.assert_array_equal(images, np.stack([b["image"].numpy() for b in batch]))
        self.seen += len(images)
        masks = np.stack([b["mask"][0].numpy() for b in batch])[:, ::2, ::2]  # half size: evaluate resizes
        return np.array([float(b["label"]) for b in batch]), masks


def test_oracle_scores_perfectly(data):
    samples = open_samples(data, "test")
    from maskclip_runtime.kernel.preprocess import PreprocessSpec

    summary = evaluate(Oracle(samples, PreprocessSpec(size=32)), samples, batch_size=3)
    assert set(summary) == {"sd15-like", "flux-like", "AVG"}
    for row in summary.values():
        assert row["acc"] == row["det_f1"] == row["auc"] == 1.0
        assert row["f1"] > 0.85 and row["iou"] > 0.75  # half-size masks, bilinearly resized back
    assert summary["sd15-like"]["n_partial"] == 3 and summary["sd15-like"]["n_images"] == 8


def test_torch_predictor_and_report(data):
    torch.manual_seed(0)
    predictor = TorchPredictor(build_model("tiny"))
    samples = open_samples(data, "test")[:4]
    fake_prob, mask_prob = predictor(np.zeros((2, 3, 128, 128), np.float32))
    assert fake_prob.shape == (2,) and mask_prob.shape == (2, 128, 128)
    doc = report(evaluate(predictor, samples, batch_size=4), model="random")
    json.dumps(doc, allow_nan=False)  # NaN (no partial fakes in a column) becomes null
    assert "IoU / F1" in doc["table"] and "AVG" in doc["table"]


def _run(*args):
    return subprocess.run([sys.executable, "-c", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_eval_cli_checkpoint_and_errors(data, tmp_path):
    torch.manual_seed(0)
    save_checkpoint(build_model("tiny"), tmp_path / "ckpt")
    out = tmp_path / "report.json"
    ok = _run(
        "from maskclip_core.cli import evaluate; evaluate()",
        "--data",
        str(data),
        "--split",
        "test",
        "--checkpoint",
        str(tmp_path / "ckpt"),
        "--workers",
        "0",
        "--limit",
        "4",
        "--json",
        str(out),
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "IoU / F1 (pixel)" in ok.stdout and json.loads(out.read_text())["images"] == 4
    summary = re.search(
        r"4 images: (\d+) real, (\d+) fake at threshold .*\(labelled (\d+) real, (\d+) fake\)", ok.stderr
    )
    labels = [s.label for s in open_samples(str(data), "test")[:4]]
    assert summary and int(summary[1]) + int(summary[2]) == 4
    assert (int(summary[3]), int(summary[4])) == (labels.count(0), labels.count(1))
    bad = _run(
        "from maskclip_core.cli import evaluate; evaluate()",
        "--data",
        str(tmp_path / "missing"),
        "--checkpoint",
        str(tmp_path / "ckpt"),
    )
    assert bad.returncode == EXIT_USAGE and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    bad = _run(
        "from maskclip_core.cli import evaluate; evaluate()",
        "--data",
        str(data),
        "--split",
        "test",
        "--checkpoint",
        str(tmp_path / "nothing"),
    )
    assert bad.returncode == EXIT_USAGE and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_synth_and_train_cli_errors(tmp_path):
    r = _run(
        "from maskclip_core.cli import synth; synth()",
        "--out",
        str(tmp_path / "s"),
        "--count",
        "0",
        "--test-count",
        "4",
        "--generators",
        "sd15-like",
        "--min-size",
        "48",
        "--max-size",
        "48",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(open_samples(tmp_path / "s", "test")) == 4
    r = _run("from maskclip_core.cli import synth; synth()", "--out", str(tmp_path / "t"), "--generators", "dalle")
    assert r.returncode == EXIT_USAGE and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    (tmp_path / "f/real").mkdir(parents=True)
    (tmp_path / "f/real/broken.png").write_bytes(b"nope")
    r = _run(
        "from maskclip_core.cli import train; train()",
        "--data",
        str(tmp_path / "f"),
        "--out",
        str(tmp_path / "run"),
        "--config",
        "tiny",
        "--random-init",
        "--batch",
        "1",
        "--workers",
        "0",
    )
    assert r.returncode == EXIT_USAGE and sum("maskclip-train: error:" in line for line in r.stderr.splitlines()) == 1
    assert "Traceback" not in r.stderr
