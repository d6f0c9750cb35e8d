"""Where an image's mask and overlay go: PNG files beside the run (maskclip-run) or data URIs in the answer
(maskclip-serve). Each sink writes both for one image and returns what the record's mask/overlay fields hold."""

from __future__ import annotations

import base64
import errno
import io
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from .outputs import (
    PNG_COMPRESS_LEVEL,
    ResultsUnwritable,
    heat_overlay,
    made_for_another_image,
    mask_image,
    save_mask_png,
    save_overlay_png,
    source_tag,
)

if TYPE_CHECKING:
    from ..detect.detector import Detection

# A full disk or quota is not this image's fault: every following image would fail the same way.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True)
class ImageFiles:
    """Mask, probability-map and overlay PNG folders (None = not written) and each input's file stem.

    A PNG of that name made for another image (an earlier run on another folder) is never overwritten:
    the new one gets the input's path hash in its name instead."""

    masks: str | None
    overlays: str | None
    stems: dict[str, str]
    prob_maps: str | None = None
    overlay_size: int | None = None  # long side of an overlay; None: the photo's own size

    @classmethod
    def for_inputs(cls, paths: list[str], masks, overlays, prob_maps=None, overlay_size=None) -> ImageFiles:
        return cls(masks, overlays, output_stems(paths), prob_maps, overlay_size)

    @property
    def wants_full_size(self) -> bool:
        """An overlay is drawn on the photo itself, so it must be decoded at full size."""
        return self.overlays is not None

    def write(self, path: str, image: Image.Image | None, detection: Detection) -> tuple[str | None, str | None]:
        """Write this image's PNGs -> (mask file, overlay file). OSError for this image's trouble;
        ResultsUnwritable when the disk is full (no later image could be written either)."""
        mask_path = self._png_path(self.masks, path, "mask")
        prob_map_path = self._png_path(self.prob_maps, path, "prob")
        overlay_path = self._png_path(self.overlays, path, "overlay")
        try:
            if mask_path:
                save_mask_png(detection.mask, mask_path, source=path, threshold=detection.threshold)
            if prob_map_path:
                save_mask_png(detection.mask, prob_map_path, source=path)
            if overlay_path:
                save_overlay_png(image, detection.mask, overlay_path, path, detection, self.overlay_size)
        except OSError as exc:
            if exc.errno in DISK_FULL:
                written = mask_path or prob_map_path or overlay_path
                raise ResultsUnwritable(f"cannot write {written}: {exc.strerror}") from None
            raise
        return mask_path, overlay_path

    def _png_path(self, folder: str | None, path: str, kind: str) -> str | None:
        if not folder:
            return None
        stem = self.stems[path]
        png = os.path.join(folder, f"{stem}_{kind}.png")
        if made_for_another_image(png, path):
            png = os.path.join(folder, f"{stem}-{source_tag(path)[:8]}_{kind}.png")
        return png


@dataclass(frozen=True)
class InlineImages:
    """The probability map and the bare overlay (heat map and outline at the photo's size) as PNG data URIs."""

    mask: bool = False
    overlay: bool = False

    @property
    def wants_full_size(self) -> bool:
        return self.overlay

    def write(self, path: str, image: Image.Image | None, detection: Detection) -> tuple[str | None, str | None]:
        mask = _png_data_uri(mask_image(detection.mask)) if self.mask else None
        overlay = _png_data_uri(heat_overlay(image, detection.mask, detection.threshold)) if self.overlay else None
        return mask, overlay


def _png_data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def output_stems(paths: list[str]) -> dict[str, str]:
    """Mask/overlay file stem per input: its own stem, plus a short path hash where two inputs share a stem."""
    counts = Counter(Path(p).stem for p in paths)
    stems = {}
    for path in paths:
        stem = Path(path).stem
        if counts[stem] > 1:
            stem = f"{stem}-{source_tag(path)[:8]}"
        stems[path] = stem
    return stems
