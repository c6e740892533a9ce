"""Extraction: hooks, target scores, batched gradients, map formulas, placement."""

from .cam import CAM_FORMULAS, cam_from_grid, normalize
from .gradients import SCORES, Target, batched_vjp, rows_in, target_scores, window
from .hooks import ActivationRecorder, count_hooks
from .engine import GridGradients, grid_gradients
from .placement import place_maps, upsample

__all__ = [
    "ActivationRecorder", "CAM_FORMULAS", "GridGradients", "grid_gradients", "SCORES", "Target", "batched_vjp", "cam_from_grid",
    "count_hooks", "normalize", "place_maps", "rows_in", "target_scores", "upsample", "window",
]
