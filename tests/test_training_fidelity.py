"""The authors' training pipeline around the network: augmentation draws, labels, non-finite steps."""

from __future__ import annotations

import io
import json
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from maskclip_core.data import MaskCLIPDataset, Sample
from maskclip_core.data.augment import (
    AugmentParams,
    apply_augment,
    augment,
    brightness_contrast,
    draw_augment,
    random_scale_size,
)
from maskclip_core.train import optimizer_step
from maskclip_runtime.kernel.preprocess import PreprocessSpec

DRAWS = 20000
TOLERANCE = 0.015  # >= 5 standard errors of a probability estimated from 20000 draws (0.0035 at p=0.5)


@pytest.fixture(scope="module")
def draws() -> list[AugmentParams]:
    rng = np.random.default_rng(123)
    return [draw_augment(rng) for _ in range(DRAWS)]


def _share(values, predicate) -> float:
    values = list(values)
    return sum(map(predicate, values)) / len(values)


def test_always_applied_draws_stay_in_their_ranges(draws):
    scales = np.array([d.scale for d in draws])
    alphas, betas = np.array([d.alpha for d in draws]), np.array([d.beta for d in draws])
    assert scales.min() >= 0.8 and scales.max() <= 1.2 and abs(scales.mean() - 1.0) < 0.005
    assert alphas.min() >= 0.9 and alphas.max() <= 1.1 and abs(alphas.mean() - 1.0) < 0.002
    assert betas.min() >= -0.1 and betas.max() <= 0.1 and abs(betas.mean()) < 0.002
    # Brightness/contrast changes (almost) every image (p=1): a flat grey square moves off 128.
    rng = np.random.default_rng(7)
    grey, mask = np.full((16, 16, 3), 128, np.uint8), np.zeros((16, 16), np.uint8)
    moved = [augment(grey, mask, rng)[0].mean() != 128 for _ in range(300)]
    assert np.mean(moved) > 0.95


def test_flip_jpeg_rotate_blur_probabilities(draws):
    assert _share(draws, lambda d: d.hflip) == pytest.approx(0.5, abs=TOLERANCE)
    assert _share(draws, lambda d: d.vflip) == pytest.approx(0.5, abs=TOLERANCE)

    qualities = [d.jpeg_quality for d in draws if d.jpeg_quality is not None]
    assert len(qualities) / DRAWS == pytest.approx(0.2, abs=TOLERANCE)
    assert min(qualities) == 70 and max(qualities) == 100 and np.mean(qualities) == pytest.approx(85, abs=0.5)

    # RandomRotate90(p=0.5) draws k in {0,1,2,3}: an actual rotation 3/8 of the time.
    ks = [d.rotate_k for d in draws if d.rotate_k is not None]
    assert len(ks) / DRAWS == pytest.approx(0.5, abs=TOLERANCE)
    assert sorted(Counter(ks)) == [0, 1, 2, 3]
    assert all(share == pytest.approx(0.25, abs=0.02) for share in np.bincount(ks) / len(ks))
    assert _share(draws, lambda d: bool(d.rotate_k)) == pytest.approx(0.375, abs=TOLERANCE)

    # GaussianBlur((3, 7)): kernels 3 / 5 / 7 with probabilities 0.2 / 0.4 / 0.4.
    kernels = Counter(d.blur_kernel for d in draws if d.blur_kernel is not None)
    blurred = sum(kernels.values())
    assert blurred / DRAWS == pytest.approx(0.2, abs=TOLERANCE)
    assert sorted(kernels) == [3, 5, 7]
    for kernel, share in ((3, 0.2), (5, 0.4), (7, 0.4)):
        assert kernels[kernel] / blurred == pytest.approx(share, abs=0.03)


def _params(**changes) -> AugmentParams:
    base = dict(scale=1.0, hflip=False, vflip=False, alpha=1.0, beta=0.0, jpeg_quality=None, rotate_k=None)
    return AugmentParams(**{**base, "blur_kernel": None, **changes})


