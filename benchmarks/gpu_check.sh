#!/usr/bin/env bash
# The one prepared GPU check: install, build fp32/fp16/int8 TensorRT engines for `tiny` and
# `opensdi-vitl14`, run the parity gate on every engine and the benchmark, write ONE report folder.
#
#   bash benchmarks/gpu_check.sh [REPORT_DIR]      (from a checkout; default: gpu-report-<UTC time>)
#
# A100/H100 with pip's TensorRT, or Jetson with JetPack 6 (system TensorRT, CUDA and torch are used
# as installed). On a GPU where TensorRT cannot be installed, the PyTorch CUDA and ONNX Runtime rows
# still run and the TensorRT rows say why. Weights are random (no trained checkpoint is published):
# speed and parity are real, detections are not.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(realpath -m "${1:-gpu-report-$(date -u +%Y%m%dT%H%M%SZ)}")"
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
cd "$ROOT"
started=$(date +%s)
step() { echo; echo "== [$(( $(date +%s) - started ))s] $*"; }

step "GPU"
if ! nvidia-smi; then
    # Jetson has no nvidia-smi; its GPU shows up through the tegra release file instead.
    [[ -f /etc/nv_tegra_release ]] || { echo "no NVIDIA GPU visible: this script needs a CUDA machine"; exit 2; }
    cat /etc/nv_tegra_release
fi

step "environment ($OUT/venv)"
# System site packages: JetPack's TensorRT, CUDA Python bindings and torch live there.
python3 -m venv --system-site-packages "$OUT/venv"
# shellcheck disable=SC1091
. "$OUT/venv/bin/activate"
python -m pip install --quiet --upgrade pip
# constraints.txt pins torch; a torch already installed by the platform (JetPack's CUDA build) is
# pinned to itself instead, so pip never swaps it for a CPU-only wheel.
CONSTRAINTS="$OUT/constraints.txt"
cp constraints.txt "$CONSTRAINTS"
if python -c "import torch" 2>/dev/null; then
    python - "$CONSTRAINTS" <<'EOF'
import sys

import torch

lines = [line for line in open(sys.argv[1]) if not line.startswith(("torch==", "torchvision=="))]
lines.append(f"torch=={torch.__version__}\n")
try:
    import torchvision

    lines.append(f"torchvision=={torchvision.__version__}\n")
except ImportError:
    pass
open(sys.argv[1], "w").writelines(lines)
EOF
fi
if [[ -f /etc/nv_tegra_release ]]; then
    # JetPack: TensorRT is the system's (python3-libnvinfer); pip has no Jetson TensorRT wheels.
    python -m pip install --quiet -c "$CONSTRAINTS" -e ".[export,dev]" "cuda-python>=12"
    python -c "import onnxruntime" 2>/dev/null || python -m pip install --quiet -c "$CONSTRAINTS" "onnxruntime>=1.17"
elif ! python -m pip install --quiet -c "$CONSTRAINTS" -e ".[gpu,export,dev]"; then
    echo "the [gpu] extra (TensorRT) did not install: continuing without TensorRT, its rows will say why"
    python -m pip install --quiet -c "$CONSTRAINTS" -e ".[export,dev]" "onnxruntime-gpu>=1.17" "cuda-python>=12"
fi
python - <<'EOF'
import importlib

for name in ("torch", "onnxruntime", "tensorrt", "cuda.bindings.runtime"):
    try:
        module = importlib.import_module(name)
        print(f"{name}: {getattr(module, '__version__', 'ok')}")
    except ImportError as err:
        print(f"{name}: MISSING ({err})")
import torch

print("torch CUDA:", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF

step "GPU tests (pytest -m gpu)"
python -m pytest -q -m gpu -rs tests/test_tensorrt_build.py 2>&1 | tee "$OUT/gpu-tests.txt" || true

step "maskclip-export --fp16 --trt (the CLI path, tiny)"
maskclip-export --config tiny --fp16 --dynamic --batch 8 --trt --quiet --out "$OUT/artifacts/tiny-fp16-cli" || true

step "benchmark: tiny, then opensdi-vitl14 (exports, engine builds, engine gates, timings)"
# int8-cpu is left out: its dynamic quantisation has CPU kernels only.
TIMING_FLAGS=(--device cuda --backends torch,ort-fp32,ort-int8,ort-fp16,trt-fp32,trt-fp16,trt-int8
              --batch-sizes "1,8" --warmup 10 --iters 50 --workdir "$OUT/artifacts")
maskclip-bench tiny "${TIMING_FLAGS[@]}" --out "$OUT/tiny.md" --json "$OUT/tiny.json" \
    --note "GPU check run by benchmarks/gpu_check.sh"
maskclip-bench opensdi-vitl14 "${TIMING_FLAGS[@]}" --out "$OUT/opensdi-vitl14.md" --json "$OUT/opensdi-vitl14.json" \
    --note "GPU check run by benchmarks/gpu_check.sh; random weights"

step "done in $(( $(date +%s) - started ))s: $OUT"
ls -la "$OUT"
