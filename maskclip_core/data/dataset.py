"""Torch Dataset over samples: ground-truth mask, augmentation, edge map, then the shared preprocessing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from maskclip_core.data.augment import augment
from maskclip_core.data.folders import is_folder_layout, read_folders
from maskclip_core.data.masks import edge_map
from maskclip_core.data.opensdid import read_hf, read_parquet
from maskclip_core.data.samples import DataError, Sample, load_sample
from maskclip_runtime.kernel.preprocess import PreprocessSpec, resize_and_normalize, resize_mask


def open_samples(source: str | Path, split: str | None = None) -> list[Sample]:
    """Local parquet file/folder, folder layout (real/, fake/, masks/) or Hugging Face name -> samples.

    For a local folder, `split` names a sub-folder (`maskclip-synth` writes train/ and test/);
    for a hub name it is the data set split (default "train").
    """
    path = Path(source).expanduser()
    if path.exists():
        if split:
            if not (path / split).is_dir():
                raise DataError(f"{path}: no split folder {split!r}")
            path = path / split
        return read_folders(path) if path.is_dir() and is_folder_layout(path) else read_parquet(path)
    text = str(source)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):  # owner/name
        return read_hf(text, split or "train")
    raise DataError(f"{source}: no such file or folder")


TRAIN_SPLIT = "train"


def training_split(source: str | Path, split: str | None) -> str | None:
    """The split maskclip-train reads: the one given, else train/ when a local folder holds split folders
    (as maskclip-synth writes train/ and test/) rather than being a data set itself: read whole, the folder
    would put the test set into training."""
    path = Path(source).expanduser()
    if split is None and (path / TRAIN_SPLIT).is_dir() and not is_folder_layout(path):
        return TRAIN_SPLIT
    return split


class MaskCLIPDataset(Dataset):
    """Samples -> dict(image [3,S,S] f32, mask [1,S,S] f32, edge [1,S,S] f32, label long, key, generator, kind).

    With `train=True` each item is augmented with a generator seeded by (seed, epoch, index), so
    an item is the same on every rank, worker and resumed run; call `set_epoch` every epoch. As in
    the authors' training, its label is then re-derived from the augmented mask (1 when any pixel
    is set: a random down-scale can drop a tiny edit); evaluation keeps the data set's label.
    Pass the model's `preprocess_spec()`; a bare size means a spec with the default resize.
    With `perturb` each item is degraded (seeded by (seed, index)) before the edge map and resize,
    as the robustness report needs.
    """

    def __init__(
        self,
        samples: list[Sample],
        spec: PreprocessSpec | int,
        train: bool = False,
        seed: int = 0,
        perturb: Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]] | None = None,
    ):
        self.samples = samples
        self.spec = spec if isinstance(spec, PreprocessSpec) else PreprocessSpec(size=spec)
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.perturb = perturb  # (image, mask, rng) -> (image, mask) at native size: robustness evaluation

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image, mask = load_sample(sample)  # native size
        label = sample.label
        if self.train:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            image, mask = augment(image, mask, rng)
            label = int(mask.any())
        if self.perturb is not None:
            image, mask = self.perturb(image, mask, np.random.default_rng((self.seed, index)))
        edge = edge_map(mask)  # at the augmented native size, before the resize
        return {
            "image": torch.from_numpy(resize_and_normalize(image, self.spec)),  # [3,S,S]
            "mask": torch.from_numpy(resize_mask(mask, self.spec)).float()[None],  # [1,S,S]
            "edge": torch.from_numpy(resize_mask(edge, self.spec)).float()[None],  # [1,S,S]
            "label": torch.tensor(label, dtype=torch.long),
            "key": sample.key,
            "generator": sample.generator,
            "kind": sample.kind,
        }
