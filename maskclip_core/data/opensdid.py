"""OpenSDID reader: local parquet files/folders, or a Hugging Face data set name when a hub is reachable.

Columns: `key` (str), `image` (HF image struct {bytes, path} or raw bytes), `mask` (same, or None)
and `label` (0 real, 1 fake). Only keys, labels and mask presence are read up front; images are
decoded lazily, one parquet row group at a time (the full training set is about 35 GB).
"""

from __future__ import annotations

import functools
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from maskclip_core.data.samples import DataError, Sample, parse_key

REQUIRED_COLUMNS = ("key", "image", "label")


def _cell_bytes(cell, parquet_file: Path) -> bytes | str | None:
    """An image cell (struct {bytes, path}, raw bytes or None) -> encoded bytes or a file path."""
    if cell is None or isinstance(cell, bytes):
        return cell
    if cell.get("bytes") is not None:
        return cell["bytes"]
    if cell.get("path"):
        return str(parquet_file.parent / cell["path"])
    return None


@functools.lru_cache(maxsize=2)
def _row_group(path: str, index: int, columns: tuple[str, ...]) -> pa.Table:
    return pq.ParquetFile(path).read_row_group(index, columns=list(columns))


def parquet_files(root: Path) -> list[Path]:
    files = [root] if root.is_file() else sorted(root.rglob("*.parquet"))
    if not files:
        raise DataError(f"{root}: no parquet files")
    return files


def read_parquet(root: str | Path) -> list[Sample]:
    """Samples of every parquet file under `root` (a file or a folder, searched recursively)."""
    samples: list[Sample] = []
    for path in parquet_files(Path(root)):
        try:
            pf = pq.ParquetFile(path)
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{path}: not a readable parquet file ({exc})") from None
        names = pf.schema_arrow.names
        missing = [c for c in REQUIRED_COLUMNS if c not in names]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)}; OpenSDID has key, image, mask, label")
        columns = ("image", "mask") if "mask" in names else ("image",)
        default_generator = path.stem.split("-")[0]  # HF shards: sd15-00000-of-00010.parquet
        for rg in range(pf.num_row_groups):
            meta = pf.read_row_group(rg, columns=["key", "label", *columns[1:]])
            keys, labels = meta["key"].to_pylist(), meta["label"].to_pylist()
            has_mask = meta["mask"].is_valid().to_pylist() if "mask" in names else [False] * len(keys)
            for row, (key, label, masked) in enumerate(zip(keys, labels, has_mask, strict=True)):
                generator, kind = parse_key(key, int(label), masked, default_generator)

                def load(path=path, rg=rg, row=row, columns=columns):
                    table = _row_group(str(path), rg, columns)
                    image = _cell_bytes(table["image"][row].as_py(), path)
                    mask = _cell_bytes(table["mask"][row].as_py(), path) if "mask" in columns else None
                    return image, mask

                samples.append(Sample(key, int(label), generator, kind, str(path), load))
    return samples


def read_hf(name: str, split: str) -> list[Sample]:
    """Samples of a Hugging Face data set split (needs `datasets` and a reachable hub or cache)."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"{name}: not a local path, and reading a hub data set needs `pip install datasets`") from None
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as exc:  # network, auth and missing-split errors all surface here
        raise DataError(f"{name} (split {split}): cannot load from the Hugging Face hub ({exc})") from None
    for column in ("image", "mask"):
        if column in ds.column_names:
            ds = ds.cast_column(column, datasets.Image(decode=False))
    source = f"hf://{name}/{split}"
    has_mask = [m is not None for m in ds["mask"]] if "mask" in ds.column_names else [False] * len(ds)
    samples = []
    for i, (key, label) in enumerate(zip(ds["key"], ds["label"], strict=True)):
        generator, kind = parse_key(key, int(label), has_mask[i], split)

        def load(i=i):
            row = ds[i]
            return _cell_bytes(row["image"], Path(".")), _cell_bytes(row.get("mask"), Path("."))

        samples.append(Sample(key, int(label), generator, kind, source, load))
    return samples
