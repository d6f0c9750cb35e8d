"""The cascade topology (screen -> localise): export gate, chain = fused graph, masks only where asked.

One fp32 (dynamic batch) and one int8-cpu (static batch 2) export of `tiny`, shared by the module.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from standin_artifact import build_standin_artifact, sample_photos

from maskclip_export.onnx_export import export_graphs
from maskclip_export.verify import chain_predictor, default_verification_images
from maskclip_runtime import cli
from maskclip_runtime.backends.onnxruntime import OnnxRuntimeRunner
from maskclip_runtime.contract.artifact import load_artifact
from maskclip_runtime.contract.manifest import BatchSpec
from maskclip_runtime.detect.detector import Detector
from maskclip_runtime.kernel.preprocess import preprocess_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def cascade_fp32(tiny_export):
    return tiny_export(topology="cascade", batch=BatchSpec.up_to(4))


@pytest.fixture
def cascade_int8_cpu(tiny_export, calib_folder):
    options = {"calib": str(calib_folder(4)), "calib_count": 4, "batch": BatchSpec.fixed(2)}
    return tiny_export(topology="cascade", precision="int8-cpu", **options)


def six_photos() -> dict[str, Image.Image]:
    """The stand-in's four photos and two mirrored: batches of 4 (or 2) then end with a partial one."""
    photos = sample_photos()
    mirrored = {
        f"{name}-mirrored": photos[name].transpose(Image.Transpose.FLIP_LEFT_RIGHT) for name in list(photos)[:2]
    }
    return photos | mirrored


@pytest.fixture(scope="module")
def photos():
    return list(six_photos().values())


def median_threshold(folder, photos) -> float:
    """A threshold that splits the photos into fake and real halves (random weights judge all alike)."""
    with Detector(folder, backend="onnxruntime", device="cpu") as detector:
        probs = sorted(d.fake_prob for d in detector.detect(photos, masks_for="none"))
    middle = len(probs) // 2
    assert probs[middle - 1] < probs[middle], "photos need distinct probabilities to be split"
    return float((probs[middle - 1] + probs[middle]) / 2)


def count_localise_batches(detector: Detector) -> list[int]:
    """Record the batch size of every call to the cascade's localise graph."""
    runner = detector._runners[-1]
    assert list(runner.output_names) == ["mask"]
    calls: list[int] = []
    infer = runner.infer

    def counted(feed):
        calls.append(len(feed["image"]))
        return infer(feed)

    runner.infer = counted
    return calls


@pytest.mark.parametrize("name", ["cascade_fp32", "cascade_int8_cpu"])
def test_cascade_export_passes_its_gate_and_self_check(name, request):
    out, manifest = request.getfixturevalue(name)
    assert manifest["topology"] == "cascade"
    assert [g["name"] for g in manifest["graphs"]] == ["screen", "localise"]
    screen, localise = manifest["graphs"]
    assert [t["name"] for t in screen["outputs"]] == ["logits", "fake_prob", "clip_maps"]
    assert [t["name"] for t in localise["inputs"]] == ["image", "clip_maps"]
    assert [t["name"] for t in localise["outputs"]] == ["mask"]
    report = manifest["verification"]
    assert report["passed"], report["failures"]
    assert report["flips"] == 0 and report["images"] >= 64
    if manifest["precision"] == "fp32":
        assert report["max_prob_diff"] <= 1e-4 and report["outputs"]["mask"]["max_abs"] <= 1e-3
    assert len(manifest["self_check"]["canaries"]) == 4
    with Detector(out, backend="onnxruntime", device="cpu") as detector:  # runs the canaries through the chain
        assert detector.self_check.passed and detector.cascade
    assert load_artifact(out).graphs[0].name == "screen"


def test_chained_screen_and_localise_equal_the_fused_graph(cascade_fp32, tiny_model, tmp_path):
    out, _ = cascade_fp32
    fused_path = export_graphs(tiny_model, tmp_path, "fused", BatchSpec.up_to(4), 17)["fused"]
    images = preprocess_batch([image for _, image in default_verification_images()[:4]], tiny_model.preprocess_spec())
    artifact = load_artifact(out)
    cascade_runners = [OnnxRuntimeRunner(artifact.file(g.file), threads=1) for g in artifact.graphs]
    fused_runner = OnnxRuntimeRunner(fused_path, threads=1)
    chained = chain_predictor(cascade_runners)(images)
    fused = fused_runner.infer({"image": images})
    for name in ("logits", "fake_prob", "mask"):
        np.testing.assert_allclose(chained[name], fused[name], atol=2e-6, err_msg=name)


def test_masks_for_fake_keeps_verdicts_and_localises_only_the_fakes(cascade_fp32, photos):
    out, _ = cascade_fp32
    threshold = median_threshold(out, photos)
    with Detector(out, backend="onnxruntime", device="cpu", threshold=threshold, batch=4) as detector:
        calls = count_localise_batches(detector)
        full = detector.detect(photos, masks_for="all")
        assert calls == [4, len(photos) - 4]  # every image, in the detector's batches
        calls.clear()
        selective = detector.detect(photos, masks_for="fake")
        fakes = [i for i, d in enumerate(full) if d.verdict == "fake"]
        assert 0 < len(fakes) < len(photos)
        # only each batch's fake sub-batch reached the localise graph
        per_batch = [sum(1 for i in fakes if start <= i < start + 4) for start in range(0, len(photos), 4)]
        assert calls == [n for n in per_batch if n]
        calls.clear()
        verdict_only = detector.detect(photos, masks_for="none")
        assert calls == []
    for a, b, c in zip(full, selective, verdict_only, strict=True):
        assert a.fake_prob == b.fake_prob == c.fake_prob  # bit-identical: the same screen run
        assert a.verdict == b.verdict == c.verdict
        assert a.mask_computed and not c.mask_computed and c.mask is None and c.mask_fraction is None
        assert b.mask_computed == (b.verdict == "fake")
        if b.mask_computed:
            np.testing.assert_allclose(b.model_mask, a.model_mask, atol=1e-5)
            assert b.mask.shape == (b.height, b.width)
        else:
            assert b.mask is None and b.mask_fraction is None


