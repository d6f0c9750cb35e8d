"""The one pipeline: maskclip-run and maskclip-serve give the same record for the same image, field by field
(timing excepted), including an image that fails and a large JPEG that both decode at reduced size."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("fastapi", reason="maskclip-serve needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx (dev extra)")

from fastapi.testclient import TestClient  # noqa: E402
from serve_process import EXAMPLES, wait_until  # noqa: E402

from maskclip_runtime import cli  # noqa: E402
from maskclip_runtime.detect.detector import DEMO_DIR, Detector  # noqa: E402
from maskclip_runtime.kernel import preprocess  # noqa: E402
from maskclip_runtime.pipeline.steps import Plan, Upload, answer, decode  # noqa: E402
from maskclip_runtime.present.image_sinks import InlineImages  # noqa: E402
from maskclip_runtime.serve.app import ServeSettings, create_app  # noqa: E402

TIMING_FIELDS = {"ms"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[Path]:
    """The demo's examples, a large JPEG (decoded at reduced size by both front ends) and a file that is no image."""
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(7)
    large = folder / "large.jpg"
    pixels = np.kron(rng.integers(0, 256, (50, 50, 3), dtype=np.uint8), np.ones((32, 32, 1), np.uint8))
    Image.fromarray(pixels).save(large, quality=90)  # 1600 x 1600
    broken = folder / "notes.jpg"
    broken.write_bytes(b"these are notes, not a photo")
    return [*EXAMPLES, large, broken]


@pytest.fixture()
def large_is_small(monkeypatch):
    # "Large" = over 100k pixels for this test, so the 1600 px JPEG takes the reduced decode (1/2 scale).
    monkeypatch.setattr(preprocess, "LARGE_IMAGE_PIXELS", 100_000)


def run_records(paths: list[Path], out: Path, masks_for: str) -> list[dict]:
    result = CliRunner().invoke(
        cli.main,
        [*map(str, paths), "--json", str(out), "--masks-for", masks_for, "--backend", "onnxruntime", "-q"]
        + ["--device", "cpu"],
    )
    assert result.exit_code == 1, result.stderr  # the broken file fails, the rest is answered
    return [json.loads(line) for line in out.read_text().splitlines()]


def without_timing(record: dict) -> dict:
    return {key: value for key, value in record.items() if key not in TIMING_FIELDS}


@pytest.mark.parametrize("masks_for", ["fake", "all"])
def test_maskclip_run_and_the_server_give_the_same_records(inputs, tmp_path, large_is_small, masks_for):
    expected = run_records(inputs, tmp_path / "run.jsonl", masks_for)
    assert [r["path"] for r in expected] == list(map(str, inputs))
    app = create_app(lambda: Detector(DEMO_DIR, backend="onnxruntime", device="cpu"), ServeSettings(max_wait_ms=1))
    with TestClient(app) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200)
        files = [("files", (str(p), p.read_bytes(), "image/jpeg")) for p in inputs]
        batch = client.post(f"/v1/detect/batch?masks_for={masks_for}", files=files)
        singles = [
            client.post(f"/v1/detect?masks_for={masks_for}", files={"file": (str(p), p.read_bytes())})
            for p in inputs[:-1]
        ]
        refused = client.post("/v1/detect", files={"file": (str(inputs[-1]), inputs[-1].read_bytes())})
    assert batch.status_code == 200
    assert [without_timing(r) for r in batch.json()["records"]] == [without_timing(r) for r in expected]
    assert [without_timing(r.json()) for r in singles] == [without_timing(r) for r in expected[:-1]]
    assert (refused.status_code, refused.json()["error"]) == (415, expected[-1]["error"])
    large = expected[len(EXAMPLES)]
    assert (large["width"], large["height"]) == (1600, 1600)


def test_a_worker_answers_a_batch_with_the_plain_runs_records(inputs, tmp_path, large_is_small):
    """The per-batch step a distributed worker runs: decoded Items (made without a Detector) -> records."""
    expected = run_records(inputs, tmp_path / "run.jsonl", "fake")
    with Detector(DEMO_DIR, backend="onnxruntime", device="cpu") as detector:
        plan = Plan("fake")
        items = [decode(str(p), detector.artifact.preprocess, plan) for p in inputs]
        records = answer(detector, items, plan, InlineImages())
    assert [without_timing(r) for r in records] == [without_timing(r) for r in expected]


