"""Runtime vs PyTorch on the tiny model, through the real exporter (slow: two exports, needs torch).

The default suite tests the runtime on a stand-in artifact without torch; this checks the whole
path a user takes: checkpoint -> maskclip-export (fused and split) -> maskclip_runtime, 16 photos,
batch 1 and batch 4, against the PyTorch model's own outputs.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

torch = pytest.importorskip("torch")

# Same tolerance as the export gate's fp32 check would accept for probabilities.
ATOL = 1e-4


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A seeded tiny checkpoint, exported fused and split with a dynamic batch up to 4."""
    from maskclip_core.checkpoint import save_checkpoint
    from maskclip_core.model import build_model

    root = tmp_path_factory.mktemp("parity")
    torch.manual_seed(7)
    model = build_model("tiny").eval()
    save_checkpoint(model, root / "tiny")
    checkpoint = root / "tiny"  # the folder form: model.safetensors + config.json
    folders = {}
    for topology in ("fused", "split"):
        out = root / topology
        command = [sys.executable, "-c", "from maskclip_export.cli import main; main()"]
        command += ["--checkpoint", str(checkpoint), "--out", str(out), "--dynamic", "--batch", "4", "--quiet"]
        if topology == "split":
            command.append("--split")
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        folders[topology] = out
    return model, folders


@pytest.fixture(scope="module")
def photos():
    from skimage import data

    names = ("astronaut", "coffee", "chelsea", "rocket", "cat", "hubble_deep_field", "immunohistochemistry", "retina")
    images = [Image.fromarray(getattr(data, name)()).convert("RGB") for name in names]
    return images + [image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for image in images]  # 16


@pytest.mark.parametrize("topology", ["fused", "split"])
@pytest.mark.parametrize("batch", [1, 4])
def test_runtime_equals_pytorch(exported, photos, topology, batch):
    from maskclip_runtime import Detector
    from maskclip_runtime.kernel.preprocess import preprocess_batch, resize_probability_map

    model, folders = exported
    detector = Detector(folders[topology], backend="onnxruntime", device="cpu", batch=batch)
    assert detector.batch_size == batch
    with torch.no_grad():
        reference = model(torch.from_numpy(preprocess_batch(photos, model.preprocess_spec())))
    fake_prob = reference["fake_prob"].numpy()
    masks = reference["mask_prob"].numpy()[:, 0]
    for image, detection, prob, mask in zip(photos, detector.detect(photos), fake_prob, masks, strict=True):
        assert detection.fake_prob == pytest.approx(float(prob), abs=ATOL)
        expected = resize_probability_map(mask, image.width, image.height)
        assert np.abs(detection.mask - expected).max() < ATOL
