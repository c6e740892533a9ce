"""LayerCAM (Jiang et al., IEEE TIP 2021) as published, on the hooked block of a dMLLM.

Per position ``(i, j)``: ``M = ReLU(sum_c ReLU(G[i, j, c]) * A[i, j, c])``, then
min-max; no refinement module.  The gradient weights every position on its
own instead of being pooled over the image (Grad-CAM), so the map keeps the
gradient's spatial detail.

It differs from the ``layercam`` *formula* Diffusion-CAM can use (the
built-in model's default) in the activations: that formula first centres
them per channel over the image and keeps ``max(A - mean A, 0)``, because on
``shapes-tiny`` every image token carries large positive activations in the
channels the gradients weight, which floods the map with background.  The
published method, made for a CNN's non-negative post-ReLU activations, uses
them as they are and applies the ReLU after the channel sum.
"""

from __future__ import annotations

from typing import Any

from ..methods.gradient import GradientCAM


class LayerCAM(GradientCAM):
    """LayerCAM as published: per-position positive gradient times activation, summed over channels."""

    name = "layercam"
    default_modules = ()
    formulas = ("layercam-published",)

    def __init__(self, adapter, **options: Any) -> None:
        options.pop("cam", None)
        options.pop("modules", None)
        super().__init__(adapter, cam="layercam-published", modules=(), **options)
