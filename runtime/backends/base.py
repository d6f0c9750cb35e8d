"""One interface for every backend: a Runner executes one graph of an artifact.

Like Polygraphy's runners: built lazily from a file, fed a dict of named numpy arrays, returning
a dict of named numpy arrays. The Detector chains runners (split artifacts) by tensor name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Runner(ABC):
    """Runs one graph (ONNX model or TensorRT engine)."""

    #: short backend id used in reports and JSON output, e.g. "onnxruntime-cpu", "tensorrt"
    backend: str = ""

    @property
    @abstractmethod
    def input_names(self) -> list[str]: ...

    @property
    @abstractmethod
    def output_names(self) -> list[str]: ...

    @abstractmethod
    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """feed: every name in input_names -> array; returns every name in output_names -> float32 array."""

    def close(self) -> None:  # noqa: B027 - optional hook, most runners hold nothing to release
        """Release device memory / sessions."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
