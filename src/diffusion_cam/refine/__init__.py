"""Refinement modules of Diffusion-CAM (method spec §2).

Each module is a pure, deterministic function on a 2-D float map at grid
resolution: :func:`akd` (rank-Gaussian denoising), :func:`dacg` (confidence
gating), :func:`cba` (background attenuation), :func:`sicd` (debiasing).
:func:`refine` chains any subset in the fixed order AKD → DACG → CBA →
clip → min-max → SICD; :func:`refine_stack` refines all answer tokens of
one answer (needed by causal SICD).
"""

from .akd import adaptive_kernel_size, akd, rank_gaussian_filter
from .cba import cba, cba_threshold
from .dacg import dacg, dacg_threshold
from .pipeline import MODULES, refine, refine_stack
from .sicd import SICD_MODES, repeat_ratio, sicd

__all__ = [
    "MODULES",
    "SICD_MODES",
    "adaptive_kernel_size",
    "akd",
    "cba",
    "cba_threshold",
    "dacg",
    "dacg_threshold",
    "rank_gaussian_filter",
    "refine",
    "refine_stack",
    "repeat_ratio",
    "sicd",
]
