"""Input checks shared by the refinement modules."""

from __future__ import annotations

import numpy as np


def as_map(m, name: str = "m") -> np.ndarray:
    """Return ``m`` as a fresh float64 2-D array, rejecting what the modules cannot refine.

    A copy is made so that no module can alias or modify the caller's array.
    """
    arr = np.array(m, dtype=np.float64, copy=True)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D map (h, w); got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr
