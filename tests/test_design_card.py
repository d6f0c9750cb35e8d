"""The design card's commands as written: `maskclip-export --fp16 --trt` (TensorRT stand-in) and
`maskclip-run image.jpg` against the artifact it wrote, on its engine and on its ONNX graph; and the
precision shorthands (--fp16, --int8, ...) as spellings of --precision, refused when they disagree."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import trt_standin
from click.testing import CliRunner

import maskclip_runtime.backends.tensorrt as tensorrt_backend
from maskclip_export import cli as export_cli
from maskclip_runtime import cli as run_cli
from maskclip_runtime.contract.artifact import load_artifact
from maskclip_runtime.contract.precision_table import DEFAULT_PRECISION, PRECISIONS
from maskclip_runtime.errors import EXIT_USAGE

pytestmark = [pytest.mark.torch, pytest.mark.usefixtures("one_torch_thread")]

EXAMPLE = Path(run_cli.__file__).parent / "demo" / "examples" / "partially_edited.jpg"


def test_every_non_default_precision_row_has_its_shorthand_in_help():
    assert set(export_cli.SHORTHANDS) == set(PRECISIONS) - {DEFAULT_PRECISION}
    text = CliRunner().invoke(export_cli.main, ["--help"]).output
    for name in export_cli.SHORTHANDS:
        assert f"--{name} " in text and f"Same as --precision {name}." in text
    assert "--precision [" in text


@pytest.mark.parametrize(
    "flags",
    [["--fp16", "--int8"], ["--int8", "--int8-cpu"], ["--fp16", "--precision", "int8"],
     ["--precision", "fp32", "--int8-cpu"], ["--int8-cpu", "--trt"]],
)  # fmt: skip
def test_disagreeing_precision_flags_are_refused_before_any_work(flags, tmp_path, monkeypatch):
    def no_model(*_):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(export_cli, "load_source", no_model)
    result = CliRunner().invoke(export_cli.main, [*flags, "--out", str(tmp_path / "a"), "--calib", str(tmp_path)])
    assert result.exit_code == EXIT_USAGE, result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    ("given", "shorthands", "expected"),
    [([], [], "fp32"), (["fp16"], [], "fp16"), ([], ["int8"], "int8"), (["int8-cpu"], ["int8-cpu"], "int8-cpu")],
)
def test_a_shorthand_is_the_same_choice_as_its_precision(given, shorthands, expected):
    precision = given[0] if given else DEFAULT_PRECISION
    assert export_cli.chosen_precision(precision, bool(given), shorthands) == expected


def _run(*args) -> tuple[int, list[dict]]:
    result = CliRunner().invoke(run_cli.main, [*map(str, args), "--quiet"])
    return result.exit_code, [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_the_design_cards_commands_as_written(tmp_path, monkeypatch):
    trt_standin.install(monkeypatch, "10.3.0")
    monkeypatch.setattr(tensorrt_backend, "TensorRTRunner", trt_standin.onnx_engine_runner())
    monkeypatch.chdir(tmp_path)
    shutil.copy(EXAMPLE, tmp_path / "image.jpg")

    exported = CliRunner().invoke(export_cli.main, ["--fp16", "--trt", "--out", "a"])
    assert exported.exit_code == 0, exported.output
    artifact = load_artifact(tmp_path / "a")
    assert artifact.precision == "fp16"
    assert [engine.precision for engine in artifact.manifest.engines] == ["fp16"]
    assert artifact.manifest.engine_verification["passed"]

    status, on_engine = _run("image.jpg", "--model", "a")  # auto: the engine (TensorRT is "installed")
    assert status == 0
    assert tensorrt_backend.TensorRTRunner.opened[-1][0] == artifact.manifest.engines[0].file
    status, on_onnx = _run("image.jpg", "--model", "a", "--backend", "onnxruntime")
    assert status == 0
    assert len(on_engine) == len(on_onnx) == 1
    assert on_engine[0]["backend"].startswith("tensorrt") and on_onnx[0]["backend"].startswith("onnxruntime")
    assert on_engine[0]["fake_prob"] == pytest.approx(on_onnx[0]["fake_prob"], abs=1e-6)


def test_trt_compat_needs_trt_and_is_refused_on_jetson_before_any_work(tmp_path, monkeypatch):
    from maskclip_export import tensorrt as export_tensorrt

    def no_model(*_):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(export_cli, "load_source", no_model)
    out = str(tmp_path / "a")
    result = CliRunner().invoke(export_cli.main, ["--fp16", "--trt-compat", "version", "--out", out])
    assert result.exit_code == EXIT_USAGE and "Traceback" not in result.output
    monkeypatch.setattr(export_tensorrt, "on_jetson", lambda: True)
    result = CliRunner().invoke(export_cli.main, ["--fp16", "--trt", "--trt-compat", "hardware", "--out", out])
    assert result.exit_code == EXIT_USAGE and "Jetson" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "a").exists()


def test_a_portable_engine_runs_and_passes_its_self_check_on_another_gpu_and_tensorrt(tmp_path, monkeypatch):
    trt_standin.install(monkeypatch, "10.3.0", trt_standin.FakeCudart(gpu=("NVIDIA A100-SXM4-80GB", 8, 0)))
    monkeypatch.setattr(tensorrt_backend, "TensorRTRunner", trt_standin.onnx_engine_runner(check_target=True))
    out = str(tmp_path / "a")
    flags = ["--fp16", "--trt", "--trt-compat", "version", "--trt-compat", "hardware", "--out", out, "--quiet"]
    exported = CliRunner().invoke(export_cli.main, flags)
    assert exported.exit_code == 0, exported.output
    assert load_artifact(out).manifest.engines[0].compat == ("hardware", "version")

    # Another machine: a newer TensorRT 10 on an H100.
    trt_standin.install(monkeypatch, "10.8.0", trt_standin.FakeCudart(gpu=("NVIDIA H100 80GB HBM3", 9, 0)))
    result = CliRunner().invoke(run_cli.main, ["--self-check", "--model", out, "--backend", "tensorrt", "--quiet"])
    assert result.exit_code == 0, result.output
    verdict = json.loads(result.stdout)
    assert verdict["status"] == "passed" and verdict["backend"].startswith("tensorrt")
    # A TensorRT 11 there is outside what a version-compatible TensorRT 10 engine promises.
    trt_standin.install(monkeypatch, "11.4.0", trt_standin.FakeCudart(gpu=("NVIDIA H100 80GB HBM3", 9, 0)))
    result = CliRunner().invoke(run_cli.main, ["--self-check", "--model", out, "--backend", "tensorrt", "--quiet"])
    assert result.exit_code == 4, result.output
