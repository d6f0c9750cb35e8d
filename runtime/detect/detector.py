"""Detector: one artifact, one backend, images in, per-image verdicts and original-size masks out.

`Detector()` runs the embedded demo model (runtime/demo: `tiny`, trained on synthetic edits only);
`detect` takes what callers have: PIL images, HxWx3 uint8 RGB arrays or file paths, one or a list.

The artifact decides everything model-specific (preprocessing, threshold, graph chain, batch
profile); the caller only picks where to run. Split artifacts (clip -> trunk -> heads) are
chained by tensor name, so callers never see the difference from a fused graph.

Cascade artifacts (screen -> localise) let a caller ask for masks only where they are wanted
(`masks_for`): the screen graph gives every image its verdict, the localise graph then runs on the
sub-batch that needs a mask. The graphs that make fake_prob are found from the chain itself (the
leading graphs up to the first one producing it), so verdicts are the same numbers whatever
`masks_for` is.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from ..backends.base import Runner
from ..contract.artifact import Artifact, ArtifactError, load_artifact
from ..contract.chain import chain_problem, run_chain
from ..contract.engine_header import EngineFileError, read_engine_metadata
from ..contract.manifest import engine_source_problem
from ..contract.precision_table import precision_row
from ..contract.verdict_calibration import PLAIN_OPERATING_POINT
from ..errors import BackendUnavailable
from ..kernel.devices import parse_device
from ..kernel.host import Host, current_host
from ..kernel.preprocess import load_image, resize_and_normalize, resize_probability_map, to_rgb8
from .selfcheck import SelfCheckResult
from .selfcheck import self_check as run_self_check

log = logging.getLogger("maskclip_runtime")

BACKENDS = ("auto", "onnxruntime", "tensorrt", "openvino")
MASKS_FOR = ("all", "fake", "none")  # which images get a mask: every one, those judged fake, none
DEMO_DIR = Path(__file__).resolve().parent.parent / "demo"  # the embedded demo model's artifact

ImageInput = Image.Image | np.ndarray | str | os.PathLike  # what `detect` takes for one image


def wants_mask(masks_for: str, verdict: str) -> bool:
    """Whether an image with this verdict gets a mask under this policy ("fake" covers "uncertain" too)."""
    return masks_for == "all" or (masks_for == "fake" and verdict != "real")


@dataclass(frozen=True)
class Detection:
    """The answer for one image.

    The original-size mask is made on first use: callers that only want the verdict skip the
    resize, and the CLI does it in its worker threads instead of between two inference calls.
    An image left out by `masks_for` has no mask (model_mask, mask and mask_fraction are None).
    """

    fake_prob: float  # probability that the image contains generated content (raw softmax)
    verdict: str  # plain: "fake" when fake_prob > threshold, else "real"; calibrated: real/uncertain/fake
    threshold: float  # plain verdict and mask threshold
    width: int
    height: int
    ms: float  # this image's share of the wall time: preprocess + inference
    model_mask: np.ndarray | None  # float32 [S, S] as the model produced it; None: not asked for
    calibrated_prob: float | None = None  # temperature-scaled fake_prob, when the artifact has a calibration
    operating_point: str = PLAIN_OPERATING_POINT  # what decided the verdict
    band: tuple[float, float] | None = None  # calibrated (real <=, fake >) thresholds of a calibrated verdict
    mask_policy: str = "resize"  # how the mask was made: the global view resized, or tiles (tiling.py)

    @property
    def verdict_threshold(self) -> float:
        """The threshold above which the verdict is "fake" (on calibrated_prob when calibrated)."""
        return self.band[1] if self.band else self.threshold

    @property
    def mask_computed(self) -> bool:
        return self.model_mask is not None

    @cached_property
    def mask(self) -> np.ndarray | None:
        """float32 [height, width]: per-pixel probability of being generated, at the image's own size."""
        if self.model_mask is None:
            return None
        return resize_probability_map(self.model_mask, self.width, self.height)

    @cached_property
    def mask_fraction(self) -> float | None:
        """Share of pixels whose probability is > threshold."""
        if self.mask is None:
            return None
        return float(np.count_nonzero(self.mask > self.threshold)) / self.mask.size


