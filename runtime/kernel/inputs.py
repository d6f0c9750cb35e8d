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

from ..errors import InputError

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
        unique.setdefault(os.path.realpath(path), path)
    return list(unique.values())


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
