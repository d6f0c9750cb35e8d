"""maskclip-serve --triton: the same Detector behind a real NVIDIA Triton Inference Server (PyTriton).

Triton does the HTTP/gRPC serving (KServe v2 protocol), queueing and dynamic batching; its Python
backend hands each batch to `infer` here, which decodes, runs the Detector and answers per request.

Model `maskclip`, one request = one encoded image file:
  input  image          BYTES [1]    the file's bytes (JPEG, PNG, ...), decoded like maskclip-run does
  output fake_prob      FP32  [1]
         verdict        BYTES [1]    b"fake", b"real", or b"error" for an undecodable image
         mask_fraction  FP32  [1]    share of the image's pixels whose probability is > threshold
         mask           FP32  [S,S]  the probability map at model resolution (resize it to the image)
         error          BYTES [1]    b"" or the one-line reason the image was refused
An undecodable image answers with verdict "error" instead of failing the other requests of its batch.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from functools import partial

import numpy as np

from ..detect.detector import Detector
from ..errors import BackendUnavailable
from ..kernel.preprocess import ImageLoadError, decode_bytes

MODEL_NAME = "maskclip"
log = logging.getLogger("maskclip_runtime")


class TritonUnavailable(BackendUnavailable):
    """PyTriton is missing or cannot start its tritonserver here; the message says what is needed."""


def serve_with_triton(load_detector: Callable[[], Detector], host: str, port: int, max_wait_ms: float) -> None:
    """Serve until SIGINT/SIGTERM: HTTP on `port`, gRPC on port+1, Triton's metrics on port+2."""
    try:
        from pytriton.decorators import batch
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig
    except ImportError as exc:
        raise TritonUnavailable(
            f"--triton needs NVIDIA PyTriton ({exc}): pip install 'maskclip[triton]' in a runtime-only environment "
            f"(Linux x86_64, glibc >= 2.35; PyTriton pins numpy < 2)"
        ) from None
    detector = load_detector()
    size = detector.artifact.preprocess.size
    config = TritonConfig(
        http_address=host, http_port=port, grpc_address=host, grpc_port=port + 1, metrics_port=port + 2
    )
    batching = ModelConfig(
        max_batch_size=detector.batch_size,
        batcher=DynamicBatcher(max_queue_delay_microseconds=int(max_wait_ms * 1000)),
    )
    # Triton stops on KeyboardInterrupt: SIGTERM (docker stop, Kubernetes) takes the same clean path.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with Triton(config=config) as triton:
            triton.bind(
                model_name=MODEL_NAME,
                infer_func=batch(partial(_infer_batch, detector)),
                inputs=[Tensor(name="image", dtype=np.bytes_, shape=(1,))],
                outputs=[
                    Tensor(name="fake_prob", dtype=np.float32, shape=(1,)),
                    Tensor(name="verdict", dtype=np.bytes_, shape=(1,)),
                    Tensor(name="mask_fraction", dtype=np.float32, shape=(1,)),
                    Tensor(name="mask", dtype=np.float32, shape=(size, size)),
                    Tensor(name="error", dtype=np.bytes_, shape=(1,)),
                ],
                config=batching,
                strict=True,
            )
            log.info(f"Triton serving model {MODEL_NAME!r}: HTTP {host}:{port}, gRPC {host}:{port + 1}")
            triton.serve()
    except Exception as exc:  # tritonserver failed to start or died: one line
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TritonUnavailable(
            f"Triton Inference Server failed: {reason} (tritonserver's log above says more; PyTriton's Python "
            f"backend runs this interpreter's standard library with the system libpython{sys.version_info[0]}."
            f"{sys.version_info[1]}.so, so their patch versions must match, e.g. use the distribution's python3)"
        ) from None
    finally:
        detector.close()


def _infer_batch(detector: Detector, image: np.ndarray) -> dict[str, np.ndarray]:
    """Triton's batch of encoded images [n,1] -> the outputs above, each [n,...]."""
    count = len(image)
    size = detector.artifact.preprocess.size
    fake_prob = np.zeros((count, 1), np.float32)
    mask_fraction = np.zeros((count, 1), np.float32)
    mask = np.zeros((count, size, size), np.float32)
    verdict = [b"error"] * count
    error = [b""] * count
    rows, prepared = [], []
    for row, data in enumerate(image[:, 0]):
        try:
            prepared.append(detector.prepare(decode_bytes(bytes(data), "image").image))
            rows.append(row)
        except ImageLoadError as exc:
            error[row] = str(exc).encode("utf-8")
    for row, detection in zip(rows, detector.detect_prepared(prepared), strict=True):
        fake_prob[row, 0] = detection.fake_prob
        mask_fraction[row, 0] = detection.mask_fraction
        mask[row] = detection.model_mask
        verdict[row] = detection.verdict.encode("ascii")
    return {
        "fake_prob": fake_prob,
        "verdict": np.array(verdict, dtype=np.bytes_).reshape(count, 1),
        "mask_fraction": mask_fraction,
        "mask": mask,
        "error": np.array(error, dtype=np.bytes_).reshape(count, 1),
    }
