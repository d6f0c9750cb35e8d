"""The backend registry (runtime/backends/registry.py): what is registered, what "auto" picks, what every
front end lists, `maskclip-info --backends`, and backends refused before any work. No torch."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
import types

import click
import pytest
import trt_standin
from click.testing import CliRunner
from console_scripts import run_without_torch
from standin_artifact import build_standin_artifact

from maskclip_runtime.backends import registry
from maskclip_runtime.backends.base import Backend
from maskclip_runtime.backends.onnxruntime import OnnxRuntimeRunner
from maskclip_runtime.backends.tensorrt import TensorRTBackend
from maskclip_runtime.contract.precision_table import PRECISIONS
from maskclip_runtime.detect.detector import Detector
from maskclip_runtime.errors import EXIT_BACKEND_UNAVAILABLE, BackendUnavailable


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return build_standin_artifact(tmp_path_factory.mktemp("registry") / "fused", "fused")


class _Recorded(Backend):
    """A backend of the test: ONNX Runtime runners under another name; `problem` is what its probe says."""

    short = "rec"

    def __init__(self, name: str, rank: int, problem: str | None = None, gpu_only: bool = False):
        self.name, self.rank, self.problem, self.gpu_only = name, rank, problem, gpu_only

    def probe(self) -> str | None:
        return self.problem

    def runners(self, artifact, device, threads):
        runners = [OnnxRuntimeRunner(artifact.file(g.file), device="cpu") for g in artifact.graphs]
        for runner in runners:
            runner.backend = self.name
        return runners


def _with_rows(monkeypatch, *names: str) -> None:
    """The second half of adding a backend: the precision table's fp32 row lets it run fp32 artifacts."""
    row = PRECISIONS["fp32"]
    monkeypatch.setitem(PRECISIONS, "fp32", dataclasses.replace(row, backends=(*row.backends, *names)))


def _registered(monkeypatch, *extra: Backend) -> None:
    """The registry with `extra` backends declared beside the real ones, as a new module's BACKEND would be."""
    table = {**registry.backends(), **{b.name: b for b in extra}}
    ordered = dict(sorted(table.items(), key=lambda item: (item[1].rank, item[0])))
    monkeypatch.setattr(registry, "backends", lambda: ordered)
    _with_rows(monkeypatch, *(b.name for b in extra))


def test_every_backend_module_declares_one_backend_and_the_choices_are_the_registry():
    declared = registry.backends()
    assert sorted(declared) == sorted(registry.BACKEND_MODULES)
    assert list(declared) == ["tensorrt", "onnxruntime", "openvino"]  # by rank: 10, 20, 30
    assert registry.choices() == ("auto", *declared)
    ranks = [b.rank for b in declared.values()]
    assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks)
    for name, backend in declared.items():
        assert backend.name == name and backend.short and backend.packages
        assert isinstance(backend.probe(), str | None)


@pytest.fixture
def fresh_registry():
    registry.backends.cache_clear()
    yield
    registry.backends.cache_clear()


def test_a_new_backend_is_one_module_in_the_map(artifact, monkeypatch, fresh_registry):
    """What the OpenVINO module will do: declare BACKEND in a module of the package, name it in BACKEND_MODULES."""
    module = types.ModuleType("maskclip_runtime.backends.recorded")
    module.BACKEND = _Recorded("recorded", 15)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(registry, "BACKEND_MODULES", (*registry.BACKEND_MODULES, "recorded"))
    _with_rows(monkeypatch, "recorded")
    assert registry.choices() == ("auto", "tensorrt", "recorded", "onnxruntime", "openvino")
    assert [row["name"] for row in registry.availability()] == ["tensorrt", "recorded", "onnxruntime", "openvino"]
    assert Detector(artifact, backend="auto", device="cpu", self_check=False).backend == "recorded"


def test_front_ends_list_the_registered_backends():
    from maskclip_bench.backends import RUNTIME_PREFIXES
    from maskclip_export.triton import main as triton_main
    from maskclip_runtime.cli import main as run_main
    from maskclip_runtime.serve.cli import main as serve_main

    def choices(command: click.Command, option: str) -> tuple[str, ...]:
        return tuple(next(p for p in command.params if p.name == option).type.choices)

    assert choices(run_main, "backend") == choices(serve_main, "backend") == registry.choices()
    served = tuple(name for name, backend in registry.backends().items() if backend.triton_platform)
    assert choices(triton_main, "backend") == ("auto", *served)
    assert {b.name: b.short for b in registry.backends().values()} == RUNTIME_PREFIXES


