"""maskclip-bench on what exists: artifact folders, their manifest.json and engine files are timed as they
are (no export, no engine build) with their recorded precision and gate; every argument is checked before
any measurement; and model-only <= end-to-end in every row, the torch row included."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import trt_standin
from click.testing import CliRunner

import maskclip_bench.artifacts as bench_artifacts
import maskclip_bench.cli as bench_cli
import maskclip_runtime.backends.tensorrt as tensorrt_backend
from maskclip_bench.artifacts import export_artifact
from maskclip_bench.timing import time_calls_and_part
from maskclip_core.model import build_model
from maskclip_runtime.contract.artifact import MANIFEST_NAME
from maskclip_runtime.errors import EXIT_USAGE

pytestmark = [pytest.mark.torch, pytest.mark.usefixtures("one_torch_thread")]
SHORT = ["--warmup", "1", "--iters", "2", "--pairs", "0", "--no-profile"]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """tiny fp32, batches 1..2, through the benchmark's own export (gate included)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("exported")
    export_artifact(build_model("tiny").eval(), "fp32", folder / "tiny-fp32", 2, folder)
    return folder / "tiny-fp32"


@pytest.fixture
def no_measuring(monkeypatch):
    """The GEMM ceilings are the first measurement; exports and engine builds are not what these rows do."""
    ceilings = []
    monkeypatch.setattr(bench_cli, "measure_ceilings", lambda device: ceilings.append(device) or [])

    def no_export(*_, **__):
        raise AssertionError("an existing artifact was exported again")

    monkeypatch.setattr(bench_artifacts, "export_artifact", no_export)
    return ceilings


def _bench(*args) -> tuple[int, dict | None, str]:
    result = CliRunner().invoke(bench_cli.main, [*map(str, args)])
    return result.exit_code, json.loads(result.stdout) if result.exit_code == 0 else None, result.output


def _assert_model_only_within_end_to_end(rows):
    for row in rows:
        assert row["status"] == "ok", row
        for stat in ("p50", "p90", "p99", "mean"):
            assert row["model_ms"][stat] <= row["e2e_ms"][stat], (row["backend"], row["batch"], stat)


def test_an_artifact_folder_is_timed_as_it_is_with_its_gate(artifact, tmp_path, no_measuring):
    status, report, output = _bench(artifact, *SHORT, "--batch-sizes", "1,2", "--workdir", tmp_path, "--json", "-")
    assert status == 0, output
    rows = report["rows"]
    assert [(r["backend"], r["batch"]) for r in rows] == [("ort-fp32", 1), ("ort-fp32", 2)]
    recorded = json.loads((artifact / MANIFEST_NAME).read_text())["verification"]
    assert rows[0]["parity"]["passed"] is recorded["passed"] is True
    assert rows[0]["parity"]["max_prob_diff"] == recorded["max_prob_diff"]
    assert rows[0]["artifact"] == str(artifact)
    _assert_model_only_within_end_to_end(rows)
    assert list(tmp_path.iterdir()) == [tmp_path / "images"]  # nothing exported


def test_its_manifest_and_the_default_batch_sizes_within_its_range(artifact, tmp_path, no_measuring):
    status, report, output = _bench(artifact / MANIFEST_NAME, *SHORT, "--workdir", tmp_path, "--json", "-")
    assert status == 0, output
    assert [r["batch"] for r in report["rows"]] == [1]  # the default 1,8: 8 is outside its 1..2
    assert report["rows"][0]["model"] == artifact.name and report["models"][0]["name"] == artifact.name


