"""Atomic file writes: the one way this project writes a file that someone may read.

The content goes to a hidden temporary file in the target's own folder (a rename across file
systems would not be atomic), is flushed to disk, and replaces the target with os.replace: a reader,
or a crash, sees the old file or the new one, never half of one. The temporary file is created like
an ordinary file (mode 0666 less the umask): tempfile.mkstemp's 0600 would leave an engine or a
checkpoint in a shared model folder unreadable to everyone but its writer.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import UsageError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` for a writer that takes a file name (PIL, safetensors, ...);
    on success it is synced and replaces `path`, on error (or an interrupt) it is removed."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies, as for open()
    try:
        yield temp
        _sync(temp)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as temp:
        temp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """UTF-8 text, newlines as given."""
    with atomic_path(path) as temp:
        temp.write_bytes(text.encode("utf-8"))


def _sync(path: Path) -> None:
    """Flush the file's data to disk before the rename: otherwise a power cut can leave the new name on
    an empty file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prepare_output_file(path: str | os.PathLike, what: str = "results") -> None:
    """The one rule for a file a command writes (--json, --csv, --report): it is absent or a regular file,
    and its missing folders are created, as for --masks and --overlays.

    A symlink, FIFO, device node or folder is refused (UsageError): an atomic write would replace it
    with a regular file (as root, a system device node)."""
    path = Path(path)
    try:
        info = path.lstat()
    except FileNotFoundError:
        info = None
    if info is not None and not stat.S_ISREG(info.st_mode):
        kind = "a symlink" if stat.S_ISLNK(info.st_mode) else "a folder" if stat.S_ISDIR(info.st_mode) else None
        kind = kind or "not a regular file"
        raise UsageError(f"cannot write {what} to {path}: it is {kind} (give a regular file or a new name)")
    try:
        path.absolute().parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot write {what} to {path}: cannot create its folder ({exc.strerror or exc})") from None
    if not os.access(path if info is not None else path.absolute().parent, os.W_OK):
        raise UsageError(f"cannot write {what} to {path}: permission denied")


def unreplaceable_folder(out: str | os.PathLike) -> str | None:
    """Why a command must not write its output folder here (a symlink, a file, the current folder, one of
    its parents, home), or None; the one rule of every --out that names a folder to fill or replace."""
    out = Path(out)
    if out.is_symlink():
        return f"{out}: is a symbolic link; give the folder itself"
    resolved = out.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents or resolved == Path.home().resolve():
        return f"{out}: refusing to replace the current folder, one of its parents or home; name a new folder"
    if out.exists() and not out.is_dir():
        return f"{out}: exists and is not a folder"
    return None
