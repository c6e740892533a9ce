"""Put grid-resolution maps back into image coordinates."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from ..adapters.base import ImageGrid


def upsample(grid_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of one (h, w) map to (height, width)."""
    height, width = size
    return cv2.resize(np.ascontiguousarray(grid_map, dtype=np.float32), (width, height), interpolation=cv2.INTER_LINEAR)


def place_boxes(grid_maps: Sequence[np.ndarray], boxes: Sequence[Sequence[float]], image_size: tuple[int, int],
                size: tuple[int, int] | None = None) -> np.ndarray:
    """One (H, W) map from the (h, w) maps of the grids covering ``boxes`` of an image of ``image_size``.

    ``boxes`` are ``(x0, y0, x1, y1)`` in the image's pixels; ``size``
    (default ``image_size``) is the resolution drawn, the boxes scaled to it,
    so that a large photo's map can be drawn at the size of its picture.
    Where several views cover a pixel (a base view and a crop) their values
    are averaged.
    """
    height, width = image_size
    out_h, out_w = size or image_size
    sy, sx = out_h / height, out_w / width
    total = np.zeros((out_h, out_w), dtype=np.float32)
    count = np.zeros((out_h, out_w), dtype=np.float32)
    for grid_map, box in zip(grid_maps, boxes):
        bx0, by0, bx1, by1 = box
        x0, y0 = max(int(round(bx0 * sx)), 0), max(int(round(by0 * sy)), 0)
        x1, y1 = min(int(round(bx1 * sx)), out_w), min(int(round(by1 * sy)), out_h)
        if x1 <= x0 or y1 <= y0:
            continue
        total[y0:y1, x0:x1] += upsample(grid_map, (y1 - y0, x1 - x0))
        count[y0:y1, x0:x1] += 1
    np.divide(total, count, out=total, where=count > 0)
    total[count == 0] = 0.0
    return np.clip(total, 0.0, 1.0, out=total)


def place_maps(grid_maps: Sequence[np.ndarray], grids: Sequence[ImageGrid], image_size: tuple[int, int],
               image_index: int = 0) -> np.ndarray:
    """Combine per-grid maps (each (K, h, w)) into (K, H, W) maps of one image."""
    mine = [(maps, grid.region) for maps, grid in zip(grid_maps, grids) if grid.image_index == image_index]
    k = grid_maps[0].shape[0]
    out = np.zeros((k, *image_size), dtype=np.float32)
    for i in range(k):
        out[i] = place_boxes([m[i] for m, _ in mine], [box for _, box in mine], image_size)
    return out
