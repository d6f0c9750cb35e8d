"""maskclip: MaskCLIP (OpenSDI, CVPR 2025) from PyTorch reference to verified ONNX/TensorRT deployments."""

from setuptools import setup

VERSION = "0.1.0"

# The base install is the torch-free runtime. ONNX Runtime comes through exactly ONE of the
# `cpu` / `gpu` extras: onnxruntime and onnxruntime-gpu write the same package folder.
RUNTIME = ["numpy>=1.24", "Pillow>=10", "click>=8.1", "tqdm>=4.66"]
TRAIN = [
    "torch",  # pinned with torchvision in constraints.txt
    "torchvision",
    "open_clip_torch>=2.24",
    "timm>=1.0",
    "safetensors>=0.4",
    "albumentations>=1.4",
    "pyarrow>=14",
    "scikit-image>=0.22",
    "scipy>=1.10",  # temperature fitting
    "matplotlib>=3.8",  # reliability diagrams and robustness plots
]
# onnxslim: the export hands it weights by reference through its graph's internals (export/onnx_export.py):
# a release that changes them is caught by tests/test_export_memory.py; hence the upper bound.
EXPORT = ["onnx>=1.16", "onnxslim>=0.1.98,<0.2", "polygraphy>=0.49"]
SERVE = ["fastapi>=0.110", "uvicorn>=0.29", "python-multipart>=0.0.9", "prometheus-client>=0.20"]

setup(
    name="maskclip",
    version=VERSION,
    description=__doc__,
    python_requires=">=3.10",
    packages=[
        "maskclip_core",
        "maskclip_core.model",
        "maskclip_core.data",
        "maskclip_export",
        "maskclip_runtime",
        "maskclip_runtime.backends",
        "maskclip_runtime.contract",
        "maskclip_runtime.detect",
        "maskclip_runtime.kernel",
        "maskclip_runtime.present",
        "maskclip_runtime.pipeline",
        "maskclip_runtime.scale",
        "maskclip_runtime.serve",
        "maskclip_bench",
    ],
    package_dir={
        "maskclip_core": "maskclip_core",
        "maskclip_export": "export",
        "maskclip_runtime": "runtime",
        "maskclip_bench": "benchmarks",
    },
    package_data={
        "maskclip_core": ["weights/*.safetensors", "weights/*.json", "weights/*.md"],
        "maskclip_export": ["tensorrt_onnx_ops.json"],
        "maskclip_runtime": [
            "demo/*.json",
            "demo/*.onnx",
            "demo/examples/*.jpg",
            "demo/canary/*.png",
            "serve/page.html",
        ],
        "maskclip_bench": ["gpu_check.sh"],  # gpu_check.py is a module of the package
    },
    install_requires=RUNTIME,
    extras_require={
        "cpu": ["onnxruntime>=1.17"],
        # One GPU extra per platform (README: GPU targets). cuda-python 13 needs a CUDA 13 driver (>= 580);
        # onnxruntime-gpu on PyPI is built for CUDA 12 up to 1.26, for CUDA 13 from 1.27. x86 CUDA 12 gets
        # TensorRT 10 (as JetPack 6's 10.3: engines from fp32 graphs with builder flags), CUDA 13 TensorRT 11.
        "gpu": ["onnxruntime-gpu>=1.27", "tensorrt-cu13>=11,<12", "cuda-python>=13,<14"],
        "gpu-cu12": ["onnxruntime-gpu>=1.20,<1.27", "tensorrt-cu12>=10.3,<11", "cuda-python>=12.3,<13"],
        "jetson": ["cuda-python>=12.3,<13"],  # JetPack 6: TensorRT, torch and onnxruntime-gpu come with it
        # OpenVINO runs any artifact on Intel/AMD CPUs, Intel GPUs and NPUs (--backend openvino); NNCF makes
        # the int8-openvino precision at export.
        "openvino": ["openvino>=2025.0", "nncf>=2.16"],
        "train": TRAIN,
        "export": TRAIN + EXPORT,
        "serve": SERVE,
        # pytriton pins numpy<2 and ships a Linux x86_64 (glibc >= 2.35) tritonserver: use it in a
        # runtime-only environment (`cpu,serve,triton`), not beside torch.
        "triton": SERVE + ["nvidia-pytriton>=0.5"],
        # maskclip-run --ray: Ray Data (actor pools, streaming, retries) and pyarrow's file systems (S3, GCS, HDFS).
        "ray": ["ray[data]>=2.40"],
        # The test suite covers the server too: its tests need the serve stack, a client and a browser driver.
        # onnx and scikit-image build the tests' stand-in artifact and photos without torch (`-m "not torch"`).
        "dev": [
            "pytest>=8",
            "pytest-xdist>=3.5",  # the suite runs on both cores (pyproject's addopts)
            "ruff>=0.5",
            "onnx>=1.16",
            "scikit-image>=0.22",
            "scikit-learn>=1.3",
            "opencv-python-headless>=4.8",
            "httpx>=0.27",
            "selenium>=4.15",
        ]
        + SERVE,
    },
    entry_points={
        "console_scripts": [
            "maskclip-info=maskclip_core.info:main",
            "maskclip-train=maskclip_core.cli:train",
            "maskclip-eval=maskclip_core.cli:evaluate",
            "maskclip-synth=maskclip_core.cli:synth",
            "maskclip-import=maskclip_core.cli:import_checkpoint",
            "maskclip-calibrate=maskclip_core.cli:calibrate",
            "maskclip-export=maskclip_export.cli:main",
            "maskclip-run=maskclip_runtime.cli:main",
            "maskclip-serve=maskclip_runtime.serve.cli:main",
            "maskclip-triton=maskclip_export.triton:main",
            "maskclip-bench=maskclip_bench.cli:main",
        ]
    },
)