def test_an_upload_and_the_same_file_decode_alike(inputs, large_is_small):
    spec = Detector(DEMO_DIR, backend="onnxruntime", device="cpu", self_check=False).artifact.preprocess
    for path in inputs:
        plan = Plan(full_size=path.name == "large.jpg")
        from_file, from_bytes = decode(str(path), spec, plan), decode(Upload(str(path), path.read_bytes()), spec, plan)
        assert (from_file.sha256, from_file.error) == (from_bytes.sha256, from_bytes.error)
        if from_file.error is None:
            np.testing.assert_array_equal(from_file.prepared.tensor, from_bytes.prepared.tensor)
            assert (from_file.image is None) == (not plan.full_size) == (from_bytes.image is None)
    assert os.path.basename(inputs[-1]) == "notes.jpg" and from_file.unknown_format


def test_a_failed_forward_pass_gives_the_same_error_records(inputs, tmp_path, monkeypatch):
    """maskclip-run and /v1/detect/batch both answer a failed forward pass with an error record per image."""

    def broken(self, prepared, masks_for="all"):
        raise RuntimeError("CUDA error: an illegal memory access\nmore lines")

    monkeypatch.setattr(Detector, "detect_prepared", broken)
    expected = run_records(inputs, tmp_path / "run.jsonl", "fake")
    app = create_app(lambda: Detector(DEMO_DIR, backend="onnxruntime", device="cpu", self_check=False))
    with TestClient(app) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200)
        files = [("files", (str(p), p.read_bytes(), "image/jpeg")) for p in inputs]
        batch = client.post("/v1/detect/batch", files=files)
        single = client.post("/v1/detect", files={"file": (str(inputs[0]), inputs[0].read_bytes())})
    assert batch.status_code == 200 and batch.json()["records"] == expected
    assert all(set(r) == {"path", "error"} for r in expected)
    assert single.status_code == 500 and single.json()["error"] == expected[0]["error"].split(": ", 1)[1]


def test_uri_inputs_read_through_pyarrow_give_the_files_records(inputs, tmp_path, large_is_small):
    """file:// URIs (the pyarrow file system the others share code with): a folder is listed recursively for
    images (hidden ones and sidecars skipped), a missing file is its error record, an unknown scheme is refused."""
    pytest.importorskip("pyarrow", reason="URI inputs need pyarrow (the ray extra)")
    folder = tmp_path / "tree"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.jpg").write_bytes(EXAMPLES[0].read_bytes())
    (folder / ".hidden.jpg").write_bytes(EXAMPLES[1].read_bytes())
    (folder / "notes.txt").write_text("a sidecar")
    expected = run_records([*inputs[:1], folder / "sub" / "a.jpg", inputs[-1]], tmp_path / "files.jsonl", "fake")
    uris = [f"file://{inputs[0]}", f"file://{folder}/", f"file://{tmp_path}/missing.jpg"]
    result = CliRunner().invoke(cli.main, [*uris, "--json", str(tmp_path / "uris.jsonl"), "-q", "--device", "cpu"])
    assert result.exit_code == 1, result.stderr
    records = [json.loads(line) for line in (tmp_path / "uris.jsonl").read_text().splitlines()]
    assert [r["path"] for r in records] == [uris[0], f"file://{folder}/sub/a.jpg", uris[2]]
    for got, want in zip(records[:2], expected[:2], strict=True):
        assert {k: v for k, v in without_timing(got).items() if k != "path"} == {
            k: v for k, v in without_timing(want).items() if k != "path"
        }
    assert records[2]["error"] == f"{uris[2]}: no such file"
    refused = CliRunner().invoke(cli.main, ["nosuchscheme://bucket/x.jpg", "-q", "--device", "cpu"])
    assert refused.exit_code == 2 and "nosuchscheme://bucket/x.jpg" in refused.stderr
