"""Graph chaining: a split or cascade artifact is several graphs, each fed by tensor name from the
batch and the outputs of the graphs before it. The runtime, the export gate, int8 calibration and
the Triton check all run a chain through here, so they cannot disagree on how graphs connect."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .artifact import ArtifactError
from .backends.base import Runner

FeedObserver = Callable[[int, dict[str, np.ndarray]], None]


def run_chain(
    runners: Sequence[Runner], tensors: dict[str, np.ndarray], on_feed: FeedObserver | None = None
) -> dict[str, np.ndarray]:
    """Run the graphs in order -> every tensor: the given ones and each graph's outputs, by name.

    on_feed(i, feed) sees graph i's inputs before it runs (int8 calibration records them)."""
    tensors = dict(tensors)
    for i, runner in enumerate(runners):
        feed = {name: tensors[name] for name in runner.input_names}
        if on_feed is not None:
            on_feed(i, feed)
        tensors.update(runner.infer(feed))
    return tensors


def check_chain(runners: Sequence[Runner]) -> None:
    """Every graph input must be the image or an earlier graph's output; the chain must end in fake_prob and mask."""
    available = {"image"}
    for runner in runners:
        missing = [name for name in runner.input_names if name not in available]
        if missing:
            raise ArtifactError(f"graph inputs {missing} are produced by no earlier graph; re-export the artifact")
        available.update(runner.output_names)
    absent = [name for name in ("fake_prob", "mask") if name not in available]
    if absent:
        raise ArtifactError(f"the artifact's graphs produce no {absent}; re-export the artifact")
