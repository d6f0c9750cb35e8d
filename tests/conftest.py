"""Shared fixtures: small models and images the tests build themselves (no downloads)."""

from __future__ import annotations

import pytest
import torch


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
