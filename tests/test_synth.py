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


def test_folder_layout_holds_the_same_samples_as_the_parquet_files(tmp_path):
    options = {"seed": 3, "train_count": 0, "test_count": 8, "generators": ["sd15-like", "sdxl-like"]}
    parquet = synthesize(tmp_path / "p", layout="parquet", **options)
    folder = synthesize(tmp_path / "f", layout="folder", **options)
    assert not list((folder / "test").glob("*.parquet")) and not (parquet / "test" / "real").exists()
    from_parquet = {s.key: s for s in open_samples(parquet, "test")}
    from_folder = {s.key: s for s in open_samples(folder, "test")}
    assert sorted(from_folder) == sorted(from_parquet) and len(from_folder) == 16
    for key, sample in from_parquet.items():
        other = from_folder[key]
        assert (other.label, other.generator, other.kind) == (sample.label, sample.generator, sample.kind)
        for a, b in zip(load_sample(sample), load_sample(other), strict=True):
            np.testing.assert_array_equal(a, b)


def test_synth_command_writes_both_layouts_for_every_reader(tmp_path):
    from click.testing import CliRunner

    from maskclip_core.cli import synth
    from maskclip_runtime.kernel.inputs import images_in_folder

    out = tmp_path / "s"
    args = ["--out", str(out), "--count", "0", "--test-count", "8", "--generators", "flux-like"]
    result = CliRunner().invoke(synth, args)
    assert result.exit_code == 0, result.output
    assert (out / "test" / "flux-like.parquet").is_file()
    assert len(open_samples(out, "test")) == 8
    # Folders of images, as maskclip-run, maskclip-serve and export's --calib list them; no mask among them.
    reals, fakes = images_in_folder(out / "test" / "real"), images_in_folder(out / "test" / "fake")
    assert (len(reals), len(fakes)) == (4, 4)
    assert all(path.endswith(".jpg") for path in reals + fakes)
    assert CliRunner().invoke(synth, [*args, "--layout", "tar"]).exit_code == 2
