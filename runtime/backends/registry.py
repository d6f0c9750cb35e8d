"""The backend registry: every backend the runtime can run an artifact on, and the rule of "auto".

Like Ultralytics' backend map and Polygraphy's runner groups: each backend is one module in this
folder that declares a `BACKEND` (a `base.Backend`: name, availability probe, runner factory, rank
in "auto"), and BACKEND_MODULES below lists those modules. Everything that lists or picks backends
reads this module: the Detector (`build_runners`), --backend choices (`choices`), maskclip-bench's
rows (`Backend.short` with the precision table), maskclip-triton (`Backend.triton_platform`),
`maskclip-info --backends` (`availability`), the self-check's cache key (`Backend.packages`) and
the early refusals of run, serve, bench and export --trt (`require`).

Adding a backend, e.g. OpenVINO:

1. runtime/backends/openvino.py: a Runner subclass (base.py), and

       class OpenVINOBackend(Backend):
           name, short, rank, packages = "openvino", "ov", 30, ("openvino",)
           def probe(self):
               return None if importlib.util.find_spec("openvino") else "OpenVINO is not installed: pip install ..."
           def runners(self, artifact, device, threads):
               return [OpenVINORunner(artifact.file(g.file), device, threads) for g in artifact.graphs]

       BACKEND = OpenVINOBackend()

   (optional, see base.Backend: `gpu_only`, `artifact_problem` for files it needs beyond the ONNX
   graphs, `model_files`, `triton_platform`);

2. "openvino" in BACKEND_MODULES below;
3. its rows: "openvino" in the `backends` of the precision table's rows it may run
   (runtime/contract/precision_table.py), which gives it maskclip-bench rows (ov-fp32, ...).

Declaring imports nothing heavy: a probe uses importlib.util.find_spec or imports inside itself.
"""

from __future__ import annotations

import importlib
import logging
from functools import cache

from ..contract.precision_table import precision_row
from ..errors import BackendUnavailable, UsageError, message_of
from ..kernel.devices import parse_device
from .base import Backend, Runner

log = logging.getLogger("maskclip_runtime")

AUTO = "auto"


class BackendChoiceError(UsageError, ValueError):
    """A backend name that is not registered, or a backend that cannot run the model given (status 2)."""


#: the backend modules of this package, each declaring BACKEND
BACKEND_MODULES = ("onnxruntime", "tensorrt", "openvino")


@cache
def backends() -> dict[str, Backend]:
    """name -> Backend of every registered backend, in "auto" order (rank, then name)."""
    declared = [importlib.import_module(f"{__package__}.{module}").BACKEND for module in BACKEND_MODULES]
    return {b.name: b for b in sorted(declared, key=lambda b: (b.rank, b.name))}


def names() -> tuple[str, ...]:
    return tuple(backends())


def choices() -> tuple[str, ...]:
    """The values --backend takes: "auto" and every registered backend."""
    return (AUTO, *backends())


def get(name: str) -> Backend:
    """The registered backend called `name`; BackendChoiceError naming the known ones."""
    try:
        return backends()[name]
    except KeyError:
        raise BackendChoiceError(f"unknown backend {name!r}: use one of {', '.join(choices())}") from None


def require(name: str) -> None:
    """BackendUnavailable (status 4) with the probe's line unless the named backend can run here.

    Cheap next to loading a model: callers use it to refuse before any work. "auto" always passes."""
    problem = None if name == AUTO else get(name).probe()
    if problem:
        raise BackendUnavailable(problem)


def availability() -> list[dict]:
    """One row per registered backend, in "auto" order: name, rank, whether it can run here and why not."""
    rows = []
    for backend in backends().values():
        problem = backend.probe()
        rows.append(
            {
                "name": backend.name,
                "rank": backend.rank,
                "available": problem is None,
                "reason": problem,
                "gpu_only": backend.gpu_only,
                "triton_platform": backend.triton_platform,
            }
        )
    return rows


def _on_cpu(device: str | None) -> bool:
    return device is not None and not parse_device(device).gpu


def auto_order(artifact) -> list[Backend]:
    """The backends "auto" tries for this artifact on this host, in order: those the precision table lets run
    its precision, by `auto_rank` (a backend may move up for some precisions and hosts)."""
    runs_precision = precision_row(artifact.precision).backends
    eligible = [b for b in backends().values() if b.name in runs_precision]
    return sorted(eligible, key=lambda b: (b.auto_rank(artifact), b.name))


def build_runners(artifact, backend: str, device: str | None, threads: int | None) -> list[Runner]:
    """The runners of `artifact` on the named backend, or for "auto" on the first backend, in `auto_rank`
    order among those the precision table lets run the artifact's precision, that has what it runs in the
    artifact, suits the device, passes its probe and builds."""
    runs_precision = precision_row(artifact.precision).backends
    if backend != AUTO:
        if backend not in runs_precision:
            raise BackendChoiceError(
                f"{artifact.precision} artifacts run on {' / '.join(runs_precision)}, not {backend}: use --backend "
                f"{runs_precision[0]} or export another precision"
            )
        return get(backend).runners(artifact, device, threads)
    tried = []
    for candidate in auto_order(artifact):
        skip = (
            (candidate.gpu_only and _on_cpu(device) and "needs a CUDA device")
            or candidate.artifact_problem(artifact)
            or candidate.probe()
        )
        if skip:
            log.debug(f"auto: {candidate.name} skipped: {skip}")
            tried.append(f"{candidate.name}: {skip}")
            continue
        try:
            return candidate.runners(artifact, device, threads)
        except BackendUnavailable as exc:
            log.warning(f"WARNING: {candidate.name} cannot run this artifact here ({message_of(exc)}); falling back")
            tried.append(f"{candidate.name}: {message_of(exc)}")
    raise BackendUnavailable(f"no backend can run this artifact here ({'; '.join(tried)})")
