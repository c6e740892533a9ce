"""Localization metrics of Diffusion-CAM (method spec §3), plus TAM's Func-IoU and the pointing game.

Protocol, as in the authors' evaluation: the grid map is cast to float32 (the
precision the reference scored in; it reproduces the recorded values
exactly), resized bilinearly to the mask size with OpenCV, turned into
``U = uint8(255 · map)`` (truncation) and binarised with OpenCV's Otsu
threshold ``t`` as ``B = U > t``.

Degenerate inputs never produce NaN or division warnings. The values
returned then are:

* IoU with an empty union, precision with an empty prediction, recall with an
  empty mask: 0.
* Contrast with an empty foreground: foreground mean taken as 1 (the
  reference's convention); with an empty background: background mean taken
  as 0, so Contrast = fg_mean / 1e-8 and contrast_score = 1 when fg_mean > 0.
  An all-zero map gives Contrast 0.
* Concentration of an all-zero map: 0.
* F3 is 0 as soon as one of its three terms is 0.
* An all-zero map has an empty Otsu foreground, hence Obj-IoU, precision and
  recall 0. A constant non-zero map gets Otsu threshold 0 from OpenCV, so
  its whole area is foreground. A constant map misses the pointing game.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import cv2
import numpy as np

__all__ = [
    "Binarized",
    "aggregate",
    "concentration",
    "contrast",
    "contrast_score",
    "f3",
    "f3_geometric",
    "func_iou",
    "func_iou_reference",
    "noun_threshold",
    "obj_iou",
    "otsu_binarize",
    "pointing_game",
    "precision_recall",
    "resize_map",
    "score",
    "SCORE_MODES",
]

SCORE_MODES = ("max_class", "mask")

#: Added to denominators exactly as the reference does (Contrast, Concentration).
EPS = 1e-8

#: Contrast at which contrast_score saturates at 1.
CONTRAST_SCALE = 20.0


class Binarized(NamedTuple):
    """Result of :func:`otsu_binarize`."""

    mask: np.ndarray
    """Boolean foreground ``U > t`` at the target shape."""
    threshold: float
    """Otsu threshold ``t`` on the 0..255 scale of ``U``."""
    resized: np.ndarray
    """The float32 map resized to the target shape (before the uint8 cast)."""


# --------------------------------------------------------------------------- helpers


def _as_grid_map(grid_map) -> np.ndarray:
    arr = np.asarray(grid_map)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"map must be a non-empty 2-D array; got shape {arr.shape}")
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError("map contains NaN or infinite values")
    return arr


def _as_shape(shape) -> tuple[int, int]:
    h, w = (int(v) for v in shape)
    if h <= 0 or w <= 0:
        raise ValueError(f"shape must be positive (h, w); got {shape}")
    return h, w


def _as_mask(mask) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"mask must be a non-empty 2-D array; got shape {arr.shape}")
    return arr.astype(bool)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else 0.0


def resize_map(grid_map, shape) -> np.ndarray:
    """The map as float32, resized bilinearly (OpenCV) to ``shape = (h, w)``."""
    arr = _as_grid_map(grid_map)
    h, w = _as_shape(shape)
    if arr.shape == (h, w):
        return arr.copy()
    return cv2.resize(arr, (w, h), interpolation=cv2.INTER_LINEAR)


def _at_mask_shape(heat, shape) -> np.ndarray:
    arr = np.asarray(heat)
    if arr.shape == tuple(shape):
        return _as_grid_map(arr)
    return resize_map(arr, shape)


def _to_uint8(resized: np.ndarray) -> np.ndarray:
    # Truncation as in the reference; the clip only matters for maps outside
    # [0, 1], which would otherwise wrap around in the cast.
    return np.clip(255.0 * resized, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- primitives


def otsu_binarize(grid_map, shape) -> Binarized:
    """Resize ``grid_map`` to ``shape``, cast to ``uint8(255·map)`` and apply Otsu (``B = U > t``)."""
    resized = resize_map(grid_map, shape)
    u8 = _to_uint8(resized)
    t, _ = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return Binarized(mask=u8 > t, threshold=float(t), resized=resized)


def obj_iou(pred, gt) -> float:
    """``|pred ∧ gt| / |pred ∨ gt|`` of two boolean masks (0 when both are empty)."""
    p, g = _as_mask(pred), _as_mask(gt)
    return _ratio(np.count_nonzero(p & g), np.count_nonzero(p | g))


def precision_recall(pred, gt) -> tuple[float, float]:
    """``(|pred ∧ gt| / |pred|, |pred ∧ gt| / |gt|)``; each is 0 when its denominator is."""
    p, g = _as_mask(pred), _as_mask(gt)
    inter = np.count_nonzero(p & g)
    return _ratio(inter, np.count_nonzero(p)), _ratio(inter, np.count_nonzero(g))


def contrast(heat, fg) -> float:
    """``mean(heat[fg]) / (mean(heat[~fg]) + 1e-8)``.

    ``heat`` is resized bilinearly to ``fg``'s shape if it differs. Empty
    foreground: its mean is taken as 1; empty background: its mean is 0.
    """
    fg = _as_mask(fg)
    resized = _at_mask_shape(heat, fg.shape)
    fg_mean = resized[fg].mean() if fg.any() else np.float32(1.0)
    bg = ~fg
    bg_mean = resized[bg].mean() if bg.any() else np.float32(0.0)
    return float(fg_mean / (bg_mean + EPS))


def contrast_score(contrast_value: float, scale: float = CONTRAST_SCALE) -> float:
    """``min(contrast / scale, 1)`` (and at least 0)."""
    return float(min(max(contrast_value / scale, 0.0), 1.0))


def concentration(heat, fg) -> float:
    """``sum(heat[fg]) / (sum(heat) + 1e-8)``; ``heat`` is resized to ``fg``'s shape if needed."""
    fg = _as_mask(fg)
    resized = _at_mask_shape(heat, fg.shape)
    return float(resized[fg].sum() / (resized.sum() + EPS))


