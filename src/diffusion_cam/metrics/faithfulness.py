"""Faithfulness of a map: deletion and insertion curves of the explained token's probability.

Patches are the cells of the model's image grid, ranked by the map (its
value at grid resolution, or its mean over the patch at image resolution).
*Deletion* replaces the top-ranked patches by a blurred copy of the image
(or by the image's mean colour, ``replacement="mean"``, or by ROAD's noisy
linear imputation from the pixels around them, ``replacement="road"``),
0 %, 10 %, ..., 100 % of them; *insertion* starts from the fully replaced image and restores
the top-ranked patches in the same steps.
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
from ..extract.gradients import rows_in, window

__all__ = ["FaithfulnessResult", "PerturbationTarget", "REPLACEMENTS", "auc", "blurred", "blurred_sets", "compose",
           "deletion_insertion", "linear_imputation", "patch_order", "patch_scores", "perturbed_images",
           "replacement_image"]

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


#: what a removed patch shows: a blurred copy of the image or its mean colour (method spec §3), or
#: ROAD's noisy linear imputation (Rong et al. 2022), which depends on which patches are removed
REPLACEMENTS = ("blur", "mean", "road")
#: ROAD's neighbour weights: 1/6 for the four direct neighbours, 1/12 for the diagonal ones
_ROAD_NEIGHBOURS = ((-1, -1, 1 / 12), (-1, 0, 1 / 6), (-1, 1, 1 / 12), (0, -1, 1 / 6),
                    (0, 1, 1 / 6), (1, -1, 1 / 12), (1, 0, 1 / 6), (1, 1, 1 / 12))
#: ROAD's noise on imputed pixels: 0.01 of the value range
ROAD_NOISE = 0.01 * 255


def replacement_image(image: np.ndarray, replacement: str = "blur", sigma: float | None = None) -> np.ndarray:
    """The image removed patches are taken from: blurred (``sigma`` as :func:`blurred`) or the mean colour."""
    if replacement == "blur":
        return blurred(image, sigma)
    if replacement == "mean":
        mean = np.rint(image.reshape(-1, image.shape[-1]).mean(axis=0)).astype(image.dtype)
        return np.broadcast_to(mean, image.shape).copy()
    if replacement == "road":
        raise ValueError("ROAD's imputation depends on the removed pixels: use linear_imputation(image, removed)")
    raise ValueError(f"unknown replacement {replacement!r}; choose one of {', '.join(REPLACEMENTS)}")


def linear_imputation(image: np.ndarray, removed: np.ndarray, noise: float = ROAD_NOISE, seed: int = 0) -> np.ndarray:
    """ROAD's noisy linear imputation of the ``removed`` (H, W) pixels of an (H, W, C) uint8 image.

    Every removed pixel equals the weighted mean of its eight neighbours
    inside the image (weights 1/6 direct, 1/12 diagonal), kept pixels being
    fixed: one sparse linear system for all removed pixels at once.  Gaussian
    noise of standard deviation ``noise`` (seeded, so the same call gives the
    same image) is added to the imputed pixels, so that the imputation does
    not draw the removed region's outline.  With every pixel removed there is
    nothing to interpolate from; the image's mean colour is used.
    """
    import scipy.sparse  # only ROAD needs it: kept off `import diffusion_cam`
    import scipy.sparse.linalg

    removed = np.asarray(removed, dtype=bool)
    h, w = removed.shape
    channels = image.shape[-1]
    out = image.copy()
    unknown = np.flatnonzero(removed)
    if unknown.size == 0:
        return out
    flat = image.reshape(-1, channels).astype(np.float64)
    if unknown.size == h * w:
        values = np.broadcast_to(flat.mean(axis=0), (unknown.size, channels))
    else:
        variable = np.full(h * w, -1)
        variable[unknown] = np.arange(unknown.size)
        ys, xs = np.divmod(unknown, w)
        diagonal = np.zeros(unknown.size)
        rhs = np.zeros((unknown.size, channels))
        rows, cols, vals = [], [], []
        for dy, dx, weight in _ROAD_NEIGHBOURS:
            ny, nx = ys + dy, xs + dx
            inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
            eq = np.flatnonzero(inside)
            neighbour = ny[inside] * w + nx[inside]
            diagonal[eq] += weight
            free = removed.flat[neighbour]
            rows.append(eq[free])
            cols.append(variable[neighbour[free]])
            vals.append(np.full(int(free.sum()), -weight))
            rhs[eq[~free]] += weight * flat[neighbour[~free]]  # each equation once per direction
        system = scipy.sparse.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                                         shape=(unknown.size, unknown.size)) + scipy.sparse.diags(diagonal)
        values = scipy.sparse.linalg.spsolve(system.tocsc(), rhs).reshape(unknown.size, channels)
    if noise:
        values = values + np.random.default_rng(seed).normal(0.0, noise, values.shape)
    out.reshape(-1, channels)[unknown] = np.clip(np.rint(values), 0, 255).astype(image.dtype)
    return out


def _cells(shape: tuple[int, int], region: tuple[float, float, float, float], size: tuple[int, int]):
    """Pixel boxes (y0, y1, x0, x1) of the h*w patch cells of ``region``, raster order."""
    h, w = shape
    height, width = size
    x0, y0, x1, y1 = region
    xs = np.clip(np.rint(np.linspace(x0, x1, w + 1)).astype(int), 0, width)
    ys = np.clip(np.rint(np.linspace(y0, y1, h + 1)).astype(int), 0, height)
    return [(ys[i], ys[i + 1], xs[j], xs[j + 1]) for i in range(h) for j in range(w)]


def patch_scores(saliency: np.ndarray, cells, grid_shape: tuple[int, int]) -> np.ndarray:
    """Score of every patch: the grid map's value when the map is at grid resolution, else the
    mean of the image-resolution map over the patch's pixels."""
    sal = np.asarray(saliency, dtype=np.float64)
    if sal.shape == tuple(grid_shape):
        return sal.ravel()
    return np.array([sal[y0:y1, x0:x1].mean() if (y1 > y0 and x1 > x0) else 0.0 for y0, y1, x0, x1 in cells])


