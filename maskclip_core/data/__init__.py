"""Data: OpenSDID parquet and folder readers, masks and edges, augmentations, synthetic edits."""

from maskclip_core.data.dataset import MaskCLIPDataset, open_samples
from maskclip_core.data.samples import DataError, Sample, load_sample, parse_key

__all__ = ["DataError", "MaskCLIPDataset", "Sample", "load_sample", "open_samples", "parse_key"]
