"""Synthetic proxy data set: OpenSDID layout, generator fingerprint, determinism."""

import numpy as np

from maskclip_core.data import load_sample, open_samples
from maskclip_core.data.synth import GENERATORS, render, synthesize


def test_synth_layout_and_determinism(tmp_path):
    a = synthesize(tmp_path / "a", seed=7, train_count=8, test_count=8, generators=["sd15-like", "flux-like"])
    b = synthesize(tmp_path / "b", seed=7, train_count=8, test_count=8, generators=["sd15-like", "flux-like"])
    c = synthesize(tmp_path / "c", seed=8, train_count=8, test_count=0, generators=["sd15-like"])
    for split in ("train", "test"):
        for gen in ("sd15-like", "flux-like"):
            name = f"{split}/{gen}.parquet"
            assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "train/sd15-like.parquet").read_bytes() != (c / "train/sd15-like.parquet").read_bytes()
    samples = open_samples(a, "test")
    assert len(samples) == 16
    kinds = [s.kind for s in samples if s.generator == "sd15-like"]
    assert kinds == ["real"] * 4 + ["partial"] * 3 + ["full"]
    partial = {s.key: s for s in samples}["partial/sd15-like/fake/000004.jpg"]
    image, mask = load_sample(partial)
    assert 0.05 < mask.mean() < 0.5 and mask.shape == image.shape[:2]


def test_render_leaves_a_periodic_trace():
    rng = np.random.default_rng(0)
    flat = np.full((64, 64, 3), 128, np.uint8)
    for gen in GENERATORS.values():
        out = render(flat, gen, rng).astype(np.float32)[..., 0]
        spectrum = np.abs(np.fft.fft2(out - out.mean()))
        peak = np.unravel_index(np.argmax(spectrum), spectrum.shape)
        assert max(peak) > 0 and spectrum.max() > 10 * np.median(spectrum)