def f3(obj_iou_value: float, contrast_score_value: float, concentration_value: float) -> float:
    """Harmonic mean ``3 / (1/IoU + 1/contrast_score + 1/Concentration)``; 0 if any term is <= 0."""
    terms = (obj_iou_value, contrast_score_value, concentration_value)
    if min(terms) <= 0:
        return 0.0
    return 3.0 / sum(1.0 / v for v in terms)


def f3_geometric(obj_iou_value: float, contrast_score_value: float, concentration_value: float) -> float:
    """Geometric mean ``(IoU · contrast_score · Concentration)^(1/3)``; 0 if any term is <= 0."""
    terms = (obj_iou_value, contrast_score_value, concentration_value)
    if min(terms) <= 0:
        return 0.0
    return float(np.cbrt(terms[0] * terms[1] * terms[2]))


def func_iou_reference(grid_map, shape) -> float:
    """The authors' "Func-IoU": share of the resized map below its own Otsu threshold ``t/255``.

    This is the background fraction of the same map; it is *not* TAM's
    Func-IoU (see :func:`func_iou`). Kept to reproduce the reference.
    """
    b = otsu_binarize(grid_map, shape)
    return float(np.count_nonzero(b.resized < b.threshold / 255.0)) / b.resized.size


# --------------------------------------------------------------------------- TAM's Func-IoU


def _token_maps(word) -> list[np.ndarray]:
    """A word's token maps: accepts one 2-D map, an (n, h, w) stack or a sequence of 2-D maps."""
    if isinstance(word, np.ndarray):
        if word.ndim == 2:
            return [word]
        if word.ndim == 3:
            return list(word)
        raise ValueError(f"a word's maps must be 2-D or (n, h, w); got shape {word.shape}")
    maps = [np.asarray(t) for t in word]
    if maps and all(t.ndim == 1 for t in maps):
        return [np.asarray(word)]  # a nested list that is itself one 2-D map
    if not maps or any(t.ndim != 2 for t in maps):
        raise ValueError("a word must have at least one 2-D token map")
    return maps


def _words(noun_maps) -> list[list[np.ndarray]]:
    if isinstance(noun_maps, np.ndarray):
        if noun_maps.ndim == 2:
            return [[noun_maps]]
        if noun_maps.ndim == 3:
            return [[m] for m in noun_maps]
        raise ValueError(f"noun_maps must be 2-D, (n, h, w) or a sequence of words; got {noun_maps.shape}")
    return [_token_maps(word) for word in noun_maps]


def noun_threshold(noun_maps, shape=None) -> float:
    """TAM's foreground threshold: the mean over noun words of each word's highest Otsu threshold.

    ``noun_maps``: a sequence of noun words, each one map or a sequence of
    token maps. ``shape``: the size the maps are resized to before Otsu (the
    mask size); ``None`` uses each map's own size. Returned on the 0..255
    scale. Raises ``ValueError`` when there is no noun word.
    """
    words = _words(noun_maps)
    if not words:
        raise ValueError("Func-IoU needs at least one noun word to set its threshold")
    per_word = [
        max(otsu_binarize(m, np.shape(m) if shape is None else shape).threshold for m in word)
        for word in words
    ]
    return float(np.mean(per_word))


