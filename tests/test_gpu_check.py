"""benchmarks/gpu_check.py: its step runner, its planning, and (slow) the offline mode end to end on a
simulated offline machine: an interpreter that is a venv made from a venv, holding the packages of a stock
CUDA PyTorch image but not open_clip / onnxslim / TensorRT, installs with pip --no-index only."""

import importlib.metadata
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from maskclip_bench import gpu_check
from maskclip_bench.gpu_check import Checker, choose_target, plan_wheels, split_backends

ROOT = Path(__file__).resolve().parent.parent


def test_a_failing_step_never_ends_the_run(tmp_path):
    check = Checker(tmp_path, budget_s=60)
    ok, _ = check.command("fails", [sys.executable, "-c", "import sys; print('bad'); sys.exit(4)"])
    assert not ok
    assert not check.command("missing program", ["/nonexistent/program"])[0]
    assert not check.call("raises", lambda: 1 / 0)
    ok, output = check.command("runs after them", [sys.executable, "-c", "print('still here')"])
    assert ok and "still here" in output
    check.finish({"mode": "test"})
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(s["name"], s["status"]) for s in summary["steps"]] == [
        ("fails", "failed"),
        ("missing program", "failed"),
        ("raises", "failed"),
        ("runs after them", "ok"),
    ]
    assert summary["steps"][0]["detail"] == "exit 4: bad"
    assert "still here" in (tmp_path / "log.txt").read_text() and (tmp_path / "summary.md").is_file()


def test_a_step_past_its_time_is_stopped_and_the_budget_skips_the_rest(tmp_path):
    check = Checker(tmp_path, budget_s=2)
    ok, _ = check.command("sleeps", [sys.executable, "-c", "import time; time.sleep(30)"], timeout_s=1)
    assert not ok and check.steps[-1].detail == "stopped after 1 s" and check.steps[-1].seconds < 10
    check.budget_s = 0
    assert not check.command("too late", [sys.executable, "-c", "pass"])[0]
    assert check.steps[-1].status == "skipped"


def test_plan_wheels_installs_only_what_is_missing(tmp_path):
    for name in ("open_clip_torch-3.3.0-py3-none-any.whl", "ftfy-6.3.1-py3-none-any.whl"):
        (tmp_path / name).write_bytes(b"")
    installed = {"open_clip_torch": None, "ftfy": "6.3.1", "wcwidth": None, "onnxslim": "0.1.98"}
    wheels, unavailable = plan_wheels(installed, tmp_path)
    assert [w.name for w in wheels] == ["open_clip_torch-3.3.0-py3-none-any.whl"]
    assert unavailable == ["wcwidth"]


@pytest.mark.parametrize(
    ("smi", "tegra", "target"),
    [
        ("| NVIDIA-SMI 580.159.03   Driver Version: 580.159.03   CUDA Version: 13.0 |", False, "cu13"),
        ("| NVIDIA-SMI 550.54.15    Driver Version: 550.54.15    CUDA Version: 12.4 |", False, "cu12"),
        ("", True, "jetson"),
    ],
)
def test_target_follows_the_driver(smi, tegra, target):
    assert choose_target(smi, tegra) == target
    assert gpu_check.TARGET_EXTRAS[target] in ("gpu", "gpu-cu12", "jetson")


def test_split_backends_puts_pytorch_first():
    assert split_backends("trt-fp16, torch,torch-bf16-graph,ort-fp32") == (
        "torch,torch-bf16-graph",
        "trt-fp16,ort-fp32",
    )


# --- the offline mode, simulated --------------------------------------------------------------------------
HIDDEN = ("open_clip_torch", "ftfy", "wcwidth", "onnxslim", "maskclip")


def repack_wheel(name: str, folder: Path) -> Path:
    """An installed pure-Python distribution as a wheel (its files and dist-info, as installed)."""
    dist = importlib.metadata.distribution(name)
    wheel = folder / f"{dist.metadata['Name'].replace('-', '_')}-{dist.version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for file in dist.files:
            path = Path(dist.locate_file(file))
            if path.is_file() and "__pycache__" not in file.parts and not str(file).startswith(".."):
                archive.write(path, str(file))
    return wheel


