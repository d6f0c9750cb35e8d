"""Micro-batching: concurrent requests share forward passes, behind a bounded queue.

One thread owns the Detector and runs one forward pass at a time. When the first image of a batch
arrives it waits at most `max_wait_ms` for more, up to the Detector's batch size, then runs them
together: at low load a request pays at most that wait, at high load every pass is full. The
queue is bounded in images, so past the bound a request is refused at once (the server answers
429) instead of waiting ever longer and holding ever more decoded images in memory.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from ..detect.detector import Detection, Detector, PreparedImage


class QueueFull(Exception):
    """The queue cannot take these images now; the client should retry later (HTTP 429)."""


class Draining(Exception):
    """The batcher is shutting down and takes no new work (HTTP 503)."""


@dataclass
class _Job:
    image: PreparedImage
    masks_for: str  # the request's policy: images of one batch may differ, they still share the screen pass
    future: Future  # -> Detection
    queued_at: float  # time.monotonic()


class MicroBatcher:
    """Queue PreparedImages, run them through `detector` in batches, resolve one Future per image.

    on_batch(size, seconds) and on_depth(images waiting) report to the metrics.
    """

    def __init__(
        self,
        detector: Detector,
        max_wait_ms: float,
        max_queue: int,
        on_batch: Callable[[int, float], None] = lambda size, seconds: None,
        on_depth: Callable[[int], None] = lambda depth: None,
    ):
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.detector = detector
        self.max_wait = max_wait_ms / 1e3
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._on_depth = on_depth
        self._jobs: deque[_Job] = deque()
        self._closing = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._serve, name="maskclip-batcher", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        return len(self._jobs)

    def submit(self, images: list[PreparedImage], masks_for: str = "all") -> list[Future]:
        """Queue all of `images` or none of them (QueueFull, Draining); one Future[Detection] each."""
        with self._changed:
            if self._closing:
                raise Draining("the server is shutting down")
            if len(self._jobs) + len(images) > self.max_queue:
                raise QueueFull(f"queue full ({len(self._jobs)} of {self.max_queue} images waiting)")
            now = time.monotonic()
            jobs = [_Job(image, masks_for, Future(), now) for image in images]
            self._jobs.extend(jobs)
            self._on_depth(len(self._jobs))
            self._changed.notify()
        return [job.future for job in jobs]

    def close(self) -> None:
        """Refuse new work, finish everything already queued, then stop the thread."""
        with self._changed:
            self._closing = True
            self._changed.notify()
        self._thread.join()

    def _serve(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._run(batch)

    def _next_batch(self) -> list[_Job] | None:
        """Wait for work, then for a full batch or the oldest job's max wait; None once closed and empty."""
        size = self.detector.batch_size
        with self._changed:
            while not self._jobs:
                if self._closing:
                    return None
                self._changed.wait()
            deadline = self._jobs[0].queued_at + self.max_wait
            while len(self._jobs) < size and not self._closing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            batch = []
            while self._jobs and len(batch) < size:
                job = self._jobs.popleft()
                # A job whose request timed out was cancelled: skip it rather than spend the model on it.
                if job.future.set_running_or_notify_cancel():
                    batch.append(job)
            self._on_depth(len(self._jobs))
        return batch

    def _run(self, batch: list[_Job]) -> None:
        if not batch:
            return
        started = time.perf_counter()
        try:
            detections: list[Detection] = self.detector.detect_prepared(
                [job.image for job in batch], [job.masks_for for job in batch]
            )
        except Exception as exc:  # ONNX Runtime / TensorRT raise their own classes; the requests get the error
            for job in batch:
                job.future.set_exception(exc)
            return
        self._on_batch(len(batch), time.perf_counter() - started)
        for job, detection in zip(batch, detections, strict=True):
            job.future.set_result(detection)
