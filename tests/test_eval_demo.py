"""The embedded demo model: present, small, loadable, and scored on held-out proxy data."""

import json

import numpy as np
import torch

from maskclip_core.demo import DEMO_CHECKPOINT, DEMO_MODEL_CARD, load_demo_model
from maskclip_runtime.kernel.preprocess import resize_and_normalize


def test_demo_model_loads_and_runs():
    assert DEMO_CHECKPOINT.is_file() and DEMO_CHECKPOINT.stat().st_size < 30 * 2**20
    assert DEMO_MODEL_CARD.is_file()
    model = load_demo_model()
    assert model.config.name == "tiny" and not model.training
    image = np.random.default_rng(0).integers(0, 256, (96, 80, 3), dtype=np.uint8)
    x = torch.from_numpy(resize_and_normalize(image, model.preprocess_spec()))[None]
    with torch.inference_mode():
        out = model(x)
    assert out["fake_prob"].shape == (1,) and out["mask_prob"].shape == (1, 1, 128, 128)


def test_demo_metrics_recorded():
    metrics = json.loads((DEMO_CHECKPOINT.parent / "metrics.json").read_text())["metrics"]
    assert {"sd15-like", "sdxl-like", "flux-like", "AVG"} <= set(metrics)
