"""Graph chaining: a split or cascade artifact is several graphs, each fed by tensor name from the
batch and the outputs of the graphs before it. The manifest check, the runtime, the export gate, int8
calibration and the Triton check all go through here, so they cannot disagree on how graphs connect."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import numpy as np

FeedObserver = Callable[[int, dict[str, np.ndarray]], None]


class Graph(Protocol):
    """What chaining needs of a graph: a backends.base.Runner is one (the contract does not depend on the
    backends, they depend on it)."""

    @property
    def input_names(self) -> list[str]: ...

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def run_chain(
    runners: Sequence[Graph], tensors: dict[str, np.ndarray], on_feed: FeedObserver | None = None
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


def chain_problem(graphs: Iterable[tuple[str, Iterable[str], Iterable[str]]]) -> str | None:
    """(name, input names, output names) of each graph, in order -> why they do not chain from "image" to
    fake_prob and mask, or None when they do."""
    available = {"image"}
    for name, inputs, outputs in graphs:
        missing = [tensor for tensor in inputs if tensor not in available]
        if missing:
            return f"graph {name!r} needs {missing}, produced by no earlier graph"
        available.update(outputs)
    absent = [tensor for tensor in ("fake_prob", "mask") if tensor not in available]
    return f"no graph produces {absent}" if absent else None
