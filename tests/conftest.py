"""Shared fixtures: small models and images the tests build themselves (no downloads)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def self_check_cache(tmp_path_factory):
    """Passed self-checks are cached per machine; tests keep theirs out of the user's cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MASKCLIP_CACHE_DIR", str(tmp_path_factory.mktemp("self-check-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def tiny_model():
    """A randomly initialised `tiny` MaskCLIP in eval mode (seeded: the same weights every run)."""
    from maskclip_core.model import build_model

    torch.manual_seed(0)
    return build_model("tiny").eval()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Two shared cores: torch's thread pool spinning against other processes costs 100x here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
