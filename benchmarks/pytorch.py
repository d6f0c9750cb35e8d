"""PyTorch rows: eager fp32 (the baseline), autocast fp16 / bf16, CUDA-graph replay, and the export gate's
comparison of a reduced precision with fp32 eager."""

from __future__ import annotations

import numpy as np

from maskclip_runtime.errors import BackendUnavailable
from maskclip_runtime.kernel.devices import parse_device

from .artifacts import gate_summary
from .backends import Session


def cuda_unavailable_reason(device: str) -> str | None:
    """Why PyTorch cannot run on this CUDA device (None when it can): checked before any row is measured."""
    import torch

    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        index = parse_device(device).index
        return None if index < count else f"--device {device}: only {count} CUDA device(s) are visible"
    if torch.version.cuda is None:
        return f"--device {device}: PyTorch {torch.__version__} is a CPU-only build; install its CUDA build"
    return (
        f"--device {device}: PyTorch {torch.__version__} (built for CUDA {torch.version.cuda}) sees no usable GPU: "
        "none visible, or a driver older than that CUDA needs (nvidia-smi shows the driver's CUDA version); "
        "install the torch build for this driver's CUDA"
    )


def torch_forward(model, device: str, precision: str = "fp32", cuda_graph: bool = False):
    """tensor batch on `device` -> the model's outputs: eager, under autocast for fp16 / bf16, or replaying
    a CUDA graph captured per input shape. The model is moved to `device`."""
    import torch

    model = model.to(device).eval()
    kind = parse_device(device).kind
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    if cuda_graph and kind != "cuda":
        raise BackendUnavailable("CUDA graphs need --device cuda")
    if kind == "cuda":  # fp32 rows are fp32: TF32 would round matmul and convolution inputs to 10 bits
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    def run(x):
        # Autocast's weight-cast cache must be off while capturing: a graph replays the casts itself.
        with torch.autocast(kind, dtype=dtype, enabled=dtype is not None, cache_enabled=not cuda_graph):
            return model(x)

    return cuda_graph_replay(run, device) if cuda_graph else run


def cuda_graph_replay(run, device: str):
    """`run` captured into one CUDA graph per input shape (after warm-up runs on a side stream, as CUDA graph
    capture requires), then replayed on a static input buffer. Thread-local capture mode: the memory
    sampler's thread keeps calling CUDA meanwhile."""
    import torch

    graphs = {}

    def forward(x):
        key = tuple(x.shape)
        if key not in graphs:
            static_in = x.clone()
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    run(static_in)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                static_out = run(static_in)
            graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out

    return forward


def torch_predictor(forward, device: str):
    """A verification Predictor (numpy batch -> logits, fake_prob, mask) over a torch_forward."""
    import torch

    def predict(images: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            out = forward(torch.from_numpy(images).to(device))
            result = {"logits": out["logits"], "fake_prob": out["fake_prob"], "mask": out["mask_prob"]}
            return {name: value.float().cpu().numpy() for name, value in result.items()}

    return predict


def torch_session(model, device: str, precision: str = "fp32", cuda_graph: bool = False) -> Session:
    """PyTorch on `device` (the fp32 eager row is the baseline); closing moves the model back to the CPU."""
    import torch

    forward_tensors = torch_forward(model, device, precision, cuda_graph)

    def forward(batch: np.ndarray):
        with torch.inference_mode():
            out = forward_tensors(torch.from_numpy(batch).to(device))
            if parse_device(device).gpu:
                torch.cuda.synchronize()
            return out["fake_prob"].float().cpu().numpy(), out["mask_prob"][:, 0].float().cpu().numpy()

    def close() -> None:
        model.to("cpu")  # the exports that follow trace the model on the CPU
        if parse_device(device).gpu:
            torch.cuda.empty_cache()

    return Session(forward, close, ran_on=f"torch-{parse_device(device).kind}")


def torch_gate(model, device: str, precision: str, max_batch: int) -> dict:
    """The export gate's comparison of PyTorch at a reduced precision with PyTorch fp32 eager, both on
    `device` (bf16 is judged by fp16's tolerances): what precision alone costs, before any export."""
    from maskclip_export.verify import verification_batch, verify
    from maskclip_runtime.contract.manifest import BatchSpec

    names, images = verification_batch(model.preprocess_spec())
    try:
        report = verify(
            torch_predictor(torch_forward(model, device), device),
            torch_predictor(torch_forward(model, device, precision), device),
            images,
            names,
            "fp16" if precision == "bf16" else precision,
            model.config.threshold,
            BatchSpec.up_to(max_batch),
        )
    finally:
        model.to("cpu")
    return {
        **gate_summary(report),
        "reference": f"pytorch fp32 eager on {device}",
    }