def offline_interpreter(tmp_path: Path) -> Path:
    """A venv made from this venv (so it sees none of its packages), given this venv's packages except the
    HIDDEN ones and TensorRT through a path file: a stock CUDA PyTorch image's interpreter, offline."""
    site = Path(next(p for p in sys.path if p.endswith("site-packages")))
    visible = tmp_path / "image-site-packages"
    visible.mkdir()
    hidden = tuple(name.lower().replace("-", "_") for name in (*HIDDEN, "open_clip", "tensorrt", "__editable__"))
    for entry in site.iterdir():
        if not entry.name.lower().startswith(hidden):
            (visible / entry.name).symlink_to(entry)
    interpreter = tmp_path / "image-python"  # pip and setuptools come from the image too
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(interpreter)], check=True, timeout=300)
    python = interpreter / "bin" / "python"
    own_site = subprocess.run(
        [python, "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True, text=True, check=True
    ).stdout.strip()
    Path(own_site, "image.pth").write_text(f"{visible}\n")
    return python


@pytest.mark.slow
def test_offline_mode_end_to_end_on_a_simulated_offline_machine(tmp_path):
    python = offline_interpreter(tmp_path)
    missing = subprocess.run([python, "-c", "import open_clip"], capture_output=True, timeout=120)
    assert missing.returncode != 0  # the simulated image really lacks it
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name in gpu_check.OFFLINE_WHEELS:
        repack_wheel(name, wheels)
    out = tmp_path / "report"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHONPATH"))}
    env["PIP_NO_INDEX"] = "1"  # no package index, as on the offline machine
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--offline", "--python", str(python),
         "--wheels", str(wheels), "--out", str(out), "--work", str(tmp_path / "work"), "--model", "tiny",
         "--device", "cpu", "--iters", "2", "--backends", "torch,torch-bf16,torch-graph,trt-fp16"],
        capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    status = {step["name"]: step["status"] for step in summary["steps"]}
    assert status["wheels (missing pure-Python packages)"] == "ok"
    assert status["install maskclip (--no-build-isolation --no-deps)"] == "ok"
    assert status["import check"] == "ok"
    assert sorted(summary["wheels_installed"]) == sorted(p.name for p in wheels.iterdir())
    files = {"tiny.json", "tiny.md", "tiny-artifacts.json", "tiny-artifacts.md", "log.txt", "summary.md"}
    assert set(summary["files"]) == files and (out / "summary.json").is_file()
    assert summary["environment"]["modules"]["tensorrt"].startswith("MISSING")
    assert (tmp_path / "work" / "site" / "maskclip_bench").is_dir()  # installs went to the work folder
    rows = {(r["backend"], r["batch"]): r for r in json.loads((out / "tiny.json").read_text())["rows"]}
    assert rows["torch", 8]["status"] == "ok" and rows["torch-bf16", 1]["parity"]["images"] > 0
    assert rows["torch-graph", 1]["status"] == "unavailable"  # no CUDA here: says why
    trt = json.loads((out / "tiny-artifacts.json").read_text())["rows"]
    assert {r["status"] for r in trt} == {"unavailable"} and "TensorRT is not installed" in trt[0]["reason"]
    # Nothing was written into the interpreter: the project and the wheels went to <out>/site.
    assert subprocess.run([python, "-c", "import open_clip"], capture_output=True, timeout=120).returncode != 0


# --- Polygraphy's comparisons and the portable engine, as steps -------------------------------------------
FAKE_PYTHON = """#!{python}
import json, sys
from pathlib import Path
with open({log!r}, "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
if "maskclip_bench.polygraphy_check" in sys.argv:
    artifact = Path(sys.argv[sys.argv.index("maskclip_bench.polygraphy_check") + 1])
    over = artifact.name.startswith("bad")
    figures = lambda diff: {{"max_absdiff": diff, "mean_absdiff": diff / 10, "max_reldiff": diff, "mean_reldiff": 0.0,
                            "passed": diff <= 0.01}}
    report = {{"precision": "fp16", "atol": 0.01, "rtol": 0.01, "passed": not over,
              "graphs": {{"fused": {{"fake_prob": figures(1e-4), "mask": figures(0.5 if over else 2e-3)}}}}}}
    Path(sys.argv[sys.argv.index("--json") + 1]).write_text(json.dumps(report))
    sys.exit(3 if over else 0)
"""


@pytest.fixture
def fake_python(tmp_path):
    log = tmp_path / "argv.log"
    script = tmp_path / "fake-python"
    script.write_text(FAKE_PYTHON.format(python=sys.executable, log=str(log)))
    script.chmod(0o755)
    return str(script), lambda: [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []


def _artifact_folder(root: Path, name: str, manifest: str) -> Path:
    (root / name).mkdir(parents=True)
    (root / name / "manifest.json").write_text(manifest)
    return root / name


def test_engine_artifacts_are_the_folders_whose_manifest_lists_engines(tmp_path):
    with_engines = _artifact_folder(tmp_path, "tiny-fp16", json.dumps({"engines": [{"file": "model.fp16.engine"}]}))
    _artifact_folder(tmp_path, "tiny-fp32", json.dumps({"engines": None}))
    _artifact_folder(tmp_path, "broken", "{not json")
    _artifact_folder(tmp_path, "list", "[]")
    assert gpu_check.engine_artifacts(tmp_path) == [with_engines]


def test_polygraphy_figures_go_into_the_summary_even_over_tolerance(tmp_path, fake_python):
    python, calls = fake_python
    work = tmp_path / "work"
    good = _artifact_folder(work, "good-fp16", "{}")
    bad = _artifact_folder(work, "bad-fp16", "{}")
    check = Checker(tmp_path / "out", budget_s=120)
    reports = gpu_check.polygraphy_steps(check, python, dict(os.environ), [good, bad])
    summary = check.finish({"polygraphy": reports})
    assert set(reports) == {"good-fp16", "bad-fp16"} and not reports["bad-fp16"]["passed"]
    status = {step["name"]: (step["status"], step["detail"]) for step in summary["steps"]}
    assert status["polygraphy: good-fp16 engines vs ONNX Runtime"][0] == "ok"
    assert status["polygraphy: bad-fp16 engines vs ONNX Runtime"][0] == "failed"  # exit 3, report kept
    assert "worst mask max |diff| 2.00e-03" in status["polygraphy: good-fp16 figures"][1]
    assert "worst mask max |diff| 5.00e-01" in status["polygraphy: bad-fp16 figures"][1]
    assert "1 of 2 outputs within" in status["polygraphy: bad-fp16 figures"][1]
    assert {"polygraphy-good-fp16.json", "polygraphy-bad-fp16.json"} <= set(summary["files"])
    assert "worst mask max" in (tmp_path / "out" / "summary.md").read_text()
    assert [argv[argv.index("--limit") + 1] for argv in calls()] == ["8", "8"]


def test_the_portable_engine_is_built_then_benchmarked_as_one_row(tmp_path, fake_python):
    python, calls = fake_python
    check = Checker(tmp_path / "out", budget_s=120, work=tmp_path / "work")
    assert gpu_check.portable_steps(check, python, dict(os.environ), True, False, "cuda", 5)
    export, bench = calls()
    assert export[export.index("--trt") :][:5] == ["--trt", "--trt-compat", "version", "--trt-compat", "hardware"]
    assert "--fp16" in export
    portable = export[export.index("--out") + 1]
    assert bench[2] == portable and bench[bench.index("--backends") + 1] == "trt-fp16"


@pytest.mark.parametrize(("tensorrt", "jetson", "why"), [(True, True, "Jetson"), (False, False, "not installed")])
def test_no_portable_engine_on_jetson_or_without_tensorrt(tmp_path, fake_python, tensorrt, jetson, why):
    python, calls = fake_python
    check = Checker(tmp_path / "out", budget_s=120)
    assert not gpu_check.portable_steps(check, python, dict(os.environ), tensorrt, jetson, "cuda", 5)
    assert check.steps[-1].status == "skipped" and why in check.steps[-1].detail
    assert calls() == []