def test_static_batch_pads_the_localised_sub_batch(cascade_int8_cpu, photos):
    out, _ = cascade_int8_cpu
    threshold = median_threshold(out, photos)
    with Detector(out, backend="onnxruntime", device="cpu", threshold=threshold) as detector:
        assert detector.batch_size == 2
        full = detector.detect(photos, masks_for="all")
        calls = count_localise_batches(detector)
        selective = detector.detect(photos, masks_for="fake")
    fakes = sum(d.verdict == "fake" for d in full)
    pairs_with_a_fake = sum(any(d.verdict == "fake" for d in full[i : i + 2]) for i in range(0, len(full), 2))
    assert calls == [2] * pairs_with_a_fake  # a lone fake is padded to the graph's fixed batch
    assert sum(d.mask_computed for d in selective) == fakes
    for a, b in zip(full, selective, strict=True):
        assert a.fake_prob == b.fake_prob
        if b.mask_computed:
            # int8-cpu scales activations per call, so a mask depends slightly on its batch mates (README)
            np.testing.assert_allclose(b.model_mask, a.model_mask, atol=0.05)


def test_masks_for_on_a_single_graph_artifact_only_drops_masks(tmp_path, photos):
    folder = build_standin_artifact(tmp_path / "fused", "fused")
    threshold = median_threshold(folder, photos)
    with Detector(folder, backend="onnxruntime", device="cpu", threshold=threshold) as detector:
        assert not detector.cascade
        full = detector.detect(photos)
        selective = detector.detect(photos, masks_for="fake")
        with pytest.raises(ValueError):
            detector.detect(photos, masks_for="some")
    for a, b in zip(full, selective, strict=True):
        assert a.fake_prob == b.fake_prob and b.mask_computed == (a.verdict == "fake")
        if b.mask_computed:
            np.testing.assert_array_equal(a.mask, b.mask)


def test_a_threshold_just_below_a_probability_gives_fake_and_its_mask(tmp_path, photos):
    folder = build_standin_artifact(tmp_path / "fused", "fused")
    with Detector(folder, backend="onnxruntime", device="cpu") as detector:
        prob = detector.detect(photos[:1], masks_for="none")[0].fake_prob
    threshold = float(np.nextafter(prob, -np.inf))  # in float32 it rounds back up to prob itself
    assert np.float32(threshold) == np.float32(prob)
    with Detector(folder, backend="onnxruntime", device="cpu", threshold=threshold) as detector:
        [detection] = detector.detect(photos[:1], masks_for="fake")
    assert detection.verdict == "fake" and detection.mask_computed


# ---- maskclip-run --masks-for


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for name, image in six_photos().items():
        image.save(folder / f"{name}.png")
    return folder


def run_cli(*args) -> tuple[int, list[dict]]:
    result = CliRunner().invoke(cli.main, [str(a) for a in args])
    return result.exit_code, [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_cli_masks_for_default_and_choices(cascade_fp32, photo_dir, photos, tmp_path):
    out, _ = cascade_fp32
    threshold = median_threshold(out, photos)
    common = ("--model", out, "--threshold", threshold, "-q")
    code, default = run_cli(photo_dir, *common)
    assert code == 0 and len(default) == len(photos)
    assert all(r["mask_computed"] == (r["verdict"] == "fake") for r in default)  # default: fake
    assert all((r["mask_fraction"] is None) != r["mask_computed"] for r in default)
    assert any(r["mask_computed"] for r in default) and not all(r["mask_computed"] for r in default)

    code, with_masks = run_cli(photo_dir, *common, "--masks", tmp_path / "all")
    assert code == 0 and all(r["mask_computed"] and r["mask"] for r in with_masks)  # files asked: all
    assert [r["fake_prob"] for r in with_masks] == [r["fake_prob"] for r in default]

    code, fake_only = run_cli(photo_dir, *common, "--masks-for", "fake", "--masks", tmp_path / "fake")
    assert code == 0
    written = {p.name for p in (tmp_path / "fake").iterdir()}
    assert written == {f"{r['path'].rsplit('/', 1)[-1].rsplit('.', 1)[0]}_mask.png" for r in fake_only if r["mask"]}
    assert all((r["mask"] is not None) == (r["verdict"] == "fake") for r in fake_only)

    code, none = run_cli(photo_dir, *common, "--masks-for", "none")
    assert code == 0 and not any(r["mask_computed"] for r in none)
    assert [r["verdict"] for r in none] == [r["verdict"] for r in default]

    assert run_cli(photo_dir, *common, "--masks-for", "none", "--overlays", tmp_path / "o")[0] == 2
    assert run_cli(photo_dir, *common, "--masks-for", "most")[0] == 2
    assert not (tmp_path / "o").exists()


def test_export_cli_refuses_split_with_cascade(tmp_path):
    from maskclip_export import cli as export_cli
    from maskclip_runtime.errors import EXIT_USAGE

    result = CliRunner().invoke(export_cli.main, ["--config", "tiny", "--split", "--cascade", "--out", tmp_path / "a"])
    assert result.exit_code == EXIT_USAGE and not (tmp_path / "a").exists()
