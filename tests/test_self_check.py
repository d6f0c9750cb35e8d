"""The on-device self-check: canaries travel with the artifact, the runtime runs them on its backend and
refuses an artifact whose numerics changed even when every hash in its manifest matches."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper
from PIL import Image

from maskclip_runtime import cli as run_cli
from maskclip_runtime.contract.artifact import MANIFEST_NAME, ArtifactError, load_artifact, write_manifest
from maskclip_runtime.contract.manifest import BatchSpec, Manifest
from maskclip_runtime.contract.precision_table import PRECISIONS
from maskclip_runtime.detect.detector import Detector
from maskclip_runtime.detect.selfcheck import SelfCheckFailed
from maskclip_runtime.errors import EXIT_VERIFICATION_FAILED
from maskclip_runtime.kernel.host import Host

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def artifact(tiny_export):
    """The fp32 export that tests/test_export_artifacts.py reads too (made once per session)."""
    return tiny_export(batch=BatchSpec.up_to(4))[0]


def _copy(artifact, tmp_path):
    target = tmp_path / "artifact"
    shutil.copytree(artifact, target)
    return target


def _rehash(folder):
    """Rewrite the manifest's file hashes for the folder as it is now (what a careless or hostile edit does)."""
    write_manifest(folder, Manifest.from_dict(json.loads((folder / MANIFEST_NAME).read_text())))


def _perturb_mask_head(folder, factor: float = -1.0):
    """Flip the sign of the mask head's weights: every hash can be redone, the numbers cannot."""
    path = folder / "model.onnx"
    model = onnx.load(str(path))
    heads = [n for n in model.graph.node if n.op_type == "Conv" and "head" in n.name]
    weights = {t.name: t for t in model.graph.initializer}
    tensor = weights[heads[-1].input[1]]
    tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * factor, tensor.name))
    onnx.save(model, str(path))
    _rehash(folder)


def test_manifest_carries_canaries_with_pytorch_outputs_and_the_gate_tolerances(artifact, tiny_model):
    manifest = json.loads((artifact / MANIFEST_NAME).read_text())
    block = manifest["self_check"]
    assert len(block["canaries"]) == 4
    assert block["tolerances"]["max_prob_diff"] == PRECISIONS["fp32"].gate.max_prob_diff
    size = tiny_model.config.image_size
    for canary in block["canaries"]:
        assert canary["image"] in manifest["files"] and canary["mask"] in manifest["files"]  # hashed like graphs
        with Image.open(artifact / canary["image"]) as image:
            assert image.size == (size, size)  # model resolution: no resize on the device
    # The recorded probabilities are PyTorch's for exactly these pixels.
    images = [np.asarray(Image.open(artifact / c["image"]).convert("RGB")) for c in block["canaries"]]
    import torch

    from maskclip_runtime.kernel.preprocess import preprocess_batch

    with torch.no_grad():
        probs = tiny_model(torch.from_numpy(preprocess_batch(images, tiny_model.preprocess_spec())))["fake_prob"]
    np.testing.assert_allclose(probs.numpy(), [c["fake_prob"] for c in block["canaries"]], atol=1e-6)
    total = sum((artifact / name).stat().st_size for name in manifest["files"] if name.startswith("canary/"))
    assert total < 300_000


def test_detector_passes_the_check_then_remembers_it(artifact, tmp_path, monkeypatch):
    monkeypatch.setenv("MASKCLIP_CACHE_DIR", str(tmp_path / "fresh-cache"))
    with Detector(artifact, device="cpu") as detector:
        first = detector.self_check
    assert first.status == "passed" and not first.cached and first.canaries == 4
    assert first.max_prob_diff <= 1e-4
    with Detector(artifact, device="cpu") as detector:
        assert detector.self_check.status == "passed" and detector.self_check.cached
    with Detector(artifact, device="cpu", self_check=False) as detector:
        assert detector.self_check.status == "skipped"


def test_altered_and_rehashed_graph_is_refused(artifact, tmp_path):
    folder = _copy(artifact, tmp_path)
    _perturb_mask_head(folder)
    load_artifact(folder)  # every hash matches: only the numbers give it away
    with pytest.raises(SelfCheckFailed) as caught:
        Detector(folder, device="cpu")
    result = caught.value.result
    assert result.status == "failed" and result.mask_pixel_agreement_min < PRECISIONS["fp32"].gate.min_pixel_agreement
    assert "onnxruntime-cpu" in str(caught.value)


def test_cli_self_check_verdict_and_exit_codes(artifact, tmp_path):
    runner = CliRunner()
    passed = runner.invoke(run_cli.main, ["--self-check", "--model", str(artifact)])
    assert passed.exit_code == 0, passed.output
    assert json.loads(passed.stdout)["status"] == "passed"

    folder = _copy(artifact, tmp_path)
    _perturb_mask_head(folder)
    failed = runner.invoke(run_cli.main, ["--self-check", "--model", str(folder)])
    assert failed.exit_code == EXIT_VERIFICATION_FAILED
    verdict = json.loads(failed.stdout)
    assert verdict["status"] == "failed" and verdict["failures"]

    image = tmp_path / "photo.png"
    Image.fromarray(np.full((40, 30, 3), 120, np.uint8)).save(image)
    refused = runner.invoke(run_cli.main, [str(image), "--model", str(folder), "-q"])
    assert refused.exit_code == EXIT_VERIFICATION_FAILED
    forced = runner.invoke(run_cli.main, [str(image), "--model", str(folder), "-q", "--no-self-check"])
    assert forced.exit_code == 0
    assert json.loads(forced.stdout)["self_check"] == "skipped"


def test_host_requirements_are_alternatives():
    avx2 = Host("x86_64", "cpu", 2, ("avx2", "fma"), True)
    vnni = Host("x86_64", "cpu", 2, ("avx2", "avx512f", "avx512_vnni"), True)
    unknown = Host("arm64", "cpu", 2, (), False)
    need = [["avx512_vnni", "avx_vnni"]]
    assert avx2.missing(need) == need and vnni.missing(need) == [] and unknown.missing(need) == []
    assert not avx2.native_bf16 and Host("x86_64", "c", 2, ("avx512_bf16",), True).native_bf16


def test_legacy_int8_artifact_warns_on_a_cpu_without_vnni_and_strict_refuses(artifact, tmp_path, monkeypatch, caplog):
    import maskclip_runtime.detect.detector as detector_module

    folder = _copy(artifact, tmp_path)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["int8"] = {"scheme": "an int8 graph from before the cpu_features record"}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert load_artifact(folder).cpu_features == [["avx512_vnni", "avx_vnni"]]
    monkeypatch.setattr(detector_module, "current_host", lambda: Host("x86_64", "AVX2 CPU", 2, ("avx2",), True))
    with caplog.at_level("WARNING", logger="maskclip_runtime"), Detector(folder, device="cpu", self_check=False):
        pass
    assert any("avx512_vnni or avx_vnni" in r.getMessage() for r in caplog.records)
    with pytest.raises(ArtifactError):
        Detector(folder, device="cpu", self_check=False, strict=True)
    manifest["int8"]["cpu_features"] = []  # a portable int8 graph assumes nothing
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    with Detector(folder, device="cpu", self_check=False, strict=True):
        pass
