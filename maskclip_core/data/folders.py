"""Plain folder layout: `root/real/**`, `root/fake/**` and optional `root/masks/**` (same relative name).

A fake with a mask is a partial edit, one without is fully generated. The generator is the first
sub-folder under real/ or fake/ (`root/fake/sdxl/x.png` -> sdxl), else the root folder's name.
"""

from __future__ import annotations

from pathlib import Path

from maskclip_core.data.samples import DataError, Sample, parse_key
from maskclip_runtime.kernel.inputs import images_in_folder


def _images(folder: Path) -> list[Path]:
    return [Path(p) for p in images_in_folder(folder)]


def is_folder_layout(root: Path) -> bool:
    return (root / "real").is_dir() or (root / "fake").is_dir()


def read_folders(root: str | Path) -> list[Sample]:
    root = Path(root)
    if not is_folder_layout(root):
        raise DataError(f"{root}: expected real/ and/or fake/ sub-folders (or parquet files)")
    masks = {p.relative_to(root / "masks").with_suffix(""): p for p in _images(root / "masks")}
    samples = []
    for label, folder in ((0, "real"), (1, "fake")):
        for path in _images(root / folder):
            rel = path.relative_to(root / folder)
            mask = masks.get(rel.with_suffix("")) if label else None
            nested = len(rel.parts) > 1
            generator = rel.parts[0] if nested else root.name
            kind = parse_key(str(rel), label, mask is not None, generator)[1]
            key = f"{kind}/{generator}/{folder}/{Path(*rel.parts[nested:]).as_posix()}"

            def load(path=path, mask=mask):
                return str(path), None if mask is None else str(mask)

            samples.append(Sample(key, label, generator, kind, str(path), load))
    if not samples:
        raise DataError(f"{root}: no images under real/ or fake/")
    return samples