def func_iou(function_maps, noun_maps=None, shape=None, *, threshold: float | None = None) -> float:
    """TAM's Func-IoU of one function word.

    The share of the function word's map, as ``uint8(255·map)`` at grid
    resolution, that lies below the noun threshold (:func:`noun_threshold`
    of ``noun_maps`` at ``shape``, or ``threshold`` on the 0..255 scale),
    averaged over the word's tokens. A function word should not light up the
    image, so higher is better.
    """
    if threshold is None:
        if noun_maps is None:
            raise ValueError("func_iou needs noun_maps or threshold")
        threshold = noun_threshold(noun_maps, shape)
    shares = [
        float(np.count_nonzero(_to_uint8(_as_grid_map(m)) < threshold)) / np.size(m)
        for m in _token_maps(function_maps)
    ]
    return float(np.mean(shares))


# --------------------------------------------------------------------------- pointing game


def pointing_game(grid_map, mask) -> bool:
    """True if the map's maximum, after bilinear resizing to the mask, lies inside the mask.

    Ties go to the first maximum in raster order; a constant map (no peak)
    is a miss.
    """
    m = _as_mask(mask)
    resized = resize_map(grid_map, m.shape)
    if not resized.max() > resized.min():
        return False
    return bool(m.flat[int(np.argmax(resized))])


# --------------------------------------------------------------------------- per item and dataset


def score(grid_map, label_image, mode: str = "max_class") -> dict[str, float]:
    """All localization metrics of one map against one label image.

    ``mode="max_class"`` (the reference's image-level mode): ``label_image``
    holds 0 for background and 1.. for objects; Obj-IoU is the maximum IoU
    over the labelled classes (ties: lowest label), precision and recall are
    taken at that class, and Contrast / Concentration use the union of all
    objects as foreground.

    ``mode="mask"`` (word mode): ``label_image`` is the referent's mask
    (non-zero = referent) and every metric uses it.

    Returns ``obj_iou, precision, recall, contrast, contrast_score,
    concentration, f3`` plus ``f3_geometric`` and ``func_iou_reference``.
    """
    if mode not in SCORE_MODES:
        raise ValueError(f"unknown score mode {mode!r}; valid modes: {', '.join(SCORE_MODES)}")
    labels = np.asarray(label_image)
    if labels.ndim != 2 or labels.size == 0:
        raise ValueError(f"label_image must be a non-empty 2-D array; got shape {labels.shape}")
    b = otsu_binarize(grid_map, labels.shape)
    pred = b.mask

    if mode == "mask":
        fg = labels.astype(bool)
        iou = obj_iou(pred, fg)
        precision, recall = precision_recall(pred, fg)
    else:
        if labels.dtype.kind not in "iub" or (labels.dtype.kind == "i" and labels.min() < 0):
            raise ValueError("label_image must hold non-negative integer labels in mode='max_class'")
        fg = labels > 0
        classes, inverse = np.unique(labels, return_inverse=True)
        inverse = inverse.reshape(labels.shape)
        area = np.bincount(inverse.ravel(), minlength=classes.size)
        inter = np.bincount(inverse[pred], minlength=classes.size)
        objects = classes != 0
        if objects.any():
            union = area + np.count_nonzero(pred) - inter
            ious = np.where(objects, inter / np.maximum(union, 1), -1.0)
            best = int(np.argmax(ious))
            iou = float(ious[best])
            precision = _ratio(inter[best], np.count_nonzero(pred))
            recall = _ratio(inter[best], area[best])
        else:
            iou = precision = recall = 0.0

    con = contrast(b.resized, fg)
    cs = contrast_score(con)
    conc = concentration(b.resized, fg)
    return {
        "obj_iou": iou,
        "precision": precision,
        "recall": recall,
        "contrast": con,
        "contrast_score": cs,
        "concentration": conc,
        "f3": f3(iou, cs, conc),
        "f3_geometric": f3_geometric(iou, cs, conc),
        "func_iou_reference": float(np.count_nonzero(b.resized < b.threshold / 255.0)) / b.resized.size,
    }


def aggregate(items: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Dataset means of per-item metric dicts, plus both ways of getting F3.

    Every key present in all items is averaged (``n`` = number of items).
    ``f3_mean_of_items`` is the mean of per-item F3; ``f3_of_means`` is F3 of
    the mean Obj-IoU, ``min(mean Contrast / 20, 1)`` and mean Concentration —
    the paper's tables use the latter. Raises ``ValueError`` on no items.
    """
    rows: Sequence[Mapping[str, float]] = list(items)
    if not rows:
        raise ValueError("aggregate needs at least one item")
    keys = [k for k in rows[0] if all(k in r for r in rows[1:])]
    out: dict[str, float] = {"n": float(len(rows))}
    for k in keys:
        out[k] = float(np.mean([float(r[k]) for r in rows]))
    if "f3" in out:
        out["f3_mean_of_items"] = out["f3"]
    if {"obj_iou", "contrast", "concentration"} <= out.keys():
        out["f3_of_means"] = f3(out["obj_iou"], contrast_score(out["contrast"]), out["concentration"])
    return out
