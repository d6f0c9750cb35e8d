"""Turn command-line arguments into the list of image paths to process.

Explicit files are always kept, whatever their extension, so a mislabelled or broken file is
reported rather than silently skipped; folders are searched recursively for image extensions
only, since they usually hold sidecar files too. Paths that match nothing are kept as well: the
caller reports them per image, and the rest of the batch still runs.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from ..errors import InputError, UsageError, message_of

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pbm", ".jp2"}
)

_GLOB_CHARS = frozenset("*?[")


def expand_inputs(
    arguments: Iterable[str], stdin: IO | None = None, null_separated: bool = False, outputs: Iterable[str] = ()
) -> list[str]:
    """Files, folders (recursive), globs and "-" (paths on stdin) -> unique paths, in order.

    outputs: the run's own output folders (masks, overlays): images a folder or glob lists inside them
    are this or an earlier run's results, not inputs (a file named on its own is still taken).

    stdin holds one path per line, or NUL-separated ones with null_separated (find -print0); a name
    is taken exactly as given, spaces included, and undecodable bytes come through surrogateescape
    like in argv. Two spellings of one file (a.jpg, ./a.jpg, a symlink) count once: the first.
    """
    paths: list[str] = []
    excluded = tuple(os.path.join(os.path.realpath(folder), "") for folder in outputs)

    def listed(found: list[str]) -> list[str]:
        return [p for p in found if not os.path.realpath(p).startswith(excluded)] if excluded else found

    for argument in arguments:
        if argument == "-":
            paths.extend(_stdin_paths(stdin or sys.stdin, null_separated))
        elif is_uri(argument):
            paths.extend(uri_images(argument))
        elif os.path.isdir(argument):
            paths.extend(listed(images_in_folder(argument)))
        elif not os.path.exists(argument) and _GLOB_CHARS & set(argument):
            matches = sorted(glob.glob(argument, recursive=True))
            for match in matches:
                paths.extend(listed(images_in_folder(match) if os.path.isdir(match) else [match]))
            if not matches:
                paths.append(argument)  # reported later as "no such file"
        else:
            paths.append(argument)
    unique: dict[str, str] = {}
    for path in paths:
        unique.setdefault(input_key(path), path)
    return list(unique.values())


def input_key(path: str) -> str:
    """What makes two spellings of one input the same (duplicates, --resume): a file's real path, a URI itself."""
    return path if is_uri(path) else os.path.realpath(path)


def is_uri(name: str) -> bool:
    """s3://, gs://, hdfs://, file://...: a file on a file system pyarrow knows (read with read_uri)."""
    scheme, sep, _ = name.partition("://")
    return bool(sep) and scheme.isascii() and scheme.replace("+", "").isalnum()


def _file_system(uri: str):
    try:
        from pyarrow import fs
    except ImportError:
        raise UsageError(f"{uri}: reading URIs needs pyarrow: pip install 'maskclip[ray]'") from None
    try:
        return fs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as exc:  # unknown scheme, no credentials, unreachable name node
        raise UsageError(f"{uri}: {message_of(exc)}") from None


def uri_images(uri: str) -> list[str]:
    """A file URI as it is; a folder URI -> the image files under it (recursively, sorted, no hidden ones)."""
    from pyarrow import fs

    system, root = _file_system(uri)
    if system.get_file_info(root).type != fs.FileType.Directory:
        return [uri]  # a file, or nothing there: reported as that image's error
    base = uri.rstrip("/")
    root = root.rstrip("/")
    found = system.get_file_info(fs.FileSelector(root, recursive=True))
    names = [
        info.path[len(root) :]
        for info in found
        if info.type == fs.FileType.File
        and is_image_name(info.path)
        and not any(part.startswith(".") for part in info.path[len(root) :].split("/"))
    ]
    return [base + name for name in sorted(names)]


# A compressed image file over this size is refused before it is read into memory.
MAX_URI_BYTES = 1 << 30


def read_uri(uri: str) -> bytes:
    """The bytes of the file a URI names; OSError (FileNotFoundError when missing, its message without the URI)."""
    from pyarrow import fs

    system, path = _file_system(uri)
    info = system.get_file_info(path)
    if info.type == fs.FileType.NotFound:
        raise FileNotFoundError("no such file")
    if info.type != fs.FileType.File:
        raise IsADirectoryError("is a folder, not an image")
    if info.size > MAX_URI_BYTES:
        raise OSError(f"refused, {info.size:,} bytes is over the {MAX_URI_BYTES:,}-byte limit")
    with system.open_input_file(path) as stream:
        return stream.read()


def _stdin_paths(stream: IO, null_separated: bool) -> list[str]:
    binary = getattr(stream, "buffer", None)
    data = binary.read() if binary is not None else stream.read()
    if isinstance(data, bytes):
        data = os.fsdecode(data)
    if null_separated:
        return [name for name in data.split("\0") if name]
    if "\0" in data:
        raise InputError("the paths on stdin are NUL-separated (find -print0): add -0 (--null)")
    # Lines as given; only a Windows line end is dropped, so "photo .jpg" keeps its space.
    return [line.removesuffix("\r") for line in data.split("\n") if line.strip()]


def image_files(pattern: str | os.PathLike) -> list[str]:
    """The images a folder (recursively) or a glob names: only files with an image extension, folders
    matched by the glob searched like a named folder. For calibration and verification sets, where a
    stray sidecar file is noise rather than a failed input."""
    if os.path.isdir(pattern):
        return images_in_folder(pattern)
    found = []
    for match in sorted(glob.glob(os.fspath(pattern), recursive=True)):
        if os.path.isdir(match):
            found.extend(images_in_folder(match))
        elif os.path.isfile(match) and is_image_name(match):
            found.append(match)
    return list(dict.fromkeys(found))  # a recursive glob matches a folder and the files in it


def images_in_folder(folder: str | os.PathLike) -> list[str]:
    """Image files under a folder, recursively, sorted (a folder's own images, then each sub-folder's by
    name); hidden files and folders are skipped. Every command lists folders through here."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(
            os.path.join(root, name) for name in sorted(files) if not name.startswith(".") and is_image_name(name)
        )
    return found


def is_image_name(name: str | os.PathLike) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS
