"""maskclip-run --ray: the same pipeline on a Ray cluster, with Ray Data.

    inputs (index, path or URI) --Ray tasks: pipeline.decode--> pickled Items
        --actor pool, one Detector each: pipeline.answer--> record rows (RECORD_FIELDS, one Arrow schema)
        --> back to maskclip-run's JSON lines / CSV writers, in input order, or --parquet DIR written by the workers

Each actor loads the artifact once and runs its self-check on its own node, refusing as the plain run does.
Ray Data restarts an actor that dies and retries its batch (max_restarts / max_task_retries -1), and a batch's
rows reach the driver once: every input gets exactly one record, a failed image an error record. The driver
needs the artifact folder, the workers the same path (a shared or copied folder); inputs are local paths
(the same on every node) or URIs of any file system pyarrow knows (s3://, gs://, hdfs://, file://).

Ray is imported here only, and only when --ray is given: the base install and --help never need it.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import signal
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass

from ..contract.artifact import load_artifact
from ..detect.detector import Detector
from ..errors import BackendUnavailable, MaskclipError, NotFinished, message_of
from ..pipeline.steps import ImageSink, Plan, answer, decode
from ..present.outputs import RECORD_FIELDS

RAY_HINT = "pip install 'maskclip[ray]'"
CONNECT_TIMEOUT_S = 10.0
# Inputs per Ray Data block: the unit that streams back (and that a killed actor's retry redoes). Small enough
# that records reach the tables steadily, large enough that a million inputs stay ~16k blocks.
BLOCK_IMAGES = 64

# Arrow types of the record's fields (strings where not named): one schema for every batch, so Parquet
# parts written by different workers form one table.
_FIELD_TYPES = {
    "index": "int64",
    "width": "int64",
    "height": "int64",
    "fake_prob": "float64",
    "calibrated_prob": "float64",
    "threshold": "float64",
    "uncertain_below": "float64",
    "mask_fraction": "float64",
    "mask_computed": "bool_",
    "demo": "bool_",
    "ms": "float64",
}


@dataclass(frozen=True)
class DetectorOptions:
    """What each actor opens its Detector with (maskclip-run's model options)."""

    path: str  # the artifact folder, at the same path on every node
    backend: str = "auto"
    device: str | None = None
    threads: int | None = None
    threshold: float | None = None
    batch: int | None = None
    self_check: bool = True
    strict: bool = False


@dataclass(frozen=True)
class Cluster:
    """--ray ADDRESS ("local": a cluster started for this run), --ray-actors, --ray-gpus-per-actor."""

    address: str
    actors: int = 1
    gpus_per_actor: float = 0.0


def record_schema():
    import pyarrow as pa

    return pa.schema([(name, getattr(pa, _FIELD_TYPES.get(name, "string"))()) for name in ("index", *RECORD_FIELDS)])


def _decode_batch(batch: dict, spec: dict, plan: Plan) -> dict:
    """A Ray task: paths -> pickled Items (decoded, hashed, prepared; or their error)."""
    from ..kernel.preprocess import PreprocessSpec

    preprocess = PreprocessSpec.from_dict(spec)
    items = [pickle.dumps(decode(str(source), preprocess, plan)) for source in batch["source"]]
    return {"index": batch["index"], "item": items}


class _Answerer:
    """A Ray actor: one Detector (self-checked here), Items -> record rows."""

    def __init__(self, options: DetectorOptions, plan: Plan, images: ImageSink):
        self.plan = plan
        self.images = images
        # A refusal (failed self-check, unusable artifact or backend) is raised with the first batch, where Ray
        # Data hands the driver the exception itself; raised here, only its text would survive the dead actor.
        self.refusal: MaskclipError | None = None
        try:
            self.detector = Detector(**asdict(options))
        except MaskclipError as exc:
            self.refusal = exc

    def __call__(self, batch: dict):
        import pyarrow as pa

        if self.refusal is not None:
            raise self.refusal
        items = [pickle.loads(blob) for blob in batch["item"]]  # made by _decode_batch in this job
        records = answer(self.detector, items, self.plan, self.images)
        rows = [{"index": int(index), **record} for index, record in zip(batch["index"], records, strict=True)]
        return pa.Table.from_pylist(rows, schema=record_schema())


def row_record(row: dict) -> dict:
    """A record row back to the record maskclip-run writes: an error record has only path and error."""
    if row.get("error") is not None:
        return {"path": row["path"], "error": row["error"]}
    return {name: row.get(name) for name in RECORD_FIELDS if name != "error"}


class RayScan:
    """One scan on a Ray cluster: `records(sources, plan, images)` yields one record per source, in order.

    Looks like the Detector where maskclip-run reads it (model_id, artifact, threshold, backend, close), from
    the artifact alone: the driver loads no model and needs no accelerator."""

    def __init__(self, options: DetectorOptions, cluster: Cluster):
        self.ray = import_ray()
        self.options = options
        self.cluster = cluster
        self.artifact = load_artifact(options.path)
        self.threshold = self.artifact.threshold if options.threshold is None else options.threshold
        self.backend = f"{options.backend} on Ray ({cluster.actors} actors)"
        _connect(self.ray, cluster.address)

    @property
    def model_id(self) -> str:
        return self.artifact.model_id

    def dataset(self, sources: Sequence[str], plan: Plan, images: ImageSink):
        """The Ray Data plan: read inputs, decode in tasks, answer in the actor pool -> record rows."""
        data = self.ray.data
        context = data.DataContext.get_current()
        context.execution_options.preserve_order = True  # records reach the tables in input order
        batch = max(1, self.options.batch or self.artifact.batch.opt)
        rows = [{"index": index, "source": source} for index, source in enumerate(sources)]
        spec = self.artifact.preprocess.to_dict()
        return (
            data.from_items(rows, override_num_blocks=math.ceil(len(rows) / BLOCK_IMAGES))
            .map_batches(_decode_batch, fn_kwargs={"spec": spec, "plan": plan}, batch_size=batch)
            .map_batches(
                _Answerer,
                fn_constructor_kwargs={"options": self.options, "plan": plan, "images": images},
                batch_size=batch,
                compute=data.ActorPoolStrategy(size=self.cluster.actors),
                num_gpus=self.cluster.gpus_per_actor or None,
                batch_format="pyarrow",
            )
        )

    def records(self, sources: Sequence[str], plan: Plan, images: ImageSink) -> Iterator[dict]:
        if not sources:
            return
        with _job_errors():
            for batch in self.dataset(sources, plan, images).iter_batches(batch_format="pyarrow", batch_size=None):
                yield from map(row_record, batch.to_pylist())

    def write_parquet(self, sources: Sequence[str], plan: Plan, images: ImageSink, folder: str) -> list[dict]:
        """The workers write the records as Parquet parts into `folder`; returns the error records (path, error)."""
        import pyarrow.dataset

        with _job_errors():
            self.dataset(sources, plan, images).write_parquet(folder)
        table = pyarrow.dataset.dataset(folder, format="parquet", schema=record_schema()).to_table(
            columns=["path", "error"], filter=pyarrow.dataset.field("error").is_valid()
        )
        return table.to_pylist()

    def close(self) -> None:
        """End the job: the driver leaving stops its tasks and actors (a local cluster stops with it)."""
        self.ray.shutdown()


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401 - the Data library comes with the extra, not with plain `ray`
    except ImportError:
        raise BackendUnavailable(f"--ray needs Ray Data: {RAY_HINT}") from None
    return ray


def _connect(ray, address: str) -> None:
    # Ray's own log lines (startup notes, a failed job's internal stack) are not maskclip-run's output: the run
    # reports per-image errors and a failed job in its own one-line form.
    logging.getLogger("ray").setLevel(logging.ERROR)
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # the core worker's C++ log lines on stderr
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.raise_original_map_exception = True  # a worker's MaskclipError reaches the driver as itself
    if address != "local":
        _check_reachable(address)
    # ray.init makes SIGTERM exit the driver at once; maskclip-run's own handler stops the run like Ctrl-C
    # (answers kept, exit status 143), and the job ends with the driver.
    on_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        if address == "local":
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise BackendUnavailable(
            f"cannot reach the Ray cluster at {address}: {message_of(exc)} (a cluster with token authentication "
            f"also needs RAY_AUTH_MODE=token and its token: RAY_AUTH_TOKEN or ~/.ray/auth_token)"
        ) from None
    finally:
        with suppress(ValueError, TypeError):  # not the main thread / a handler set outside Python
            signal.signal(signal.SIGTERM, on_sigterm)


def _check_reachable(address: str) -> None:
    """A HOST:PORT that nothing answers on is refused at once (ray.init would keep retrying for minutes)."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # ray://, auto: left to Ray
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise BackendUnavailable(f"cannot reach the Ray cluster at {address}: {message_of(exc)}") from None


@contextmanager
def _job_errors():
    """A failed Ray job as maskclip-run's error: the MaskclipError an actor raised (a failed self-check, an
    unusable artifact) with its own exit status, anything else as 'could not finish', naming what failed."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - Ray wraps what failed on a worker in its own classes
        cause = _root_cause(exc)  # a worker's MaskclipError arrives as RayTaskError(ThatClass): its .cause
        if isinstance(cause, MaskclipError):
            raise cause from None
        raise NotFinished(f"the Ray job failed: {type(cause).__name__}: {message_of(cause)}") from None


def _root_cause(exc: BaseException) -> BaseException:
    """What a worker raised, inside Ray's wrappers (RayTaskError, UserCodeException, ActorDiedError)."""
    seen = {id(exc)}
    while True:
        inner = getattr(exc, "cause", None) or exc.__cause__
        if inner is None or id(inner) in seen:
            return exc
        seen.add(id(inner))
        exc = inner