def patch_order(scores: np.ndarray) -> np.ndarray:
    """Patch indices from most to least salient.

    Ties (flat or thresholded maps) are broken by a fixed pseudo-random
    permutation rather than raster order, which would favour the top rows.
    """
    scores = np.asarray(scores, dtype=np.float64)
    tie = np.random.default_rng(0).permutation(len(scores))
    return np.lexsort((tie, -scores))


def blurred_sets(order: np.ndarray, fractions: Sequence[float] = FRACTIONS) -> list[frozenset]:
    """The patches shown blurred in each deletion image, then in each insertion image."""
    n = len(order)
    tops = [frozenset(order[: int(round(float(f) * n))].tolist()) for f in fractions]
    everything = frozenset(range(n))
    return tops + [everything - top for top in tops]


def compose(image: np.ndarray, blur: np.ndarray | None, cells, blurred: frozenset) -> np.ndarray:
    """``image`` with the ``blurred`` cells taken from ``blur``, or imputed ROAD's way when ``blur`` is None."""
    if blur is None:
        removed = np.zeros(image.shape[:2], dtype=bool)
        for c in blurred:
            y0, y1, x0, x1 = cells[c]
            removed[y0:y1, x0:x1] = True
        return linear_imputation(image, removed)
    out = image.copy()
    for c in blurred:
        y0, y1, x0, x1 = cells[c]
        out[y0:y1, x0:x1] = blur[y0:y1, x0:x1]
    return out


def perturbed_images(image: np.ndarray, saliency: np.ndarray, cells, blur: np.ndarray, grid_shape=None,
                     fractions: Sequence[float] = FRACTIONS) -> list[np.ndarray]:
    """Deletion images then insertion images, one per fraction each."""
    scores = patch_scores(saliency, cells, grid_shape or (-1, -1))
    return [compose(image, blur, cells, b) for b in blurred_sets(patch_order(scores), fractions)]


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
    read = window(positions)
    logits = adapter.forward_at(inputs[0] if len(inputs) == 1 else _stack_inputs(inputs), sequences.to(adapter.device),
                                read)
    rows = logits[torch.arange(len(positions)), torch.tensor(rows_in(read, positions))].float()
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
                       replacement: str = "blur", mask_target: bool = True, batch_size: int = 64,
                       fractions: Sequence[float] = FRACTIONS, cache: dict | None = None) -> list[FaithfulnessResult]:
    """Deletion and insertion curves and AUCs of each target token.

    ``inputs``: the prepared query the answer was generated from (its first
    image is perturbed); ``sequence``: the final generated sequence (L,);
    ``replacement``: what removed patches show (``blur``, with ``blur_sigma``,
    ``mean`` or ``road``);
    ``targets``: tokens with their maps, at the image's resolution or at the
    resolution of the adapter's first image grid, whose cells are the patches.
    ``cache``: a dict kept across calls about the same ``inputs`` and
    ``sequence`` (several methods explaining one answer); a perturbed image
    already forwarded for the same token is not forwarded again (the intact
    and the fully blurred image are shared by every method).
    """
    if not targets:
        return []
    cache = {} if cache is None else cache
    image = inputs.images[0]
    size = image.shape[:2]
    grid = adapter.image_grids(inputs, sequence)[0]
    cells = _cells(grid.shape, grid.region, size)
    blur = None if replacement == "road" else replacement_image(image, replacement, blur_sigma)
    fill = (replacement, blur_sigma if replacement == "blur" else None)
    mask_id = adapter.mask_token_id
    masked = mask_target and mask_id is not None
    keys_per_target, todo = [], {}
    for t in targets:
        sal = np.asarray(t.saliency, dtype=np.float64)
        if sal.shape not in (tuple(size), tuple(grid.shape)):
            raise ValueError(f"saliency map has shape {sal.shape}, the image is {size} and its grid {grid.shape}")
        order = patch_order(patch_scores(sal, cells, grid.shape))
        keys = [(t.position, t.token_id, masked, fill, b) for b in blurred_sets(order, fractions)]
        keys_per_target.append(keys)
        for k in keys:
            if k not in cache:
                todo.setdefault(k, None)
    if todo:
        prepared, seqs = [], []
        for position, _, _, _, b in todo:
            prepared.append(adapter.prepare([compose(image, blur, cells, b)], inputs.prompt, inputs.gen_length))
            seq = sequence.clone()
            if masked:
                seq[position] = mask_id
            seqs.append(seq)
        keys = list(todo)
        probs = _forward_probs(adapter, prepared, torch.stack(seqs), [k[0] for k in keys], [k[1] for k in keys],
                               batch_size)
        cache.update(zip(keys, (float(p) for p in probs)))
    n = len(fractions)
    results = []
    for keys in keys_per_target:
        curve = [cache[k] for k in keys]
        dele, ins = curve[:n], curve[n:]
        results.append(FaithfulnessResult(auc(dele, fractions), auc(ins, fractions), dele, ins))
    return results
