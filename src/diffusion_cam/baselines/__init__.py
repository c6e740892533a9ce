"""Baseline explanation methods (method spec §4), selectable by name like Diffusion-CAM.

* ``gradcam`` — standard Grad-CAM (spec §1.3 ``gradcam`` formula), no refinement;
* ``llava-cam`` — LLaVA-CAM: one class-agnostic map from the sum of the answer's logits;
* ``layercam`` — LayerCAM as published (per-position positive gradients times
  activations, summed over channels), no refinement;
* ``tam`` — Token Activation Map: last-layer logit lens, estimated causal inference,
  rank-Gaussian filter;
* ``center`` — a fixed centred Gaussian: the prior any useful method must beat.

A baseline is defined by its recipe: options of Diffusion-CAM that are not part of
that recipe (refinement modules, CAM formula, and for TAM / center the hooked layer)
do not apply and are ignored, so the same command line can drive every method.
``Explanation.settings`` records what each baseline actually used.
"""

from __future__ import annotations

from typing import Any, Callable

from ..methods import register_method
from ..methods.base import ExplanationMethod
from .center import CenterPrior
from .gradcam import GradCAM
from .layercam import LayerCAM
from .llava_cam import LLaVACAM
from .tam import TAM

#: options every method takes (generation and refinement plumbing of the template)
_COMMON = ("generation",)


def _factory(cls: type[ExplanationMethod], accepted: tuple[str, ...]) -> Callable[..., ExplanationMethod]:
    keep = set(accepted) | set(_COMMON)

    def make(adapter, **options: Any) -> ExplanationMethod:
        return cls(adapter, **{k: v for k, v in options.items() if k in keep})

    make.__doc__ = cls.__doc__
    return make


BASELINES: dict[str, Callable[..., ExplanationMethod]] = {
    "gradcam": _factory(GradCAM, ("layer", "state", "score", "chunk_size", "distractor")),
    "layercam": _factory(LayerCAM, ("layer", "state", "score", "chunk_size", "distractor")),
    "llava-cam": _factory(LLaVACAM, ("layer", "chunk_size", "threshold")),
    "tam": _factory(TAM, ("state", "kernel")),
    "center": _factory(CenterPrior, ("sigma_fraction",)),
}

for _name, _make in BASELINES.items():
    register_method(_name, _make)

__all__ = ["BASELINES", "CenterPrior", "GradCAM", "LayerCAM", "LLaVACAM", "TAM"]