def test_declaring_imports_no_backend_library():
    code = (
        "import sys; from maskclip_runtime.backends import registry; registry.backends(); registry.choices();"
        "print(sorted(m for m in ('onnxruntime', 'tensorrt', 'cuda') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def test_unknown_backend_names_the_known_ones(artifact):
    with pytest.raises(ValueError, match="use one of auto, tensorrt, onnxruntime"):
        Detector(artifact, backend="tflite")


def test_auto_takes_the_lowest_rank_that_can_run_here(artifact, monkeypatch):
    _registered(monkeypatch, _Recorded("first", 1, problem="first is not installed"), _Recorded("second", 2))
    assert Detector(artifact, backend="auto", device="cpu", self_check=False).backend == "second"
    # A named backend is built without asking auto's questions; its own runners say what is wrong.
    assert Detector(artifact, backend="first", device="cpu", self_check=False).backend == "first"


def test_auto_skips_gpu_only_backends_on_a_cpu_device(artifact, monkeypatch):
    _registered(monkeypatch, _Recorded("gpu", 1, gpu_only=True))
    assert Detector(artifact, backend="auto", device="cpu", self_check=False).backend == "onnxruntime-cpu"
    assert Detector(artifact, backend="auto", self_check=False).backend == "gpu"


def test_auto_with_nothing_that_runs_says_why_for_each(artifact, monkeypatch):
    nothing = {"a": _Recorded("a", 1, problem="a is missing"), "b": _Recorded("b", 2, problem="b is missing")}
    monkeypatch.setattr(registry, "backends", lambda: nothing)
    _with_rows(monkeypatch, "a", "b")
    with pytest.raises(BackendUnavailable, match="a: a is missing; b: b is missing"):
        Detector(artifact, backend="auto", self_check=False)


def test_tensorrt_probe_with_and_without_the_standin(monkeypatch):
    probe = TensorRTBackend().probe
    if not tensorrt_installed():
        assert "pip install" in probe()
    trt_standin.install(monkeypatch, "10.3.0")
    assert probe() is None
    trt_standin.install(monkeypatch, "10.3.0", trt_standin.FakeCudart(device_count=0))
    assert "no CUDA GPU" in probe()
    trt_standin.install(monkeypatch, "10.3.0", trt_standin.FakeCudart(fail={"cudaGetDeviceCount": 35}))
    assert "cudaErrorInsufficientDriver" in probe()
    trt_standin.install(monkeypatch, "8.6.1")
    assert "too old" in probe()


def tensorrt_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None


def test_availability_rows(monkeypatch):
    trt_standin.install(monkeypatch, "10.3.0", trt_standin.FakeCudart(device_count=0))
    rows = {row["name"]: row for row in registry.availability()}
    assert list(rows) == list(registry.names())
    assert rows["onnxruntime"]["available"] and rows["onnxruntime"]["reason"] is None
    assert not rows["tensorrt"]["available"] and "no CUDA GPU" in rows["tensorrt"]["reason"]


def test_info_backends_without_torch(tmp_path):
    done = run_without_torch("maskclip-info", "--backends")
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stderr
    # onnxruntime is blocked too (a runtime-less install): the probe says so and what to install
    assert [line.split()[0] for line in lines] == list(registry.names())
    assert all("unavailable: " in line and "pip install" in line for line in lines)
    done = run_without_torch("maskclip-info", "--backends", "--json", str(tmp_path / "b.json"))
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "b.json").read_text())["backends"]
    assert [(r["name"], r["available"]) for r in rows] == [(name, False) for name in registry.names()]


def test_info_backends_with_a_model_is_a_usage_error():
    from maskclip_core.info import main as info_main

    assert CliRunner().invoke(info_main, ["--backends", "--config", "tiny"]).exit_code == 2


# ---- refused before any work: exit 4, one line, within seconds


def _refusals(tmp_path, artifact):
    from maskclip_bench.cli import main as bench_main
    from maskclip_export.cli import main as export_main
    from maskclip_runtime.cli import main as run_main
    from maskclip_runtime.serve.cli import main as serve_main

    photo = tmp_path / "missing.jpg"  # never read: the refusal comes first
    return {
        "run": (run_main, [str(photo), "--model", str(artifact), "--backend", "tensorrt"]),
        "serve": (serve_main, ["--model", str(artifact), "--backend", "tensorrt"]),
        "bench": (bench_main, ["tiny", "--backends", "trt-fp16", "--workdir", str(tmp_path / "w")]),
        "export": (export_main, ["--config", "tiny", "--out", str(tmp_path / "out"), "--trt"]),
    }


@pytest.mark.parametrize("front_end", ["run", "serve", "bench", "export"])
@pytest.mark.parametrize("missing", ["tensorrt", "gpu"])
def test_tensorrt_is_refused_before_any_work(tmp_path, artifact, monkeypatch, front_end, missing):
    if missing == "gpu":
        trt_standin.install(monkeypatch, "10.3.0", trt_standin.FakeCudart(fail={"cudaGetDeviceCount": 100}))
    elif tensorrt_installed():
        pytest.skip("TensorRT is installed here")
    command, args = _refusals(tmp_path, artifact)[front_end]
    started = time.perf_counter()
    result = CliRunner().invoke(command, args)
    assert result.exit_code == EXIT_BACKEND_UNAVAILABLE, result.output
    assert result.output.count("\n") == 1 and "error:" in result.output
    expected = "cudaErrorNoDevice" if missing == "gpu" else "pip install"
    assert expected in result.output
    assert time.perf_counter() - started < 10
    assert not (tmp_path / "out").exists() and not (tmp_path / "w").exists()
