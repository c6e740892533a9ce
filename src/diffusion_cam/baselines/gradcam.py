"""Grad-CAM: ``a_c = mean_ij G``, ``H = max(sum_c a_c A_c, 0)``, min-max; no refinement (spec §1.3, §4)."""

from __future__ import annotations

from typing import Any

from ..methods.gradient import GradientCAM


class GradCAM(GradientCAM):
    """Standard Grad-CAM on the same block, state and score as Diffusion-CAM, without modules."""

    name = "gradcam"
    default_modules = ()

    def __init__(self, adapter, **options: Any) -> None:
        options.pop("cam", None)
        options.pop("modules", None)
        super().__init__(adapter, cam="gradcam", modules=(), **options)
