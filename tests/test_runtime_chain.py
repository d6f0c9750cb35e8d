"""runtime/contract/chain.py: graphs fed by tensor name, and the check that they connect."""

from __future__ import annotations

import numpy as np
import pytest

from maskclip_runtime.backends.base import Runner
from maskclip_runtime.contract.chain import chain_problem, run_chain


class Affine(Runner):
    """output = input * scale + shift, one named tensor in and one out."""

    def __init__(self, source: str, target: str, scale: float, shift: float):
        self.source, self.target, self.scale, self.shift = source, target, scale, shift

    @property
    def input_names(self) -> list[str]:
        return [self.source]

    @property
    def output_names(self) -> list[str]:
        return [self.target]

    def infer(self, feed):
        return {self.target: feed[self.source] * self.scale + self.shift}


def test_each_graph_is_fed_by_name_from_the_batch_and_earlier_outputs():
    image = np.arange(6, dtype=np.float32).reshape(2, 3)
    runners = [Affine("image", "features", 2.0, 1.0), Affine("features", "fake_prob", 0.5, 0.0)]
    seen = []
    tensors = run_chain(runners, {"image": image}, on_feed=lambda i, feed: seen.append((i, sorted(feed))))
    np.testing.assert_array_equal(tensors["features"], image * 2 + 1)
    np.testing.assert_array_equal(tensors["fake_prob"], (image * 2 + 1) * 0.5)
    np.testing.assert_array_equal(tensors["image"], image)
    assert seen == [(0, ["image"]), (1, ["features"])]


@pytest.mark.parametrize(
    "graphs, connects",
    [
        ([("fused", ["image"], ["fake_prob", "mask"])], True),
        ([("clip", ["image"], ["maps"]), ("heads", ["maps", "image"], ["fake_prob", "mask"])], True),
        ([("heads", ["maps"], ["fake_prob", "mask"]), ("clip", ["image"], ["maps"])], False),  # out of order
        ([("screen", ["image"], ["fake_prob"])], False),  # no mask
    ],
)
def test_chain_problem(graphs, connects):
    assert (chain_problem(graphs) is None) == connects