@dataclass(frozen=True)
class PreparedImage:
    """An image resized and normalised for the model; made by Detector.prepare (thread-safe)."""

    tensor: np.ndarray  # float32 [3, S, S]
    width: int
    height: int
    ms: float


class Detector:
    """Run an exported MaskCLIP artifact.

    path: artifact folder or its manifest.json; None: the embedded demo model (DEMO_DIR).
    backend: "auto" (TensorRT engines when the artifact has them and TensorRT is installed, else
    ONNX Runtime), "onnxruntime" or "tensorrt".
    device: "cpu", "cuda", "cuda:N" (ONNX Runtime also takes "tensorrt[:N]" for its TensorRT
    provider); None picks the GPU when the backend can use one. batch: images per forward pass,
    capped by the artifact's profile (fixed-batch artifacts always run their own size).
    self_check: run the artifact's canaries on this backend and device first and raise SelfCheckFailed
    when they disagree with PyTorch (`selfcheck.py`; a pass is cached per machine). strict: refuse,
    instead of warning, an artifact that assumes CPU features this host lacks.
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        backend: str = "auto",
        device: str | None = None,
        threads: int | None = None,
        threshold: float | None = None,
        batch: int | None = None,
        self_check: bool = True,
        strict: bool = False,
    ):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
        self.artifact: Artifact = load_artifact(DEMO_DIR if path is None else path)
        self.threshold = self.artifact.threshold if threshold is None else float(threshold)
        # An explicit threshold replaces the calibrated operating point (calibrated_prob is still given).
        self.calibration = self.artifact.calibration
        self.calibrated_verdicts = self.calibration is not None and threshold is None
        self.batch_size = _batch_size(self.artifact, batch)
        self.device = device or "default"
        self._runners = _build_runners(self.artifact, backend, device, threads)
        _check_chain(self.artifact, self._runners)
        self._screen_graphs = _verdict_stage_length(self._runners)
        if self.backend.startswith("onnxruntime-cpu"):
            _check_cpu_features(self.artifact, strict)
        self.self_check: SelfCheckResult = SelfCheckResult("skipped")
        if self_check:
            try:
                self.self_check = run_self_check(self)
            except BaseException:
                self.close()
                raise

    @property
    def model_id(self) -> str:
        return self.artifact.model_id

    @property
    def backend(self) -> str:
        return self._runners[0].backend

    @property
    def cascade(self) -> bool:
        """True when the verdict comes from graphs that do not make the mask (masks can be skipped)."""
        return self._screen_graphs < len(self._runners)

    def prepare(self, image: Image.Image, size: tuple[int, int] | None = None) -> PreparedImage:
        """Resize and normalise one image; safe to call from worker threads.

        size: (width, height) the mask is returned at, when the image was decoded at reduced size."""
        start = time.perf_counter()
        tensor = resize_and_normalize(image, self.artifact.preprocess)
        width, height = size or image.size
        return PreparedImage(tensor, width, height, (time.perf_counter() - start) * 1e3)

    def detect(self, images: ImageInput | Sequence[ImageInput], masks_for: str = "all") -> Detection | list[Detection]:
        """One image -> one Detection; a list (or tuple) of images -> a list of Detections, in order.

        An image is a PIL image (any mode, converted to RGB), an HxWx3 uint8 RGB numpy array or a file
        path (str or os.PathLike, decoded upright through the runtime's loader), at any size.
        Anything else raises TypeError; an array of another shape raises ValueError; an undecodable file
        raises ImageLoadError (a ValueError) naming it.
        masks_for: "all", "fake" (only images not judged real get a mask: "fake", and "uncertain" under a
        calibrated verdict) or "none". On a cascade artifact the images left out skip the localise graph;
        elsewhere they only skip the mask resize.
        """
        single = not isinstance(images, list | tuple)
        items = [images] if single else images
        detections = self.detect_prepared([self.prepare(as_rgb_image(item)) for item in items], masks_for)
        return detections[0] if single else detections

    def detect_prepared(self, prepared: list[PreparedImage], masks_for: str | Sequence[str] = "all") -> list[Detection]:
        """PreparedImages -> Detections. masks_for: one policy for all, or one per image (a server's
        micro-batch mixes requests that asked for different ones: they still share one screen pass)."""
        policies = [masks_for] * len(prepared) if isinstance(masks_for, str) else list(masks_for)
        if len(policies) != len(prepared):
            raise ValueError(f"masks_for has {len(policies)} policies for {len(prepared)} images")
        unknown = sorted(set(policies) - set(MASKS_FOR))
        if unknown:
            raise ValueError(f"masks_for must be one of {', '.join(MASKS_FOR)}, got {unknown[0]!r}")
        detections = []
        for start in range(0, len(prepared), self.batch_size):
            chunk = prepared[start : start + self.batch_size]
            began = time.perf_counter()
            fake_prob, tensors = self.screen(np.stack([p.tensor for p in chunk]))
            screened = time.perf_counter()
            # Each image shares the screen's time; the localise time is shared by the images it masked.
            screen_ms = (screened - began) * 1e3 / len(chunk)
            answers = [
                self._detection(item, float(p), None, screen_ms) for item, p in zip(chunk, fake_prob, strict=True)
            ]
            rows = [i for i, a in enumerate(answers) if wants_mask(policies[start + i], a.verdict)]
            if rows:
                masks = self.localise(tensors, rows)
                localise_ms = (time.perf_counter() - screened) * 1e3 / len(rows)
                for i, mask in zip(rows, masks, strict=True):
                    answers[i] = replace(answers[i], model_mask=mask, ms=answers[i].ms + localise_ms)
            detections += answers
        return detections

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 [n,3,S,S] with n <= batch_size -> (fake_prob [n], mask probability [n,S',S'])."""
        fake_prob, tensors = self.screen(batch)
        return fake_prob, self.localise(tensors, list(range(len(fake_prob))))

    def screen(self, batch: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """float32 [n,3,S,S] with n <= batch_size -> (fake_prob [n], the chain's tensors so far).

        Runs the graphs up to the one that makes fake_prob (all of them unless the artifact is a cascade);
        the tensors keep the padded batch, for `localise`."""
        n = len(batch)
        if n > self.batch_size:
            raise ValueError(f"forward takes at most {self.batch_size} images, got {n}")
        tensors = run_chain(self._runners[: self._screen_graphs], {"image": self._pad(batch)})
        # Copy: a runner may hand out views of buffers it reuses (TensorRT's pinned host memory).
        return tensors["fake_prob"].reshape(-1)[:n].copy(), tensors

    def localise(self, tensors: dict[str, np.ndarray], rows: list[int]) -> np.ndarray:
        """Masks [len(rows),S',S'] for the given rows of a screened batch: the remaining graphs run on
        that sub-batch only (nothing runs when the screen already made the mask)."""
        if self.cascade:
            batch = len(tensors["image"])
            if rows != list(range(batch))[: len(rows)] or self._pad_size(len(rows)) != batch:
                tensors = {name: self._pad(value[rows]) for name, value in tensors.items()}
            tensors = run_chain(self._runners[self._screen_graphs :], tensors)
            rows = list(range(len(rows)))
        mask = tensors["mask"]
        if mask.ndim == 4:  # [B,1,S,S] -> [B,S,S]
            mask = mask[:, 0]
        # A copy (fancy indexing): Detections keep their mask beyond the next call.
        return mask[rows]

    def _pad_size(self, n: int) -> int:
        return max(n, self.artifact.batch.min) if self.artifact.batch.dynamic else self.artifact.batch.max

    def _pad(self, batch: np.ndarray) -> np.ndarray:
        """Fixed-batch graphs need full batches; repeating a real image keeps the filler in-distribution."""
        padded = self._pad_size(len(batch))
        if padded == len(batch):
            return batch
        return np.concatenate([batch, np.repeat(batch[-1:], padded - len(batch), axis=0)])

    def _detection(self, item: PreparedImage, fake_prob: float, mask: np.ndarray | None, shared_ms: float) -> Detection:
        verdict = "fake" if fake_prob > self.threshold else "real"
        ms = item.ms + shared_ms
        if self.calibration is None:
            return Detection(fake_prob, verdict, self.threshold, item.width, item.height, ms, mask)
        calibrated = float(self.calibration.calibrate(fake_prob))
        operating_point, band = PLAIN_OPERATING_POINT, None
        if self.calibrated_verdicts:
            verdict = str(self.calibration.verdicts(calibrated))
            operating_point, band = self.calibration.fake_point, self.calibration.band
        return Detection(
            fake_prob, verdict, self.threshold, item.width, item.height, ms, mask, calibrated, operating_point, band
        )

    def close(self) -> None:
        for runner in self._runners:
            runner.close()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def as_rgb_image(item: ImageInput) -> Image.Image:
    """One `detect` input -> an RGB PIL image; TypeError / ValueError name what was wrong with it."""
    if isinstance(item, Image.Image):
        return to_rgb8(item)
    if isinstance(item, str | os.PathLike):
        return load_image(item)
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8:
            raise TypeError(f"an image array must be uint8 RGB, got dtype {item.dtype}")
        if item.ndim != 3 or item.shape[2] != 3:
            raise ValueError(f"an image array must be HxWx3 (RGB), got shape {item.shape}; pass a list for several")
        return Image.fromarray(np.ascontiguousarray(item))
    raise TypeError(f"an image is a PIL image, an HxWx3 uint8 array or a path, not {type(item).__name__}")


def _check_cpu_features(artifact: Artifact, strict: bool) -> None:
    """Int8 graphs built for one CPU's kernels can compute differently on a CPU without them."""
    required = artifact.cpu_features
    missing = current_host().missing(required)
    if not missing:
        return
    wanted = ", ".join(" or ".join(alternatives) for alternatives in missing)
    message = (
        f"this {artifact.precision} artifact assumes CPU features this host lacks ({wanted}) "
        f"on {current_host().cpu}; its results may differ from the verified ones (re-export with maskclip-export "
        f"--precision int8-cpu for a portable graph)"
    )
    if strict:
        raise ArtifactError(message)
    log.warning(f"WARNING: {message}")


def _batch_size(artifact: Artifact, requested: int | None) -> int:
    profile = artifact.batch
    if not profile.dynamic:
        return profile.max
    if requested is None:
        return profile.opt
    if requested < 1:
        raise ValueError(f"batch must be >= 1, got {requested}")
    return min(requested, profile.max)


def _build_runners(artifact: Artifact, backend: str, device: str | None, threads: int | None) -> list[Runner]:
    if backend == "auto":
        if _tensorrt_preferred(artifact, device):
            try:
                return _tensorrt_runners(artifact, device)
            except BackendUnavailable as exc:
                log.warning(f"WARNING: TensorRT engines not usable ({exc}); falling back to ONNX Runtime")
        backend = auto_cpu_backend(artifact.precision, current_host())
    row = precision_row(artifact.precision)
    if backend not in row.backends:
        raise BackendUnavailable(
            f"{artifact.precision} artifacts run on {' / '.join(row.backends)}, not {backend}: use --backend "
            f"{row.backends[0]} or export another precision"
        )
    if backend == "tensorrt":
        return _tensorrt_runners(artifact, device)
    if backend == "openvino":
        from ..backends.openvino import openvino_runners

        return openvino_runners(artifact, device, threads)
    return _onnxruntime_runners(artifact, device, threads)


def auto_cpu_backend(precision: str, host: Host) -> str:
    """The CPU backend `auto` runs a precision on (benchmarks/results/openvino-cpu-*.md):

    - bf16 on a CPU with native bf16 (AVX-512-bf16, AMX, ARM bf16): OpenVINO, the only CPU runtime that
      computes in bf16 (1.97x over ONNX Runtime fp32 on opensdi-vitl14, Zen 5);
    - precisions only OpenVINO runs (int8-openvino): OpenVINO;
    - everything else, bf16 without native bf16 included: ONNX Runtime. OpenVINO's fp32 is no faster
      (1.02x on vitl14, Zen 5) and on AVX2 slower (the demo model: ONNX Runtime 2x faster), and without
      native bf16 OpenVINO would run the bf16 artifact in fp32 anyway."""
    backends = precision_row(precision).backends
    if "openvino" in backends and ("onnxruntime" not in backends or (precision == "bf16" and host.native_bf16)):
        return "openvino"
    return "onnxruntime"


def _tensorrt_preferred(artifact: Artifact, device: str | None) -> bool:
    on_cpu = device is not None and not parse_device(device).gpu
    return bool(artifact.engines) and not on_cpu and importlib.util.find_spec("tensorrt") is not None


def _onnxruntime_runners(artifact: Artifact, device: str | None, threads: int | None) -> list[Runner]:
    from ..backends.onnxruntime import OnnxRuntimeRunner, default_device

    device = device or default_device()
    return [OnnxRuntimeRunner(artifact.file(g.file), device=device, threads=threads) for g in artifact.graphs]


def _tensorrt_runners(artifact: Artifact, device: str | None) -> list[Runner]:
    index = _cuda_index(device)
    engines = artifact.engines
    missing = [g.name for g in artifact.graphs if g.name not in engines]
    if missing:
        raise BackendUnavailable(
            f"the artifact has no TensorRT engine for graph(s) {', '.join(missing)}; "
            f"export with maskclip-export --trt or use --backend onnxruntime"
        )
    for graph in artifact.graphs:
        try:
            problem = engine_source_problem(artifact.manifest, graph, read_engine_metadata(engines[graph.name]))
        except EngineFileError as exc:
            problem = str(exc)
        if problem:
            raise ArtifactError(f"{artifact.dir}: {problem}; rebuild the engines with maskclip-export --trt")
    try:
        from ..backends.tensorrt import TensorRTRunner
    except ImportError as exc:
        raise BackendUnavailable(
            f"TensorRT backend is not available ({exc}); install 'maskclip[gpu]' on a CUDA machine "
            f"or use --backend onnxruntime"
        ) from None
    runners: list[Runner] = []
    try:
        for graph in artifact.graphs:
            runners.append(TensorRTRunner(engines[graph.name], device=index))
    except (RuntimeError, ValueError) as exc:  # incompatible or corrupt engine, CUDA error: one clear line
        for runner in runners:
            runner.close()
        if isinstance(exc, BackendUnavailable):
            raise
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BackendUnavailable(f"TensorRT cannot run this artifact: {reason}") from None
    return runners


def _cuda_index(device: str | None) -> int:
    """TensorRT runs on a CUDA GPU: None/'cuda'/'tensorrt' -> 0, 'cuda:N' -> N."""
    parsed = parse_device(device or "cuda")
    if not parsed.gpu:
        raise BackendUnavailable(f"TensorRT needs a CUDA device (cuda or cuda:N), not {device!r}")
    return parsed.index


def _verdict_stage_length(runners: list[Runner]) -> int:
    """How many leading graphs the verdict needs: up to and including the first that makes fake_prob."""
    return next(i + 1 for i, runner in enumerate(runners) if "fake_prob" in runner.output_names)


def _check_chain(artifact: Artifact, runners: list[Runner]) -> None:
    """The graphs as loaded (names from the files themselves) must chain like the manifest says they do."""
    graphs = zip((g.name for g in artifact.graphs), runners, strict=True)
    problem = chain_problem((name, runner.input_names, runner.output_names) for name, runner in graphs)
    if problem:
        raise ArtifactError(f"{problem}; re-export the artifact")
