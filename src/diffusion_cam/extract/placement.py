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


def place_maps(grid_maps: Sequence[np.ndarray], grids: Sequence[ImageGrid], image_size: tuple[int, int],
               image_index: int = 0) -> np.ndarray:
    """Combine per-grid maps (each (K, h, w)) into (K, H, W) maps of one image.

    Each grid is resized onto the image region it covers; where several views
    cover a pixel (a base view and a crop) their values are averaged.
    """
    height, width = image_size
    k = grid_maps[0].shape[0]
    total = np.zeros((k, height, width), dtype=np.float64)
    count = np.zeros((height, width), dtype=np.float64)
    for maps, grid in zip(grid_maps, grids):
        if grid.image_index != image_index:
            continue
        x0, y0, x1, y1 = (int(round(v)) for v in grid.region)
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, width), min(y1, height)
        if x1 <= x0 or y1 <= y0:
            continue
        for i in range(k):
            total[i, y0:y1, x0:x1] += upsample(maps[i], (y1 - y0, x1 - x0))
        count[y0:y1, x0:x1] += 1
    out = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)
