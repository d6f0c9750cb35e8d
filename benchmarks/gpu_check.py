#!/usr/bin/env python3
"""The one prepared GPU check: install, test, benchmark, and write ONE report folder (README: GPU check).

    python3 benchmarks/gpu_check.py --out gpu-report                 x86 CUDA 12 / 13, JetPack 6 (online)
    python3 benchmarks/gpu_check.py --offline --python PY --out DIR  a machine without a package index
    python3 benchmarks/gpu_check.py --fetch-wheels                   (where an index is reachable) the wheels
                                                                     the offline mode needs, into benchmarks/wheels/

Online: a venv with the system site packages (JetPack's TensorRT and torch live there), the extra of the
target (`gpu` for CUDA 13, `gpu-cu12`, `jetson`; chosen from the driver unless --target says), the GPU
tests, the design card's `maskclip-export --fp16 --trt` on tiny, then maskclip-bench on tiny and
opensdi-vitl14 with every backend.

Both modes, where TensorRT is installed: Polygraphy's second opinion on every engine built (its TrtRunner
against ONNX Runtime through its Comparator: benchmarks/polygraphy_check.py; per-output errors in
polygraphy-<artifact>.json and a line each in the summary), and one portable engine (`--trt-compat version
--trt-compat hardware`, tiny fp16; not on Jetson, whose TensorRT builds none) with its own benchmark row.

Offline: the interpreter given by --python is used as it is (no venv: a venv made from a venv cannot see
its parent's packages). The pure-Python packages it lacks come from benchmarks/wheels/ and the project is
installed beside them in <out>/site (pip --no-index --no-deps --no-build-isolation --target), which is put
on PYTHONPATH; nothing is written into the interpreter. Then maskclip-bench on opensdi-vitl14 (random
weights): PyTorch fp32 / fp16 / bf16, eager and CUDA graphs, at batch 1 and 8, each reduced precision
gated against fp32, device memory; ONNX Runtime CUDA and TensorRT rows say why they are absent when they are.

Every step runs whatever happened to the one before; each is timed and recorded in <out>/summary.json and
<out>/summary.md, everything printed goes to <out>/log.txt. Weights are random (no trained checkpoint is
published): speed and parity are real, detections are not. Standard library only: this runs before the
project is installed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WHEELS = ROOT / "benchmarks" / "wheels"

#: Pure-Python distributions the benchmark imports that a stock CUDA PyTorch image lacks, pinned: the
#: versions `--fetch-wheels` downloads and the offline mode installs with --no-deps.
OFFLINE_WHEELS = {"open_clip_torch": "3.3.0", "ftfy": "6.3.1", "wcwidth": "0.9.4", "onnxslim": "0.1.98"}
#: Distributions the benchmark needs from the interpreter itself (compiled or large: never carried).
INTERPRETER_NEEDS = (
    "torch", "torchvision", "numpy", "Pillow", "click", "tqdm", "timm", "safetensors", "onnx", "onnxruntime",
    "scikit-image", "huggingface_hub", "regex", "sympy", "ml_dtypes", "colorama", "packaging", "setuptools",
)  # fmt: skip
PROBED_MODULES = ("torch", "onnxruntime", "tensorrt", "cuda.bindings.runtime", "cuda.cudart", "open_clip", "onnxslim")

TORCH_BACKENDS = "torch,torch-fp16,torch-bf16,torch-graph,torch-fp16-graph,torch-bf16-graph"
ALL_BACKENDS = TORCH_BACKENDS + ",ort-fp32,ort-fp16,ort-int8,trt-fp32,trt-fp16,trt-int8"
#: target -> the setup.py extra it installs (README: GPU targets)
TARGET_EXTRAS = {"cu13": "gpu", "cu12": "gpu-cu12", "jetson": "jetson"}
TEGRA_RELEASE = Path("/etc/nv_tegra_release")

PROBE = r"""
import importlib, importlib.metadata as md, json, sys
modules, dists = sys.argv[1].split(","), sys.argv[2].split(",")
found = {"python": sys.version.split()[0], "executable": sys.executable, "modules": {}, "distributions": {}}
for name in modules:
    try:
        module = importlib.import_module(name)
        found["modules"][name] = getattr(module, "__version__", "present")
    except Exception as err:
        found["modules"][name] = f"MISSING ({type(err).__name__}: {err})"
