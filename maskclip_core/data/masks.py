"""Edge map for the edge loss (MODEL.md): pixels within 3 (plus-shaped) of both the mask and its complement."""

from __future__ import annotations

import cv2
import numpy as np

# Plus-shaped structuring element of size 7: the centre and arms of 3 pixels.
PLUS_KERNEL = cv2.getStructuringElement(cv2.MORPH_CROSS, (7, 7))


def edge_map(mask: np.ndarray) -> np.ndarray:
    """Binary mask HxW {0,1} -> edge map HxW uint8 {0,1}: set where both dilations are set."""
    mask = (mask > 0).astype(np.uint8)
    inside = cv2.dilate(mask, PLUS_KERNEL, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    outside = cv2.dilate(1 - mask, PLUS_KERNEL, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return inside & outside
