"""Faithfulness of a map: deletion and insertion curves of the explained token's probability.

Patches of the model's image grid are ranked by the map (mean of the map
over each patch cell).  *Deletion* replaces the top-ranked patches by a
blurred copy of the image, 0 %, 10 %, ..., 100 % of them; *insertion* starts
from the blurred image and restores the top-ranked patches in the same steps.
At every step the perturbed image is prepared again with the same prompt and
the generated answer is forwarded once; the curve is the probability of the
explained token at its position.  The area under the curve (trapezoid over
the fraction removed, in [0, 1]) summarises it: a faithful map makes the
probability drop fast under deletion (low AUC) and rise fast under
insertion (high AUC).

By default the explained token's own position is re-masked in the answer
(``mask_target=True``): a masked-diffusion model is trained to predict masked
positions, so this reads the probability the model gives the token from the
image and the rest of its answer, instead of asking it to copy a visible token.

Perturbed images are forwarded in batches when the adapter's prepared inputs
can be stacked (tensor extras with a leading batch dimension of 1 and the same
token ids); a one-time check per adapter compares a batched forward with
single forwards and falls back to one forward per image if they disagree.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from ..adapters.base import Adapter, ModelInputs

__all__ = ["FaithfulnessResult", "PerturbationTarget", "auc", "blurred", "deletion_insertion", "patch_order",
           "perturbed_images"]

#: fractions of patches removed (deletion) or restored (insertion)
FRACTIONS = np.linspace(0.0, 1.0, 11)


@dataclass(frozen=True)
class PerturbationTarget:
    """One explained token: its sequence position, its id and its (H, W) map at image resolution."""

    position: int
    token_id: int
    saliency: np.ndarray


@dataclass
class FaithfulnessResult:
    deletion_auc: float
    insertion_auc: float
    deletion: list[float] = field(default_factory=list)  # probability at each fraction
    insertion: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"deletion_auc": self.deletion_auc, "insertion_auc": self.insertion_auc,
                "deletion": self.deletion, "insertion": self.insertion}


def auc(values: Sequence[float], fractions: Sequence[float] = FRACTIONS) -> float:
    """Trapezoidal area under ``values`` over ``fractions`` (in [0, 1])."""
    y = np.asarray(values, dtype=np.float64)
    x = np.asarray(fractions, dtype=np.float64)
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0)


def blurred(image: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """Gaussian-blurred copy of an (H, W, 3) uint8 image; default sigma = a tenth of the longer side."""
    if sigma is None:
        sigma = max(image.shape[:2]) / 10.0
    return cv2.GaussianBlur(np.ascontiguousarray(image), (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REFLECT_101)


def _cells(shape: tuple[int, int], region: tuple[float, float, float, float], size: tuple[int, int]):
    """Pixel boxes (y0, y1, x0, x1) of the h*w patch cells of ``region``, raster order."""
    h, w = shape
    height, width = size
    x0, y0, x1, y1 = region
    xs = np.clip(np.rint(np.linspace(x0, x1, w + 1)).astype(int), 0, width)
    ys = np.clip(np.rint(np.linspace(y0, y1, h + 1)).astype(int), 0, height)
    return [(ys[i], ys[i + 1], xs[j], xs[j + 1]) for i in range(h) for j in range(w)]


def patch_order(saliency: np.ndarray, cells) -> np.ndarray:
    """Cell indices from most to least salient.

    Ties (flat or thresholded maps) are broken by a fixed pseudo-random
    permutation rather than raster order, which would favour the top rows.
    """
    score = np.array([saliency[y0:y1, x0:x1].mean() if (y1 > y0 and x1 > x0) else 0.0
                      for y0, y1, x0, x1 in cells], dtype=np.float64)
    tie = np.random.default_rng(0).permutation(len(cells))
    return np.lexsort((tie, -score))


def perturbed_images(image: np.ndarray, saliency: np.ndarray, cells, blur: np.ndarray,
                     fractions: Sequence[float] = FRACTIONS) -> list[np.ndarray]:
    """Deletion images then insertion images, one per fraction each."""
    order = patch_order(saliency, cells)
    out = []
    for mode in ("deletion", "insertion"):
        for f in fractions:
            k = int(round(float(f) * len(cells)))
            base, patch_src = (image.copy(), blur) if mode == "deletion" else (blur.copy(), image)
            for c in order[:k]:
                y0, y1, x0, x1 = cells[c]
                base[y0:y1, x0:x1] = patch_src[y0:y1, x0:x1]
            out.append(base)
    return out


# ------------------------------------------------------------------ batching
# adapter -> whether a stacked forward matched single forwards (checked once per adapter)
_BATCH_OK: "weakref.WeakKeyDictionary[Adapter, bool]" = weakref.WeakKeyDictionary()


def _stack_inputs(items: Sequence[ModelInputs]) -> ModelInputs | None:
    """One ModelInputs holding several prepared images, or None if they cannot be stacked."""
    first = items[0]
    if any(not torch.equal(x.input_ids, first.input_ids) or x.answer_start != first.answer_start for x in items):
        return None
    extras: dict[str, Any] = {}
    for key, value in first.extras.items():
        values = [x.extras.get(key) for x in items]
        if isinstance(value, torch.Tensor):
            if value.dim() == 0 or value.shape[0] != 1 or any(
                    not isinstance(v, torch.Tensor) or v.shape != value.shape for v in values):
                return None
            extras[key] = torch.cat(values, 0)
        else:
            try:
                same = all(v == value for v in values)
            except Exception:  # arrays and other objects without a plain truth value
                return None
            if not same:
                return None
            extras[key] = value
    return ModelInputs(first.input_ids, first.answer_start, first.gen_length,
                       [im for x in items for im in x.images], first.prompt, extras)


def _probabilities(adapter: Adapter, inputs: Sequence[ModelInputs], sequences: torch.Tensor,
                   positions: Sequence[int], ids: Sequence[int]) -> np.ndarray:
    logits = adapter.forward(inputs[0] if len(inputs) == 1 else _stack_inputs(inputs), sequences.to(adapter.device))
    rows = logits[torch.arange(len(positions)), torch.tensor(positions)].float()
    return torch.softmax(rows, -1)[torch.arange(len(ids)), torch.tensor(ids)].double().cpu().numpy()


def _forward_probs(adapter: Adapter, inputs: list[ModelInputs], sequences: torch.Tensor,
                   positions: list[int], ids: list[int], batch_size: int) -> np.ndarray:
    key = adapter
    can_stack = batch_size > 1 and _stack_inputs(inputs[:2]) is not None
    if can_stack and key not in _BATCH_OK and len(inputs) >= 2:
        # one-time check that this adapter really forwards a stacked batch item by item
        single = np.concatenate([_probabilities(adapter, [inputs[i]], sequences[i:i + 1], positions[i:i + 1],
                                                ids[i:i + 1]) for i in (0, 1)])
        both = _probabilities(adapter, inputs[:2], sequences[:2], positions[:2], ids[:2])
        _BATCH_OK[key] = bool(np.allclose(single, both, rtol=1e-3, atol=1e-6))
    if not (can_stack and _BATCH_OK.get(key, False)):
        batch_size = 1
    out = []
    for start in range(0, len(inputs), batch_size):
        stop = start + batch_size
        out.append(_probabilities(adapter, inputs[start:stop], sequences[start:stop], positions[start:stop],
                                  ids[start:stop]))
    return np.concatenate(out)


@torch.no_grad()
def deletion_insertion(adapter: Adapter, inputs: ModelInputs, sequence: torch.Tensor,
                       targets: Sequence[PerturbationTarget], *, blur_sigma: float | None = None,
                       mask_target: bool = True, batch_size: int = 64,
                       fractions: Sequence[float] = FRACTIONS) -> list[FaithfulnessResult]:
    """Deletion and insertion curves and AUCs of each target token.

    ``inputs``: the prepared query the answer was generated from (its first
    image is perturbed); ``sequence``: the final generated sequence (L,);
    ``targets``: tokens with their maps at the image's resolution.  Patches are
    the cells of the adapter's first image grid.
    """
    if not targets:
        return []
    image = inputs.images[0]
    size = image.shape[:2]
    grid = adapter.image_grids(inputs, sequence)[0]
    cells = _cells(grid.shape, grid.region, size)
    blur = blurred(image, blur_sigma)
    mask_id = adapter.mask_token_id
    prepared, seqs, positions, ids = [], [], [], []
    for t in targets:
        sal = np.asarray(t.saliency, dtype=np.float64)
        if sal.shape != size:
            raise ValueError(f"saliency map has shape {sal.shape}, the image is {size}")
        seq = sequence.clone()
        if mask_target and mask_id is not None:
            seq[t.position] = mask_id
        for img in perturbed_images(image, sal, cells, blur, fractions):
            prepared.append(adapter.prepare([img], inputs.prompt, inputs.gen_length))
            seqs.append(seq)
            positions.append(t.position)
            ids.append(t.token_id)
    probs = _forward_probs(adapter, prepared, torch.stack(seqs), positions, ids, batch_size)
    n = len(fractions)
    results = []
    for k in range(len(targets)):
        curve = probs[2 * n * k: 2 * n * (k + 1)]
        dele, ins = curve[:n], curve[n:]
        results.append(FaithfulnessResult(auc(dele, fractions), auc(ins, fractions),
                                          [float(v) for v in dele], [float(v) for v in ins]))
    return results
