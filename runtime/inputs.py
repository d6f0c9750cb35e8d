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
from typing import TextIO

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pbm", ".jp2"}
)

_GLOB_CHARS = frozenset("*?[")


def expand_inputs(arguments: Iterable[str], stdin: TextIO | None = None) -> list[str]:
    """Files, folders (recursive), globs and "-" (one path per line on stdin) -> unique paths, in order."""
    paths: list[str] = []
    for argument in arguments:
        if argument == "-":
            lines = (stdin or sys.stdin).read().splitlines()
            paths.extend(line.strip() for line in lines if line.strip())
        elif os.path.isdir(argument):
            paths.extend(images_in_folder(argument))
        elif not os.path.exists(argument) and _GLOB_CHARS & set(argument):
            matches = sorted(glob.glob(argument, recursive=True))
            for match in matches:
                paths.extend(images_in_folder(match) if os.path.isdir(match) else [match])
            if not matches:
                paths.append(argument)  # reported later as "no such file"
        else:
            paths.append(argument)
    return list(dict.fromkeys(paths))


def images_in_folder(folder: str | os.PathLike) -> list[str]:
    """Image files under a folder, recursively, sorted; hidden files and folders are skipped."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(
            os.path.join(root, name)
            for name in sorted(files)
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS
        )
    return found