for name in dists:
    try:
        found["distributions"][name] = md.version(name)
    except md.PackageNotFoundError:
        found["distributions"][name] = None
try:
    import torch
    found["torch_cuda"] = {"built_for": torch.version.cuda, "available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        found["torch_cuda"]["device"] = torch.cuda.get_device_name(0)
except Exception as err:
    found["torch_cuda"] = f"{type(err).__name__}: {err}"
try:
    import onnxruntime
    found["onnxruntime_providers"] = onnxruntime.get_available_providers()
except Exception as err:
    found["onnxruntime_providers"] = f"{type(err).__name__}: {err}"
print(json.dumps(found))
"""


@dataclass
class Step:
    name: str
    status: str  # "ok", "failed", "skipped"
    seconds: float
    detail: str = ""


class Checker:
    """Runs steps one after another: a step that fails is recorded, and the next one runs all the same."""

    def __init__(self, out: Path, budget_s: float, work: Path | None = None):
        self.out = out  # the report: a handful of files
        self.work = work or out / "work"  # venv / installed packages, artifacts, engines, images
        self.started = time.monotonic()
        self.budget_s = budget_s
        self.steps: list[Step] = []
        out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self._log = (out / "log.txt").open("a", encoding="utf-8")

    def say(self, text: str) -> None:
        print(text, flush=True)
        self._log.write(text + "\n")
        self._log.flush()

    def remaining(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    def _record(self, name: str, status: str, began: float, detail: str = "") -> bool:
        step = Step(name, status, round(time.monotonic() - began, 1), detail)
        self.steps.append(step)
        self.say(f"== {name}: {status} in {step.seconds:.0f} s" + (f" ({detail})" if detail else ""))
        return status == "ok"

    def skip(self, name: str, reason: str) -> bool:
        return self._record(name, "skipped", time.monotonic(), reason)

    def command(
        self, name: str, argv: list[str], timeout_s: float | None = None, env: dict | None = None
    ) -> tuple[bool, str]:
        """Run argv, its output teed to the console and log.txt; (ok, output). Killed (with its children)
        after timeout_s, or when the run's budget is spent."""
        timeout_s = min(timeout_s or self.remaining(), self.remaining())
        began = time.monotonic()
        self.say(f"\n== [{began - self.started:.0f} s] {name}: {' '.join(argv)}")
        if timeout_s <= 0:
            return self._record(name, "skipped", began, "the time budget is spent"), ""
        try:
            process = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                errors="replace", start_new_session=True,
            )  # fmt: skip
        except OSError as err:
            return self._record(name, "failed", began, f"cannot run {argv[0]}: {err.strerror or err}"), ""
        killed = threading.Event()

        def kill():
            killed.set()
            os.killpg(process.pid, signal.SIGKILL)

        timer = threading.Timer(timeout_s, kill) if math.isfinite(timeout_s) else None
        if timer:
            timer.start()
        lines = []
        try:
            for line in process.stdout:
                lines.append(line)
                self.say(line.rstrip("\n"))
            code = process.wait()
        finally:
            if timer:
                timer.cancel()
        output = "".join(lines)
        if killed.is_set():
            return self._record(name, "failed", began, f"stopped after {timeout_s:.0f} s"), output
        last = next((line.strip() for line in reversed(lines) if line.strip()), "")
        return self._record(
            name, "ok" if code == 0 else "failed", began, "" if code == 0 else f"exit {code}: {last}"
        ), output

    def call(self, name: str, fn) -> bool:
        """A Python step: fn() returns a detail string; an exception fails the step, not the run."""
        began = time.monotonic()
        self.say(f"\n== [{began - self.started:.0f} s] {name}")
        try:
            detail = fn() or ""
        except Exception as err:  # one failing step must never end the run
            return self._record(name, "failed", began, f"{type(err).__name__}: {err}")
        return self._record(name, "ok", began, detail)

    def finish(self, facts: dict) -> dict:
        """summary.md (the steps), then summary.json (steps, report files, facts); closes the log."""
        seconds = round(time.monotonic() - self.started, 1)
        lines = [f"# GPU check: {seconds:.0f} s", "", "| step | status | s | detail |", "|---|---|---|---|"]
        lines += [f"| {s.name} | {s.status} | {s.seconds:.0f} | {s.detail.replace('|', '/')} |" for s in self.steps]
        (self.out / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.say("\n" + "\n".join(lines))
        summary = {
            "seconds": seconds,
            "steps": [asdict(step) for step in self.steps],
            "files": sorted(p.name for p in self.out.iterdir() if p.is_file() and p.name != "summary.json"),
            **facts,
        }
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        self._log.close()
        return summary


# --- what is there ------------------------------------------------------------------------------------


def normalize(name: str) -> str:
    """Distribution names compare case-, '-', '_' and '.'-insensitively (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_files(folder: Path) -> dict[str, Path]:
    """normalized distribution name -> its wheel in `folder` (the name is the file name up to the first '-')."""
    if not folder.is_dir():
        return {}
    return {normalize(path.name.split("-")[0]): path for path in sorted(folder.glob("*.whl"))}


def plan_wheels(installed: dict[str, str | None], folder: Path) -> tuple[list[Path], list[str]]:
    """(wheels to install, distributions missing with no wheel) for the interpreter's missing OFFLINE_WHEELS."""
    available = wheel_files(folder)
    missing = [name for name in OFFLINE_WHEELS if not installed.get(name)]
    return [available[normalize(n)] for n in missing if normalize(n) in available], [
        n for n in missing if normalize(n) not in available
    ]


def choose_target(nvidia_smi_output: str, tegra: bool) -> str:
    """JetPack when the Tegra release file exists; else the CUDA version the driver supports decides."""
    if tegra:
        return "jetson"
    match = re.search(r"CUDA Version:\s*(\d+)", nvidia_smi_output)
    return "cu13" if match and int(match.group(1)) >= 13 else "cu12"


# --- steps --------------------------------------------------------------------------------------------


def gpu_step(check: Checker) -> str:
    ok, output = check.command("gpu (nvidia-smi)", ["nvidia-smi"], timeout_s=30)
    if not ok and TEGRA_RELEASE.is_file():  # Jetson has no nvidia-smi; its release file says what it is
        check.say(TEGRA_RELEASE.read_text(errors="replace"))
    return output


def probe_step(check: Checker, python: str, env: dict) -> dict:
    dists = ",".join((*INTERPRETER_NEEDS, *OFFLINE_WHEELS))
    ok, output = check.command(
        "interpreter (what it has)", [python, "-c", PROBE, ",".join(PROBED_MODULES), dists], timeout_s=120, env=env
    )
    found = {}
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            found = json.loads(line)
            break
    return found


def bench_command(
    python: str, model: str, check: Checker, device: str, backends: str, iters: int, pairs: int, report: str = ""
) -> list[str]:
    """maskclip-bench through the interpreter (no console script needed); report: the report files' stem."""
    report, out = report or model, check.out
    return [
        python, "-c", "from maskclip_bench.cli import main; main()", model, "--device", device,
        "--backends", backends, "--batch-sizes", "1,8", "--warmup", "10", "--iters", str(iters),
        "--pairs", str(pairs), "--no-profile", "--workdir", str(check.work / "artifacts"),
        "--out", str(out), "--name", report,
        "--note", "GPU check run by benchmarks/gpu_check.py; random weights",
    ]  # fmt: skip


def engine_artifacts(folder: Path) -> list[Path]:
    """Artifact folders under `folder` whose manifest lists TensorRT engines (the manifest read as JSON)."""
    found = []
    for manifest in sorted(folder.glob("*/manifest.json")):
        try:
            engines = json.loads(manifest.read_text(encoding="utf-8")).get("engines")
        except (OSError, ValueError, AttributeError):
            continue
        if engines:
            found.append(manifest.parent)
    return found


def polygraphy_steps(check: Checker, python: str, env: dict, artifacts: list[Path]) -> dict:
    """Polygraphy's comparison of each artifact's engines with ONNX Runtime: artifact name -> its report;
    each report's worst output becomes its step's detail (the summary's line)."""
    reports = {}
    for artifact in artifacts:
        path = check.out / f"polygraphy-{artifact.name}.json"
        check.command(
            f"polygraphy: {artifact.name} engines vs ONNX Runtime",
            [python, "-m", "maskclip_bench.polygraphy_check", str(artifact), "--limit", "8", "--json", str(path)],
            timeout_s=300,
            env=env,
        )
        if path.is_file():
            reports[artifact.name] = json.loads(path.read_text(encoding="utf-8"))
            check.call(f"polygraphy: {artifact.name} figures", lambda r=reports[artifact.name]: worst_output(r))
    return reports


def worst_output(report: dict) -> str:
    """'fp16: worst mask max |diff| 1.2e-03 mean 3.0e-05 (atol = rtol = 0.01); 3 of 3 outputs within': the
    output furthest from the tolerance, from a polygraphy_check report."""
    outputs = [
        (f"{g}/{n}" if len(report["graphs"]) > 1 else n, f) for g, o in report["graphs"].items() for n, f in o.items()
    ]
    name, worst = max(outputs, key=lambda item: item[1]["max_absdiff"] / report["atol"])
    within = sum(f["passed"] for _, f in outputs)
    return (
        f"{report['precision']}: worst {name} max |diff| {worst['max_absdiff']:.2e} mean {worst['mean_absdiff']:.2e} "
        f"(atol = rtol = {report['atol']:g}); {within} of {len(outputs)} outputs within"
    )


def portable_steps(check: Checker, python: str, env: dict, tensorrt: bool, jetson: bool, device: str, iters: int):
    """One portable engine (version- and hardware-compatible, tiny fp16) and its benchmark row."""
    name = "portable engine (--trt-compat version --trt-compat hardware)"
    if jetson:
        return check.skip(name, "TensorRT on Jetson builds no version- or hardware-compatible engines")
    if not tensorrt:
        return check.skip(name, "TensorRT is not installed in this interpreter")
    out = check.work / "artifacts" / "tiny-fp16-portable"
    ok, _ = check.command(
        f"maskclip-export --fp16 --trt {name.split('(')[1].rstrip(')')} (tiny)",
        [python, "-c", "from maskclip_export.cli import main; main()", "--config", "tiny", "--fp16", "--dynamic",
         "--batch", "8", "--trt", "--trt-compat", "version", "--trt-compat", "hardware", "--quiet", "--out", str(out)],
        timeout_s=600, env=env,
    )  # fmt: skip
    if ok:
        check.command(
            "benchmark the portable engine (one row)",
            bench_command(python, str(out), check, device, "trt-fp16", iters, 0, "tiny-portable"),
            env=env,
        )
    return ok


def run_offline(args, check: Checker) -> dict:
    python = args.python
    site = check.work / "site"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    gpu_step(check)
    found = probe_step(check, python, env)
    installed = found.get("distributions", {})
    absent = [name for name in INTERPRETER_NEEDS if not installed.get(name)]
    if absent:
        check.say(f"the interpreter lacks {', '.join(absent)}: the steps that import them will fail")

    wheels, unavailable = plan_wheels(installed, args.wheels)
    pip = [python, "-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation", "--no-compile"]
    pip += ["--disable-pip-version-check", "--target", str(site)]
    if wheels:
        check.command("wheels (missing pure-Python packages)", [*pip, *map(str, wheels)], timeout_s=120)
    if unavailable:
        check.skip(
            "wheels (not in the folder)",
            f"no wheel for {', '.join(unavailable)} in {args.wheels}: run `python3 benchmarks/gpu_check.py "
            "--fetch-wheels` where a package index is reachable",
        )
    elif not wheels:
        check.skip("wheels (missing pure-Python packages)", "the interpreter has them all")
    check.command("install maskclip (--no-build-isolation --no-deps)", [*pip, "--upgrade", str(ROOT)], 180)
    check.command(
        "import check",
        [python, "-c", "import maskclip_bench.cli, maskclip_export.verify, maskclip_core.model; print('imports ok')"],
        timeout_s=120,
        env=env,
    )
    check.command(
        "GPU tests (pytest -m gpu)",
        [python, "-m", "pytest", "-q", "-m", "gpu", "-rs", "-p", "no:cacheprovider", "tests/test_tensorrt_build.py"],
        timeout_s=min(180, max(check.remaining() - args.bench_reserve_s, 1)),
        env=env,
    )
    # Two runs, PyTorch first: a report is written only when its run ends, and the artifact rows (an export
    # and an engine build each, where ONNX Runtime CUDA / TensorRT are installed) could outlast the budget.
    torch_backends, artifact_backends = split_backends(args.backends or ALL_BACKENDS)
    for backends, report in ((torch_backends, args.model), (artifact_backends, f"{args.model}-artifacts")):
        if backends:
            check.command(
                f"benchmark {args.model} {report.removeprefix(args.model).lstrip('-') or 'pytorch'} ({args.device})",
                bench_command(python, args.model, check, args.device, backends, args.iters, 0, report),
                env=env,
            )
    tensorrt = not str(found.get("modules", {}).get("tensorrt", "MISSING")).startswith("MISSING")
    portable_steps(check, python, env, tensorrt, TEGRA_RELEASE.is_file(), args.device, args.iters)
    polygraphy = polygraphy_steps(check, python, env, engine_artifacts(check.work / "artifacts"))
    return {
        "mode": "offline",
        "python": python,
        "environment": found,
        "wheels_installed": [w.name for w in wheels],
        "polygraphy": polygraphy,
    }


def split_backends(backends: str) -> tuple[str, str]:
    """(PyTorch backends, artifact backends) of a maskclip-bench --backends list."""
    names = [name.strip() for name in backends.split(",") if name.strip()]
    torch_names = [name for name in names if name.startswith("torch")]
    return ",".join(torch_names), ",".join(name for name in names if name not in torch_names)


def run_online(args, check: Checker) -> dict:
    smi = gpu_step(check)
    target = args.target if args.target != "auto" else choose_target(smi, TEGRA_RELEASE.is_file())
    check.say(f"target: {target} (extra [{TARGET_EXTRAS[target]}])")
    venv = check.work / "venv"
    # System site packages: JetPack's TensorRT, CUDA Python bindings and torch live there.
    check.command(
        "venv (system site packages visible)", [args.python, "-m", "venv", "--system-site-packages", str(venv)]
    )
    python = str(venv / "bin" / "python")
    check.call("constraints (platform torch pinned to itself)", lambda: pin_platform_torch(python, check.work))
    constraints = ["-c", str(check.work / "constraints.txt")]
    extras = f".[{TARGET_EXTRAS[target]},export,dev]"
    ok, _ = check.command("install maskclip", [python, "-m", "pip", "install", "-q", *constraints, "-e", extras])
    if not ok and target != "jetson":
        check.say(f"the [{TARGET_EXTRAS[target]}] extra did not install: continuing without it, its rows say why")
        check.command(
            "install maskclip (no TensorRT)",
            [python, "-m", "pip", "install", "-q", *constraints, "-e", ".[cpu,export,dev]"],
        )
    found = probe_step(check, python, dict(os.environ))
    if str(found.get("modules", {}).get("onnxruntime", "MISSING")).startswith("MISSING"):
        # JetPack ships no onnxruntime wheel on PyPI: the CPU build, only where no onnxruntime-gpu is installed.
        check.command(
            "onnxruntime (CPU; none installed)",
            [python, "-m", "pip", "install", "-q", *constraints, "onnxruntime>=1.17"],
        )
    check.command(
        "GPU tests (pytest -m gpu)",
        [python, "-m", "pytest", "-q", "-m", "gpu", "-rs", "-p", "no:cacheprovider", "tests/test_tensorrt_build.py"],
        timeout_s=600,
    )
    check.command(
        "maskclip-export --fp16 --trt (the design card's command, tiny)",
        [python, "-c", "from maskclip_export.cli import main; main()", "--config", "tiny", "--fp16",
         "--dynamic", "--batch", "8", "--trt", "--quiet", "--out", str(check.work / "artifacts" / "tiny-fp16-cli")],
        timeout_s=600,
    )  # fmt: skip
    backends = args.backends or ALL_BACKENDS
    for model in ("tiny", args.model):
        check.command(
            f"benchmark {model} ({args.device})", bench_command(python, model, check, args.device, backends, 50, 7)
        )
    env = dict(os.environ)
    tensorrt = not str(found.get("modules", {}).get("tensorrt", "MISSING")).startswith("MISSING")
    portable_steps(check, python, env, tensorrt, target == "jetson", args.device, 50)
    polygraphy = polygraphy_steps(check, python, env, engine_artifacts(check.work / "artifacts"))
    return {"mode": "online", "target": target, "python": python, "polygraphy": polygraphy}


def pin_platform_torch(python: str, out: Path) -> str:
    """constraints.txt, with torch and torchvision pinned to the versions already installed (a platform
    build such as JetPack's): pip must never swap them for other builds."""
    lines = (ROOT / "constraints.txt").read_text().splitlines(keepends=True)
    probe = (
        "import importlib.metadata as m\n"
        "for n in ('torch', 'torchvision'):\n"
        "    try: print(n, m.version(n))\n"
        "    except m.PackageNotFoundError: pass\n"
    )
    done = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    pinned = dict(line.split() for line in done.stdout.splitlines() if line.strip())
    lines = [line for line in lines if line.split("==")[0].strip() not in pinned]
    lines += [f"{name}=={version}\n" for name, version in pinned.items()]
    (out / "constraints.txt").write_text("".join(lines), encoding="utf-8")
    return ", ".join(f"{n} {v}" for n, v in pinned.items()) or "no platform torch: constraints.txt as it is"


def fetch_wheels(folder: Path) -> int:
    """Download OFFLINE_WHEELS into `folder`: pure-Python wheels only (platform "any"), so whatever machine
    fetches them, they install on the GPU machine (python_requires is checked for Python 3.12)."""
    folder.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--platform", "any"]
    argv += ["--python-version", "3.12", "-d", str(folder)]
    argv += [f"{name}=={version}" for name, version in OFFLINE_WHEELS.items()]
    print(" ".join(argv), flush=True)
    return subprocess.call(argv)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, default=Path(f"gpu-report-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    )
    parser.add_argument("--work", type=Path, help="installs, artifacts and engines (default: <out>/work)")
    parser.add_argument(
        "--offline", action="store_true", help="no package index: use --python as it is, wheels from --wheels"
    )
    parser.add_argument(
        "--python", default=sys.executable, help="the interpreter to use (offline) or make the venv from"
    )
    parser.add_argument("--wheels", type=Path, default=WHEELS, help="folder of the pure-Python wheels (offline)")
    parser.add_argument(
        "--fetch-wheels", action="store_true", help="download the offline wheels into --wheels, then stop"
    )
    parser.add_argument("--target", choices=["auto", *TARGET_EXTRAS], default="auto", help="online: which GPU extra")
    parser.add_argument("--model", default="opensdi-vitl14", help="the model benchmarked (random weights)")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N; cpu only to rehearse the steps")
    parser.add_argument("--backends", help=f"maskclip-bench --backends (default: {ALL_BACKENDS})")
    parser.add_argument("--iters", type=int, default=50, help="timed calls per row (offline)")
    parser.add_argument(
        "--budget-s", type=float, help="stop starting work after this many seconds (default: offline 570, online none)"
    )
    parser.add_argument("--bench-reserve-s", type=float, default=300, help="seconds kept for the benchmark (offline)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.fetch_wheels:
        return fetch_wheels(args.wheels)
    budget = args.budget_s or (570 if args.offline else float("inf"))
    check = Checker(args.out.resolve(), budget, args.work.resolve() if args.work else None)
    facts = run_offline(args, check) if args.offline else run_online(args, check)
    check.finish(facts)
    # Exit 0 when the benchmark wrote its report, whatever else failed: the report says what did not run.
    return 0 if (check.out / f"{args.model}.json").is_file() else 1


if __name__ == "__main__":
    sys.exit(main())
