"""Map formulas: from activations and gradients at the patch grid to a heatmap.

Each formula is one small function registered by name with :func:`register_formula`;
``CAM_FORMULAS`` lists the names in registration order.  A formula receives
the (h, w, D) activations (already centred per channel when it is registered
with ``centred=True``) and the (K, h, w, D) finite gradients and returns
(K, h, w) unnormalised maps; :func:`cam_from_grid` normalises them.
"""

from __future__ import annotations

from typing import Callable

import torch

EPS = 1e-8

Formula = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_FORMULAS: dict[str, tuple[Formula, bool]] = {}


_UNLISTED: set[str] = set()


def register_formula(name: str, centred: bool = False, listed: bool = True) -> Callable[[Formula], Formula]:
    """Register ``fn(acts, grads) -> maps`` as map formula ``name``.

    ``centred``: the formula sees activations minus their mean over the grid, per channel.
    ``listed=False``: usable by name in :func:`cam_from_grid` but not one of
    Diffusion-CAM's formula choices (``CAM_FORMULAS``): a baseline's own formula.
    """

    def add(fn: Formula) -> Formula:
        _FORMULAS[name] = (fn, centred)
        if not listed:
            _UNLISTED.add(name)
        return fn

    return add


@register_formula("poscam")
def _poscam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    weights = grads.clamp(min=0).mean(dim=(1, 2))  # (K, D)
    return torch.einsum("kd,hwd->khw", weights, acts.clamp(min=0)) / acts.shape[-1]


@register_formula("gradcam")
def _gradcam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    return torch.einsum("kd,hwd->khw", grads.mean(dim=(1, 2)), acts).clamp(min=0)


# A model whose background tokens carry large positive activations in the
# weighted channels gives flat or inverted poscam maps; removing each
# channel's mean over the grid keeps only where it is *more* active.
register_formula("poscam-centred", centred=True)(_poscam)


@register_formula("layercam", centred=True)
def _layercam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    # LayerCAM-style (Jiang et al. 2021): gradients weight each position on their own
    # instead of being pooled, so the map keeps the gradient's spatial detail.  Unlike
    # the published LayerCAM (the ``layercam`` baseline), activations are centred first.
    return torch.einsum("khwd,hwd->khw", grads.clamp(min=0), acts.clamp(min=0)) / acts.shape[-1]


def _gradient_times_activation(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    return torch.einsum("khwd,hwd->khw", grads, acts).clamp(min=0)


# taylor: first-order estimate of how much the score drops when a position's
# activation is replaced by the grid's mean activation, g . (A - mean A).
register_formula("taylor", centred=True)(_gradient_times_activation)
# hirescam (Draelos & Carin 2020): the same product on the raw activations,
# which sums exactly to the Grad-CAM map's channel terms without pooling.
register_formula("hirescam")(_gradient_times_activation)


@register_formula("gradcam++")
def _gradcam_plus_plus(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    # Chattopadhay et al. 2018, closed form for an exponential score
    g2 = grads.square()
    denominator = 2 * g2 + acts.sum(dim=(0, 1)) * g2 * grads
    # positions without gradient, or whose denominator vanishes, get no weight
    defined = denominator != 0
    alpha = torch.where(defined, g2 / torch.where(defined, denominator, 1.0), 0.0)
    weights = (alpha * grads.clamp(min=0)).sum(dim=(1, 2))  # (K, D)
    return torch.einsum("kd,hwd->khw", weights, acts).clamp(min=0)


@register_formula("layercam-published", listed=False)
def _layercam_published(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    # LayerCAM as published (Jiang et al. 2021, eq. 4-5): ReLU(sum_c ReLU(g_c) A_c) per
    # position, on the activations as they are (a CNN's are non-negative after its ReLU).
    return torch.einsum("khwd,hwd->khw", grads.clamp(min=0), acts).clamp(min=0)


CAM_FORMULAS = tuple(name for name in _FORMULAS if name not in _UNLISTED)
CENTRED_FORMULAS = tuple(name for name, (_, centred) in _FORMULAS.items() if centred and name in CAM_FORMULAS)


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
    if formula not in _FORMULAS:
        raise ValueError(f"unknown CAM formula {formula!r}; choose one of {', '.join(CAM_FORMULAS)}")
    fn, centred = _FORMULAS[formula]
    if centred:
        acts = acts - acts.mean(dim=(0, 1), keepdim=True)
    return normalize(fn(acts, grads), finite)


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
