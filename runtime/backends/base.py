"""One interface for every backend: a Runner executes one graph of an artifact.

Like Polygraphy's runners: built lazily from a file, fed a dict of named numpy arrays, returning
a dict of named numpy arrays. The Detector chains runners (split artifacts) by tensor name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..contract.artifact import Artifact


class Runner(ABC):
    """Runs one graph (ONNX model or TensorRT engine)."""

    #: short backend id used in reports and JSON output, e.g. "onnxruntime-cpu", "tensorrt"
    backend: str = ""

    # Each runner sets these when it loads its graph: input name -> what it feeds it (in the graph's order),
    # and the output names in order.
    _inputs: dict
    _outputs: list[str]

    @property
    def input_names(self) -> list[str]:
        return list(self._inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    @abstractmethod
    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """feed: every name in input_names -> array; returns every name in output_names -> float32 array."""

    def close(self) -> None:  # noqa: B027 - optional hook, most runners hold nothing to release
        """Release device memory / sessions."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Backend(ABC):
    """What a backend module declares: its name, whether it can run here, its runners, its place in "auto".

    Each backend module (onnxruntime.py, tensorrt.py, ...) subclasses this and sets a module-level
    `BACKEND = TheBackend()`; registry.py lists the modules. Declaring must not import the backend's
    library: `probe` and `runners` import it when called.
    """

    #: the --backend value, the precision table's backend name (precision_table.PRECISIONS[...].backends)
    name: str = ""
    #: prefix of its maskclip-bench rows ("ort" -> ort-fp16)
    short: str = ""
    #: place in "auto": the lowest rank whose probe passes and that can run the artifact on the device is used
    rank: int = 100
    #: runs only on a CUDA GPU (the bench and auto skip it on a CPU device; a CPU device is refused)
    gpu_only: bool = False
    #: runs the artifact's ONNX graphs themselves (False: files built from them, e.g. TensorRT engines)
    runs_onnx_graphs: bool = True
    #: Triton Inference Server's platform for its model files (None: maskclip-triton cannot install it)
    triton_platform: str | None = None
    #: its distributions (pip names): a new release may pick other kernels, so the self-check cache keys on them
    packages: tuple[str, ...] = ()

    def probe(self) -> str | None:
        """None when this backend can run here; else one line: what is missing and how to install it."""
        return None

    def auto_rank(self, artifact: Artifact) -> int:
        """Its place in "auto" for this artifact on this host (a backend may move up for some precisions)."""
        return self.rank

    def artifact_problem(self, artifact: Artifact) -> str | None:
        """None when the artifact holds what this backend runs; else one line saying what it lacks."""
        return None

    def model_files(self, artifact: Artifact) -> list[str]:
        """The artifact's files (manifest names) this backend loads: its ONNX graphs unless overridden."""
        files = artifact.manifest.files
        return [name for g in artifact.graphs for name in (g.file, f"{g.file}.data") if name in files]

    @abstractmethod
    def runners(self, artifact: Artifact, device: str | None, threads: int | None) -> list[Runner]:
        """One Runner per graph of the artifact, in chain order; BackendUnavailable when it cannot."""