def test_an_engine_file_is_timed_on_its_engine(artifact, tmp_path, monkeypatch, no_measuring):
    from maskclip_export.tensorrt import build_engines

    trt_standin.install(monkeypatch, "10.3.0")
    monkeypatch.setattr(tensorrt_backend, "TensorRTRunner", trt_standin.onnx_engine_runner())
    folder = shutil.copytree(artifact, tmp_path / "with-engine")
    (engine,) = build_engines(folder, log=lambda _: None)
    status, report, output = _bench(folder / engine.file, *SHORT, "--workdir", tmp_path / "w", "--json", "-")
    assert status == 0, output
    rows = report["rows"]
    assert [(r["backend"], r["batch"]) for r in rows] == [("trt-fp32", 1)]
    assert rows[0]["ran_on"].startswith("tensorrt") and rows[0]["parity"]["passed"] is True
    assert tensorrt_backend.TensorRTRunner.opened[-1][0] == engine.file
    _assert_model_only_within_end_to_end(rows)
    # The whole folder: its graph and its engine.
    status, report, output = _bench(folder, *SHORT, "--workdir", tmp_path / "w", "--json", "-")
    assert status == 0, output
    assert sorted(r["backend"] for r in report["rows"]) == ["ort-fp32", "trt-fp32"]


def _corrupt_manifest(artifact, tmp_path):
    folder = shutil.copytree(artifact, tmp_path / "corrupt")
    (folder / MANIFEST_NAME).write_text('{"format": "maskclip-artifact", "format_version": 2, "graphs": 3}')
    return folder


def _stray_engine(artifact, tmp_path):
    from maskclip_runtime.contract.engine_header import write_engine

    folder = shutil.copytree(artifact, tmp_path / "stray")
    built = {"tensorrt_version": "10.3.0", "gpu_name": "x", "compute_capability": "8.0", "precision": "fp32"}
    write_engine(folder / "other.fp32.engine", {**built, "profile": {}}, b"plan")
    return folder / "other.fp32.engine"


@pytest.mark.parametrize(
    ("make", "extra"),
    [
        (lambda a, t: t / "nothing-here", []),  # no such path
        (lambda a, t: (t / "empty").mkdir() or t / "empty", []),  # neither artifact nor checkpoint
        (_corrupt_manifest, []),
        (_stray_engine, []),  # an engine its folder's manifest does not list
        (lambda a, t: (t / "bare.engine").write_bytes(b"plan") or t / "bare.engine", []),  # no sidecar
        (lambda a, t: a, ["--backends", "trt-fp16,ort-int8"]),  # rows it does not have
        (lambda a, t: a, ["--batch-sizes", "1,8"]),  # a batch its graphs do not take
        (lambda a, t: a, ["--backends", "tflite"]),
    ],
)
def test_every_argument_is_checked_before_any_measurement(artifact, tmp_path, no_measuring, make, extra):
    target = make(artifact, tmp_path)
    status, _, output = _bench(target, *extra, "--workdir", tmp_path / "w")
    assert status == EXIT_USAGE, output
    assert "Traceback" not in output and sum("error" in line.lower() for line in output.splitlines()) == 1, output
    assert no_measuring == []  # refused before the GEMM ceilings
    assert not (tmp_path / "w").exists()


def test_model_only_never_exceeds_end_to_end_in_a_short_torch_run(tmp_path, no_measuring):
    torch.manual_seed(0)
    status, report, output = _bench(
        "tiny", "--backends", "torch", "--batch-sizes", "1,2", "--warmup", "0", "--iters", "3", "--pairs", "0",
        "--workdir", tmp_path, "--json", "-",
    )  # fmt: skip
    assert status == 0, output
    assert len(report["rows"]) == 2
    _assert_model_only_within_end_to_end(report["rows"])


def test_the_part_is_timed_inside_its_call():
    calls = []

    def call():
        calls.append(1)
        return 5.0 if len(calls) > 2 else 1e9  # the warm-up's figures are not kept

    whole, part = time_calls_and_part(call, warmup=2, iters=3)
    assert len(calls) == 5 and part == [5.0, 5.0, 5.0] and len(whole) == 3


def test_the_cascade_benchmark_refuses_an_artifact_it_cannot_re_export(artifact):
    from maskclip_bench import cascade_bench

    result = CliRunner().invoke(cascade_bench.main, [str(artifact)])
    assert result.exit_code == EXIT_USAGE and "Traceback" not in result.output
