"""SICD — Single-Instance Causal Debiasing.

Both modes subtract a scaled interference map ``I`` from the map ``M`` and
clamp at zero: ``M' = max(M - alpha·I, 0)``, with ``alpha`` the least-squares
fit ``<M, I> / <I, I>`` of ``I`` to ``M``.

``mode="reference"`` (the authors' rule, reproduced exactly):
    ``r`` = number of distinct token ids occurring more than once / number of
    tokens; ``I = repeat_weight·r`` everywhere (if ``r > 0``) plus
    ``outlier_weight`` where ``M > mean + outlier_std·std``; ``alpha`` is
    clipped to ``[0, max_alpha]``; if the result's range (max − min) shrinks
    below ``range_guard`` times the input's range, ``M`` is returned
    unchanged. On typical maps the cap binds and the change is ~0.01.

``mode="causal"`` (estimated causal inference over the other answer tokens):
    ``I`` is the relevance-weighted mean of the other answer tokens' maps;
    a token with the explained token's own id is left out (its map explains
    the same word, not interference). ``alpha`` is the unconstrained
    least-squares fit clipped at 0 (no cap, no range guard): a negative
    ``alpha`` would *add* the others' evidence. Relevances default to equal
    weights; negative ones are treated as 0, since a relevance is a ReLU'd
    score.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from ._validate import as_map

__all__ = ["sicd", "repeat_ratio", "SICD_MODES"]

SICD_MODES = ("reference", "causal")


def repeat_ratio(token_ids: Sequence[int] | np.ndarray) -> float:
    """Distinct ids that occur more than once, divided by the number of ids (0 for no ids)."""
    ids = np.asarray(token_ids).ravel().tolist()
    if not ids:
        return 0.0
    repeated = sum(1 for count in Counter(ids).values() if count > 1)
    return repeated / len(ids)


def sicd(
    m,
    token_ids=None,
    mode: str = "reference",
    *,
    other_maps=None,
    weights=None,
    self_id: int | None = None,
    repeat_weight: float = 0.05,
    outlier_std: float = 2.0,
    outlier_weight: float = 0.02,
    max_alpha: float = 0.5,
    range_guard: float = 0.9,
) -> np.ndarray:
    """Subtract the fitted interference map from ``m`` (see the module docstring).

    Reference mode: ``token_ids`` are the answer's token ids, passed as they
    are (the pipeline does not add padding; the authors' code passed 64 ids
    including EOS padding).

    Causal mode: ``other_maps`` (N, h, w) are the other answer tokens' maps
    (required; N may be 0, which leaves ``m`` unchanged), ``weights`` (N,)
    their relevances, ``token_ids`` either None or the N ids of
    ``other_maps`` and ``self_id`` the explained token's id; maps whose id
    equals ``self_id`` are excluded.
    """
    x = as_map(m)
    if mode == "reference":
        if other_maps is not None or weights is not None:
            raise ValueError("other_maps / weights are only used by mode='causal'")
        return _sicd_reference(
            x,
            [] if token_ids is None else token_ids,
            repeat_weight=repeat_weight,
            outlier_std=outlier_std,
            outlier_weight=outlier_weight,
            max_alpha=max_alpha,
            range_guard=range_guard,
        )
    if mode == "causal":
        return _sicd_causal(x, token_ids, other_maps, weights, self_id)
    raise ValueError(f"unknown SICD mode {mode!r}; valid modes: {', '.join(SICD_MODES)}")


def _sicd_reference(x, token_ids, *, repeat_weight, outlier_std, outlier_weight, max_alpha, range_guard):
    r = repeat_ratio(token_ids)
    interference = np.full_like(x, repeat_weight * r if r > 0 else 0.0)
    interference[x > x.mean() + outlier_std * x.std()] += outlier_weight
    ii = float(np.vdot(interference, interference))
    if not ii > 0:
        return x
    alpha = float(np.clip(np.vdot(x, interference) / ii, 0.0, max_alpha))
    out = np.maximum(x - alpha * interference, 0.0)
    if np.ptp(out) < range_guard * np.ptp(x):
        return x
    return out


def _sicd_causal(x, token_ids, other_maps, weights, self_id):
    if other_maps is None:
        raise ValueError(
            "SICD mode='causal' needs other_maps: the (N, h, w) maps of the other answer "
            "tokens (use refine_stack to refine all tokens of an answer together)"
        )
    others = np.asarray(other_maps, dtype=np.float64)
    if others.ndim == 2 and others.shape == x.shape:
        others = others[None]
    if others.ndim != 3 or others.shape[1:] != x.shape:
        raise ValueError(f"other_maps must have shape (N, {x.shape[0]}, {x.shape[1]}); got {others.shape}")
    if not np.all(np.isfinite(others)):
        raise ValueError("other_maps contains NaN or infinite values")
    # Maps are non-negative by construction; clamping keeps I >= 0 so that
    # the subtraction can only lower values.
    others = np.maximum(others, 0.0)
    n = others.shape[0]

    if weights is None:
        w = np.ones(n)
    else:
        w = np.asarray(weights, dtype=np.float64).ravel()
        if w.shape != (n,):
            raise ValueError(f"weights must have shape ({n},) to match other_maps; got {w.shape}")
        if not np.all(np.isfinite(w)):
            raise ValueError("weights contains NaN or infinite values")
        w = np.maximum(w, 0.0)

    if token_ids is not None:
        ids = np.asarray(token_ids).ravel()
        if ids.shape != (n,):
            raise ValueError(
                f"in mode='causal' token_ids are the ids of other_maps: expected {n} ids, got {ids.size}"
            )
        if self_id is not None:
            w = np.where(ids == self_id, 0.0, w)

    total = w.sum()
    if n == 0 or not total > 0:
        return x
    interference = np.tensordot(w / total, others, axes=1)
    ii = float(np.vdot(interference, interference))
    if not ii > 0:
        return x
    alpha = max(float(np.vdot(x, interference)) / ii, 0.0)
    return np.maximum(x - alpha * interference, 0.0)