def test_applied_steps_do_what_the_authors_transforms_do():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (7, 10, 3), dtype=np.uint8)
    mask = (rng.random((7, 10)) < 0.5).astype(np.uint8)
    # The scaled size is truncated: 7 x 0.85 = 5.95 -> 5, 10 x 0.85 = 8.5 -> 8 (rounding would give 6 x 8).
    assert random_scale_size(7, 10, 0.85) == (5, 8)
    scaled, scaled_mask = apply_augment(image, mask, _params(scale=0.85))
    assert scaled.shape == (5, 8, 3) and scaled_mask.shape == (5, 8)
    # Identity parameters leave the pair untouched; k = 0 is a drawn "rotation" that does nothing.
    same, same_mask = apply_augment(image, mask, _params(rotate_k=0))
    assert np.array_equal(same, image) and np.array_equal(same_mask, mask)
    turned, turned_mask = apply_augment(image, mask, _params(rotate_k=3))
    assert np.array_equal(turned, np.rot90(image, 3)) and np.array_equal(turned_mask, np.rot90(mask, 3))
    # Brightness/contrast: v * alpha + beta * 255, clipped, then truncated to uint8.
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    expected = np.clip(np.arange(256) * 1.05 + 0.03 * 255, 0, 255).astype(np.uint8).reshape(16, 16)
    assert np.abs(brightness_contrast(grey, 1.05, 0.03).astype(int) - expected).max() <= 1
    assert brightness_contrast(grey, 1.05, 0.03)[15, 15] == 255 and brightness_contrast(grey, 0.9, -0.1)[0, 0] == 0
    # JPEG through OpenCV keeps the channel order of the array it was given.
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 200
    out, _ = apply_augment(red, np.zeros((16, 16), np.uint8), _params(jpeg_quality=95))
    assert out[..., 0].mean() > 190 and out[..., 2].mean() < 10


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_training_label_is_rederived_from_the_augmented_mask():
    """A one-pixel edit on a 9 x 9 image: the random down-scale drops it about half of the time."""
    image = np.full((9, 9, 3), 128, np.uint8)
    mask = np.zeros((9, 9, 3), np.uint8)
    mask[8, 8] = 255  # the last pixel: nearest down-scaling never samples it
    sample = Sample("partial/x/fake/a.png", 1, "x", "partial", "memory", lambda: (_png(image), _png(mask)))
    spec = PreprocessSpec(size=16, resize="cv2-linear")
    train = MaskCLIPDataset([sample], spec, train=True, seed=0)
    labels = []
    for epoch in range(40):
        train.set_epoch(epoch)
        item = train[0]
        labels.append(int(item["label"]))
        assert labels[-1] == int(item["mask"].any())
    assert 0 < sum(labels) < len(labels)  # both kinds of draw occurred
    assert int(MaskCLIPDataset([sample], spec)[0]["label"]) == 1  # evaluation keeps the data set's label


def test_nonfinite_gradients_skip_the_step():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]

    model(torch.ones(1, 4)).sum().backward()
    model.bias.grad[0] = float("nan")
    assert optimizer_step(model, optimizer, clip_grad=1.0, skip_nonfinite=True) is False
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert optimizer.state_dict()["state"] == {}  # no moment, no step count
    assert all(p.grad is None for p in model.parameters())

    model(torch.ones(1, 4)).sum().backward()
    assert optimizer_step(model, optimizer, clip_grad=None, skip_nonfinite=True) is True
    assert not any(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))

    model(torch.ones(1, 4)).sum().backward()
    model.weight.grad[0, 0] = float("inf")
    assert optimizer_step(model, optimizer, clip_grad=None, skip_nonfinite=False) is True
    assert not torch.isfinite(model.weight).all()  # what the skip prevents


def test_training_run_skips_a_poisoned_step(tmp_path, monkeypatch):
    import maskclip_core.train as train_module
    from maskclip_core.data.synth import synthesize

    data = synthesize(tmp_path / "synth", 0, 4, 0, ["sd15-like"], 64, 80)
    calls = {"n": 0}
    real_losses = train_module.compute_losses

    def poisoned_first_step(*args):
        losses = real_losses(*args)
        calls["n"] += 1
        if calls["n"] == 1:
            losses["total"] = losses["total"] * float("nan")
        return losses

    monkeypatch.setattr(train_module, "compute_losses", poisoned_first_step)
    args = train_module.TrainArgs(
        data=str(data),
        split="train",
        out=str(tmp_path / "run"),
        config="tiny",
        batch_size=2,
        epochs=1,
        workers=0,
        random_init=True,
    )
    train_module.train(args)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in log] == [1, 1]
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "run" / "last" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
