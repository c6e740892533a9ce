"""Map formulas: from activations and gradients at the patch grid to a heatmap."""

from __future__ import annotations

import torch

CAM_FORMULAS = ("poscam", "gradcam", "poscam-centred", "layercam", "taylor", "hirescam", "gradcam++")
CENTRED_FORMULAS = ("poscam-centred", "layercam", "taylor")  # on activations centred over the grid
EPS = 1e-8


def cam_from_grid(acts: torch.Tensor, grads: torch.Tensor, formula: str = "poscam") -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmaps for K targets on one grid, in float32.

    ``acts``: (h, w, D) activations; ``grads``: (K, h, w, D) gradients of each
    target's score.  Returns ``(maps (K, h, w) in [0, 1], degenerate (K,) bool)``;
    a map without positive evidence (constant or non-finite) is returned as
    zeros and flagged instead of being divided by zero.
    """
    acts = acts.float()
    grads = grads.float()
    finite = torch.isfinite(grads).flatten(1).all(1)
    grads = torch.nan_to_num(grads, nan=0.0, posinf=0.0, neginf=0.0)
    if formula not in CAM_FORMULAS:
        raise ValueError(f"unknown CAM formula {formula!r}; choose one of {', '.join(CAM_FORMULAS)}")
    if formula in CENTRED_FORMULAS:
        # A model whose background tokens carry large positive activations in the
        # weighted channels gives flat or inverted poscam maps; removing each
        # channel's mean over the grid keeps only where it is *more* active.
        acts = acts - acts.mean(dim=(0, 1), keepdim=True)
    if formula == "gradcam":
        maps = torch.einsum("kd,hwd->khw", grads.mean(dim=(1, 2)), acts).clamp(min=0)
    elif formula in ("poscam", "poscam-centred"):
        weights = grads.clamp(min=0).mean(dim=(1, 2))  # (K, D)
        maps = torch.einsum("kd,hwd->khw", weights, acts.clamp(min=0)) / acts.shape[-1]
    elif formula == "layercam":
        # LayerCAM (Jiang et al. 2021): gradients weight each position on their own
        # instead of being pooled, so the map keeps the gradient's spatial detail.
        maps = torch.einsum("khwd,hwd->khw", grads.clamp(min=0), acts.clamp(min=0)) / acts.shape[-1]
    elif formula in ("taylor", "hirescam"):
        # taylor: first-order estimate of how much the score drops when a position's
        # activation is replaced by the grid's mean activation, g . (A - mean A).
        # hirescam (Draelos & Carin 2020): the same product on the raw activations,
        # which sums exactly to the Grad-CAM map's channel terms without pooling.
        maps = torch.einsum("khwd,hwd->khw", grads, acts).clamp(min=0)
    else:  # gradcam++ (Chattopadhay et al. 2018), closed form for an exponential score
        g2 = grads.square()
        denominator = 2 * g2 + acts.sum(dim=(0, 1)) * g2 * grads
        # positions without gradient, or whose denominator vanishes, get no weight
        defined = denominator != 0
        alpha = torch.where(defined, g2 / torch.where(defined, denominator, 1.0), 0.0)
        weights = (alpha * grads.clamp(min=0)).sum(dim=(1, 2))  # (K, D)
        maps = torch.einsum("kd,hwd->khw", weights, acts).clamp(min=0)
    return normalize(maps, finite)


def normalize(maps: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max normalise each map (eps 1e-8); constant maps become zeros and are flagged."""
    flat = maps.flatten(1)
    lo = flat.min(1).values[:, None, None]
    hi = flat.max(1).values[:, None, None]
    span = (hi - lo)[:, 0, 0]
    degenerate = ~(span > 0) | ~torch.isfinite(flat).all(1)
    if valid is not None:
        degenerate |= ~valid
    out = torch.where(degenerate[:, None, None], torch.zeros_like(maps), (maps - lo) / (hi - lo + EPS))
    return out, degenerate
