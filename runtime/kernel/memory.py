"""This process's memory: its peak resident size, and handing freed heap back to the system.

Python and the libraries under it (protobuf, numpy, PyTorch's CPU allocator) free big buffers into
glibc's heap, which keeps them mapped: the process's resident size stays at its high-water mark and the
next big step stacks on top of it. `release_freed_memory` collects garbage and asks glibc to return the
free pages (malloc_trim), so that steps that run one after another do not add up.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import resource
import sys


def peak_resident_bytes() -> int:
    """The largest resident size (ru_maxrss) this process or any child it waited for reached. Not their
    sum: a forked child counts the pages it shares with its parent as its own."""
    unit = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) * unit


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, looked up in this process's own symbols (no subprocess, unlike find_library)."""
    return getattr(ctypes.CDLL(None), "malloc_trim", None)


def release_freed_memory(collect: bool = True) -> None:
    """Collect garbage and give the heap's free pages back to the system (glibc; elsewhere only the collection).

    collect=False only hands back what is already free: a full collection walks every live object (0.3-1 s
    with torch loaded), worth it where a step leaves big cyclic garbage (a traced or slimmed graph), not
    between every two steps (a sixth of a tiny model's export went to it)."""
    if collect:
        gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
