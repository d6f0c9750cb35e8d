"""sha256 of a file, streamed: the one digest artifacts, checkpoints and result records use."""

from __future__ import annotations

import hashlib
import os
import time

# A file is hashed once per process: (path, device, inode, size, mtime, ctime) -> sha256. Only files
# unchanged for SETTLED_NS are cached: timestamps tick coarsely (milliseconds), so an edit made in the
# same tick as a fresh export could otherwise keep the same key and slip past the check.
_HASH_CACHE: dict[tuple, str] = {}
SETTLED_NS = 2_000_000_000


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex of a file, read in 1 MiB blocks; cached per process for files at rest."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    digest = _HASH_CACHE.get(key)
    if digest is None:
        digest = _hash_file(path)
        if time.time_ns() - max(stat.st_mtime_ns, stat.st_ctime_ns) > SETTLED_NS:
            _HASH_CACHE[key] = digest
    return digest


def _hash_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
