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
EXPORT = ["onnx>=1.16", "onnxslim>=0.1.40", "polygraphy>=0.49"]

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
        "maskclip_runtime": ["demo/*.json", "demo/*.onnx", "demo/examples/*.jpg"],
        "maskclip_bench": ["gpu_check.sh"],
    },
    install_requires=RUNTIME,
    extras_require={
        "cpu": ["onnxruntime>=1.17"],
        "gpu": ["onnxruntime-gpu>=1.17", "tensorrt>=10", "cuda-python>=12"],
        "train": TRAIN,
        "export": TRAIN + EXPORT,
        "dev": ["pytest>=8", "ruff>=0.5", "scikit-learn>=1.3", "opencv-python-headless>=4.8"],
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
            "maskclip-bench=maskclip_bench.cli:main",
        ]
    },
)
