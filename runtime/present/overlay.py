"""Overlays a person can read: a perceptually uniform heat map over the photo, the thresholded region
outlined, and (for saved overlays) a legend strip with the verdict, the probabilities and a colour bar.

Torch-free: Pillow and numpy only. The colour map is viridis (matplotlib's default): its lightness rises
steadily from dark violet to yellow, so a higher probability always reads as a brighter colour, also in
grey-scale print and for the common colour-vision deficiencies, unlike a red-to-yellow ramp that vanishes
on red or orange content. Colour is blended in only where the probability is meaningful (at or above
CALM_BELOW) and the region over the threshold gets a two-tone (white inside, black outside) outline, which
stays visible on any content.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

if TYPE_CHECKING:
    from ..detect.detector import Detection

# viridis, 256 RGB entries (matplotlib's table, rounded to 8 bits), six hex digits per entry.
_VIRIDIS_HEX = (
    "44015444025645045745055946075a46085c460a5d460b5e470d60470e61471063471164471365481467481668481769"
    "48186a481a6c481b6d481c6e481d6f481f70482071482173482374482475482576482677482878482979472a7a472c7a"
    "472d7b472e7c472f7d46307e46327e46337f463480453581453781453882443983443a83443b84433d84433e85423f85"
    "4240864241864142874144874045884046883f47883f48893e49893e4a893e4c8a3d4d8a3d4e8a3c4f8a3c508b3b518b"
    "3b528b3a538b3a548c39558c39568c38588c38598c375a8c375b8d365c8d365d8d355e8d355f8d34608d34618d33628d"
    "33638d32648e32658e31668e31678e31688e30698e306a8e2f6b8e2f6c8e2e6d8e2e6e8e2e6f8e2d708e2d718e2c718e"
    "2c728e2c738e2b748e2b758e2a768e2a778e2a788e29798e297a8e297b8e287c8e287d8e277e8e277f8e27808e26818e"
    "26828e26828e25838e25848e25858e24868e24878e23888e23898e238a8d228b8d228c8d228d8d218e8d218f8d21908d"
    "21918c20928c20928c20938c1f948c1f958b1f968b1f978b1f988b1f998a1f9a8a1e9b8a1e9c891e9d891f9e891f9f88"
    "1fa0881fa1881fa1871fa28720a38620a48621a58521a68522a78522a88423a98324aa8325ab8225ac8226ad8127ad81"
    "28ae8029af7f2ab07f2cb17e2db27d2eb37c2fb47c31b57b32b67a34b67935b77937b87838b9773aba763bbb753dbc74"
    "3fbc7340bd7242be7144bf7046c06f48c16e4ac16d4cc26c4ec36b50c46a52c56954c56856c66758c7655ac8645cc863"
    "5ec96260ca6063cb5f65cb5e67cc5c69cd5b6ccd5a6ece5870cf5773d05675d05477d1537ad1517cd2507fd34e81d34d"
    "84d44b86d54989d5488bd6468ed64590d74393d74195d84098d83e9bd93c9dd93ba0da39a2da37a5db36a8db34aadc32"
    "addc30b0dd2fb2dd2db5de2bb8de29bade28bddf26c0df25c2df23c5e021c8e020cae11fcde11dd0e11cd2e21bd5e21a"
    "d8e219dae319dde318dfe318e2e418e5e419e7e419eae51aece51befe51cf1e51df4e61ef6e620f8e621fbe723fde725"
)
VIRIDIS = np.frombuffer(bytes.fromhex("".join(_VIRIDIS_HEX)), np.uint8).reshape(256, 3)

CALM_BELOW = 0.25  # no colour below this probability: the photo shows through untouched
MAX_OPACITY = 0.7  # at probability 1; the opacity rises linearly from CALM_BELOW
DEFAULT_OVERLAY_SIZE = 1024  # long side of a saved overlay: a 12 MP photo no longer gives a 36 MB PNG
LEGEND_MIN_WIDTH = 440  # a narrow photo gets a wider canvas so that the legend stays readable
VERDICT_LABELS = {"real": "REAL", "uncertain": "UNCERTAIN", "fake": "GENERATED / EDITED"}
VERDICT_COLOURS = {"real": (46, 125, 50), "uncertain": (191, 132, 0), "fake": (183, 28, 28)}


def heat_overlay(image: Image.Image, prob: np.ndarray, threshold: float | None = None) -> Image.Image:
    """The photo with the viridis colour of the mask probability blended in, at the photo's size.

    prob: [H,W] in 0..1, the photo's size. Below CALM_BELOW the photo is untouched; above it the
    opacity rises to MAX_OPACITY at 1. threshold: outline the region whose probability is above it.
    The blend is done by Pillow on 8-bit planes: float RGB copies of a 50-megapixel photo cost gigabytes.
    """
    prob = np.asarray(prob, dtype=np.float32)
    levels = Image.fromarray(_to_u8(np.clip(prob, 0.0, 1.0) * 255.0), "P")
    levels.putpalette(VIRIDIS.tobytes())
    opacity = _to_u8(np.clip((prob - CALM_BELOW) / (1.0 - CALM_BELOW), 0.0, 1.0) * (MAX_OPACITY * 255.0))
    blended = Image.composite(levels.convert("RGB"), image.convert("RGB"), Image.fromarray(opacity, "L"))
    if threshold is not None:
        _outline(blended, prob > threshold)
    return blended


def _outline(canvas: Image.Image, region: np.ndarray) -> None:
    """Draw the edge of a boolean region: a white ring just inside it, a black ring just outside."""
    if not region.any() or region.all():
        return
    width = 2 * max(1, round(max(canvas.size) / 700)) + 1  # about 1 px per side at 700 px, thicker above
    inside = Image.fromarray(region.astype(np.uint8) * 255, "L")
    canvas.paste((255, 255, 255), mask=ImageChops.subtract(inside, inside.filter(ImageFilter.MinFilter(width))))
    canvas.paste((0, 0, 0), mask=ImageChops.subtract(inside.filter(ImageFilter.MaxFilter(width)), inside))


def fit_within(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """(width, height) scaled down, never up, so that the long side is at most max_side (None: as is)."""
    width, height = size
    if not max_side or max(width, height) <= max_side:
        return size
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def explained_overlay(
    image: Image.Image, prob: np.ndarray, detection: Detection, max_side: int | None = DEFAULT_OVERLAY_SIZE
) -> Image.Image:
    """heat_overlay (long side at most max_side) above a legend strip: verdict, probabilities, colour bar.

    prob: [H,W], at the image's size or any other (it is resized). The photo's pixels stay in the top-left block of
    the result; the legend is drawn below them, never over the photo.
    """
    size = fit_within(image.size, max_side)
    photo = image.convert("RGB")
    prob = np.asarray(prob, dtype=np.float32)
    if size != image.size:
        photo = photo.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    if prob.shape != (size[1], size[0]):
        prob = np.asarray(Image.fromarray(prob, "F").resize(size, Image.Resampling.BOX))
    heat = heat_overlay(photo, prob, detection.threshold)
    legend = _legend(max(size[0], LEGEND_MIN_WIDTH), detection)
    canvas = Image.new("RGB", (legend.width, size[1] + legend.height), (24, 24, 24))
    canvas.paste(heat, (0, 0))
    canvas.paste(legend, (0, size[1]))
    return canvas


def _legend(width: int, detection: Detection) -> Image.Image:
    font_size = max(11, width // 64)  # readable when the overlay is shown whole on a screen
    font = _default_font(font_size)
    line = font.getbbox("Ag")[3] + font_size // 3
    pad = font_size // 2
    bar_height = font_size
    text_lines = 5 if detection.demo else 4  # a demonstration model's answer says so on a line of its own
    height = pad + text_lines * line + pad + bar_height + line + pad
    legend = Image.new("RGB", (width, height), (24, 24, 24))
    draw = ImageDraw.Draw(legend)

    label = VERDICT_LABELS.get(detection.verdict, detection.verdict.upper())
    box = draw.textbbox((2 * pad, pad), label, font=font)
    colour = VERDICT_COLOURS.get(detection.verdict, (90, 90, 90))
    draw.rectangle((pad, box[1] - pad // 2, box[2] + pad, box[3] + pad // 2), fill=colour)
    draw.text((2 * pad, pad), label, fill="white", font=font)
    scores = f"P(generated) {detection.fake_prob:.3f}"
    if detection.calibrated_prob is not None:
        scores += f"   calibrated {detection.calibrated_prob:.3f}"
    draw.text((box[2] + 3 * pad, pad), scores, fill="white", font=font)
    if detection.band:  # a calibrated verdict: the thresholds apply to the calibrated probability
        rule = f"calibrated: real at or below {detection.band[0]:.3f}, generated above {detection.band[1]:.3f}"
    else:
        rule = f"generated above {detection.verdict_threshold:.3f}"
    draw.text((pad, pad + line), rule, fill=(220, 220, 220), font=font)
    area = f"outlined: mask > {detection.threshold:.2f}, {100 * detection.mask_fraction:.1f} % of the image"
    draw.text((pad, pad + 2 * line), area, fill=(220, 220, 220), font=font)

    if detection.demo:
        note = "DEMO MODEL (trained on synthetic edits): not evidence"
        draw.text((pad, pad + 3 * line), note, fill=(255, 190, 90), font=font)
    title = "mask probability (colour over grey, as blended on the photo)"
    draw.text((pad, pad + (text_lines - 1) * line), title, fill=(200, 200, 200), font=font)
    bar_left, bar_top = 2 * pad, text_lines * line + 2 * pad  # the gap above holds the threshold marker
    bar_width = min(24 * font_size, width - 2 * bar_left)
    gradient = np.tile(np.linspace(0.0, 1.0, bar_width, dtype=np.float32), (bar_height, 1))
    grey = Image.new("RGB", (bar_width, bar_height), (128, 128, 128))
    legend.paste(heat_overlay(grey, gradient), (bar_left, bar_top))
    draw.rectangle((bar_left - 1, bar_top - 1, bar_left + bar_width, bar_top + bar_height), outline=(170, 170, 170))
    for value in (0.0, CALM_BELOW, 0.5, 0.75, 1.0):
        x = bar_left + round(value * (bar_width - 1))
        draw.line((x, bar_top + bar_height, x, bar_top + bar_height + pad // 2), fill=(200, 200, 200))
        text = f"{value:g}"
        left = x - draw.textlength(text, font=font) / 2
        draw.text((left, bar_top + bar_height + pad // 2), text, fill=(200, 200, 200), font=font)
    x = bar_left + round(detection.threshold * (bar_width - 1))
    draw.polygon([(x - pad, bar_top - pad - 1), (x + pad, bar_top - pad - 1), (x, bar_top - 1)], fill="white")
    return legend


def _default_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's own font (no font files needed): scalable from Pillow 10.1 with FreeType, else its bitmap."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow 10.0: one bitmap size only
        return ImageFont.load_default()


def _to_u8(values: np.ndarray) -> np.ndarray:
    return np.rint(values).astype(np.uint8)
