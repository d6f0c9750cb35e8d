"""maskclip-serve's memory bounds: a pixel limit of its own, and a budget of decode memory across requests.

A 519 KB one-colour PNG of 13000 x 13000 pixels costs about 2 GB once decoded and masked; the 20 MB
body limit admits 38 of them. So every request states, from the image headers alone (no pixel is
decoded), the most memory its images will hold at once, and waits until the server's decode budget
has that much free; a request that needs more than the whole budget is refused (413). Images over
the pixel limit are refused from their header (the kernel's decode check, as maskclip-run's
--max-pixels), and JPEGs are decoded at reduced size when no full-size picture is asked for.

Within a request the images are decoded one after another and their records made one after another,
so its peak is what all of them keep (model tensors, and the decoded photos when an overlay is asked
for) plus the largest single decode or record.
"""

from __future__ import annotations

import asyncio
import io
import warnings
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from PIL import Image

# The server's pixel limit: a 48 Mpx phone photo (8064 x 6048) passes; Pillow's own 179 Mpx does not
# bound what a 20 MB body can make the server hold.
DEFAULT_SERVE_MAX_PIXELS = 50_000_000
# Bytes of decode memory all requests hold together: the largest image the pixel limit admits fits.
DEFAULT_DECODE_BUDGET = 2 * 1024 * 1024 * 1024

# Bytes per pixel, above what was measured on 25 Mpx PNGs (README, "Server memory"): a decode holds
# Pillow's planes (RGB is 4 bytes a pixel), its mode conversions (RGBA composited on white; 16-bit grey
# through float64) and the array the resize reads; a record makes the float32 mask at the photo's
# size and its thresholded copy and, when asked for, the mask and overlay images.
DECODE_BYTES_PER_PIXEL = 12  # measured 10.6 (RGB), 10.6 (P)
ALPHA_DECODE_BYTES_PER_PIXEL = 24  # measured 23 (RGBA)
WIDE_DECODE_BYTES_PER_PIXEL = 32  # measured 27 (I;16); I and F take the same path
ALPHA_MODES = ("RGBA", "LA", "PA", "P")  # a palette may hold transparency
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
RECORD_BYTES_PER_PIXEL = 8
PICTURES_BYTES_PER_PIXEL = 14  # with the mask and overlay images: measured 21 in all (RGB, kept photo included)
KEPT_PHOTO_BYTES_PER_PIXEL = 4  # the decoded photo, kept until its overlay is drawn


class OverBudget(Exception):
    """A request needs more decode memory than the server's whole budget."""


def decoded_size(data: bytes, max_pixels: int, reduce_to: int | None) -> tuple[int, int, int] | None:
    """(photo pixels, decoded pixels, decode bytes per pixel) from the header: decoded is smaller for a JPEG
    that Pillow's draft mode decodes at 1/2..1/8 scale (both sides >= reduce_to, as decode_image does).
    None: the decode will refuse the image (over max_pixels, or no image at all) before allocating pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                photo = img.size[0] * img.size[1]
                if photo > max_pixels:
                    return None
                if reduce_to and img.format == "JPEG":
                    img.draft(img.mode, (reduce_to, reduce_to))
                rate = DECODE_BYTES_PER_PIXEL
                if img.mode in WIDE_MODES:
                    rate = WIDE_DECODE_BYTES_PER_PIXEL
                elif img.mode in ALPHA_MODES:
                    rate = ALPHA_DECODE_BYTES_PER_PIXEL
                return photo, img.size[0] * img.size[1], rate
    except Exception:  # noqa: BLE001 - whatever the header is, the decode reports it
        return None


def request_bytes(
    sizes: Sequence[tuple[int, int, int] | None], tensor_bytes: int, pictures: bool, keep_photos: bool
) -> int:
    """The most decode memory a request's images hold at once (see the module's note)."""
    known = [size for size in sizes if size is not None]
    if not known:
        return 0
    record_rate = RECORD_BYTES_PER_PIXEL + (PICTURES_BYTES_PER_PIXEL if pictures else 0)
    kept = sum(
        2 * tensor_bytes + (KEPT_PHOTO_BYTES_PER_PIXEL * decoded if keep_photos else 0) for _, decoded, _ in known
    )
    largest = max(max(rate * decoded, record_rate * photo) for photo, decoded, rate in known)
    return kept + largest


class DecodeBudget:
    """A counting semaphore over bytes: a request takes what it needs at once (never a part, so two
    requests can never wait on each other) and gives it back when answered."""

    def __init__(self, total: int):
        self.total = total
        self.free = total
        self._changed: asyncio.Condition | None = None  # made in the server's event loop, on first use

    @asynccontextmanager
    async def hold(self, nbytes: int, timeout: float) -> AsyncIterator[None]:
        """Raises OverBudget when nbytes is more than the whole budget, asyncio.TimeoutError when it does
        not come free within timeout seconds."""
        if nbytes > self.total:
            raise OverBudget(
                f"the images of this request need about {_mib(nbytes)} MiB to decode; the server's decode budget "
                f"is {_mib(self.total)} MiB (--decode-budget): send fewer or smaller images"
            )
        if self._changed is None:
            self._changed = asyncio.Condition()
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: self.free >= nbytes), timeout)
            self.free -= nbytes
        try:
            yield
        finally:
            async with self._changed:
                self.free += nbytes
                self._changed.notify_all()


def _mib(nbytes: int) -> int:
    return -(-nbytes // (1024 * 1024))
