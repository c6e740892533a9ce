"""Is an image a Shapes-world scene?  The statistics the built-in model's out-of-world warning reads.

The Shapes world (``datasets.shapes``) is narrow: 96 x 96 canvases, a flat
background with every channel in 70..160 (plus noise and low-contrast
clutter), and one to three objects in five saturated colours.  An image far
from that gets a confident answer anyway; these checks say why it is far.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..datasets.shapes import CANVAS, COLOUR_RGB

_PALETTE = np.array(list(COLOUR_RGB.values()), dtype=np.float32)
#: side and aspect ratio outside which an image is not a scene the model was trained on
MIN_SIDE, MAX_SIDE, MAX_ASPECT = 48, 768, 1.25
#: background channels are drawn in 70..160; the border median may drift by noise and clutter
BACKGROUND_RANGE = (58, 172)
#: a pixel is background-like within this RGB distance of the border's median colour (clutter: +-25 a channel)
BACKGROUND_DIST = 50.0
#: a pixel is object-like within this distance of a palette colour (jitter: +-20 a channel)
PALETTE_DIST = 60.0
#: least share of object-like pixels (the smallest object, an 18 px triangle, covers 1.7 % of the canvas)
MIN_OBJECT_SHARE = 0.008
#: largest share of pixels that are neither background-like nor object-like (in scenes: a few edge pixels)
MAX_OTHER_SHARE = 0.03

#: least probability of a committed answer word (held-out scenes: at least 0.98)
MIN_CONFIDENCE = 0.9


@dataclass(frozen=True)
class SceneStats:
    height: int
    width: int
    background: tuple[int, int, int]  # median colour of the border, after a 5 x 5 median filter
    object_share: float  # pixels near a palette colour and away from the background
    other_share: float  # pixels near neither


def scene_stats(image: np.ndarray) -> SceneStats:
    """Statistics of an (H, W, 3) uint8 RGB image as the model sees it (resized to the canvas)."""
    h, w = image.shape[:2]
    seen = cv2.resize(image, (CANVAS, CANVAS), interpolation=cv2.INTER_AREA) if (h, w) != (CANVAS, CANVAS) else image
    # the median filter removes the background's per-pixel noise and keeps the objects' edges
    flat = cv2.medianBlur(np.ascontiguousarray(seen, dtype=np.uint8), 5).astype(np.float32)
    ring = np.concatenate([flat[:3].reshape(-1, 3), flat[-3:].reshape(-1, 3),
                           flat[3:-3, :3].reshape(-1, 3), flat[3:-3, -3:].reshape(-1, 3)])
    background = np.median(ring, axis=0)
    pixels = flat.reshape(-1, 3)
    near_bg = np.linalg.norm(pixels - background, axis=1) < BACKGROUND_DIST
    near_palette = np.linalg.norm(pixels[:, None] - _PALETTE[None], axis=2).min(axis=1) < PALETTE_DIST
    return SceneStats(int(h), int(w), tuple(int(round(c)) for c in background),
                      float((near_palette & ~near_bg).mean()), float((~near_palette & ~near_bg).mean()))


def image_reason(image: np.ndarray) -> str | None:
    """Why ``image`` is not a Shapes-world scene, or None when it looks like one."""
    s = scene_stats(image)
    aspect = max(s.height, s.width) / min(s.height, s.width)
    if min(s.height, s.width) < MIN_SIDE or max(s.height, s.width) > MAX_SIDE or aspect > MAX_ASPECT:
        return f"the image is {s.width}x{s.height} pixels, unlike the {CANVAS}x{CANVAS} Shapes scenes the model knows"
    lo, hi = BACKGROUND_RANGE
    if not all(lo <= c <= hi for c in s.background):
        return f"the image's background colour {s.background} is outside the Shapes world's (every channel 70..160)"
    if s.object_share < MIN_OBJECT_SHARE:
        return "the image shows no object in the Shapes colours (red, green, blue, yellow, purple)"
    if s.other_share > MAX_OTHER_SHARE:
        return f"{s.other_share:.0%} of the image is neither a flat background nor an object in the Shapes colours"
    return None
