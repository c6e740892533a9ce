"""Fitting the grounding score: logistic regression, AUROC, and a choice of features by scene-grouped cross-validation.

Used by ``benchmarks/grounding_validation.py`` to produce the constants frozen
in :data:`diffusion_cam.grounding.CASES`.  Words of one scene share the image
and the objects asked about, so folds split scenes, never words of a scene.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.stats import rankdata

#: candidate feature subsets (names of :data:`diffusion_cam.grounding.FEATURES`); each case tries those
#: whose features it has, plus everything it has.  ``constant`` reads nothing: the selection words' base
#: rate, AUROC 0.5 by construction; it wins where every feature does worse than chance out of fold
_MAP = ("concentration", "log_contrast", "raw_mass")
_PROBE = ("masked_probability", "deletion_drop")
CANDIDATES: dict[str, tuple[str, ...]] = {
    "constant": (),
    "map": _MAP,
    "probability": ("probability",),
    "probability + map": ("probability",) + _MAP,
    "masked probability": ("masked_probability",),
    "deletion drop": ("deletion_drop",),
    "probe": _PROBE,
    "probe + map": _PROBE + _MAP,
    "probability + probe": ("probability",) + _PROBE,
}


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Probability that a grounded word outscores a hallucinated one (ties count half): Mann-Whitney U."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    pos, neg = int(labels.sum()), int((1 - labels).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coefficients with intercept first, feature means, feature stds) by Newton's method on standardised x."""
    x = np.asarray(x, dtype=np.float64)
    mu, sd = x.mean(0), x.std(0)
    sd[sd == 0] = 1.0
    z = np.hstack([np.ones((len(x), 1)), (x - mu) / sd])
    w = np.zeros(z.shape[1])
    penalty = l2 * np.diag(np.r_[0.0, np.ones(len(w) - 1)])  # the intercept is not shrunk
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w, -60, 60)))
        grad = z.T @ (p - y) + penalty @ w
        hess = z.T @ (z * (p * (1 - p))[:, None]) + penalty
        w -= np.linalg.solve(hess, grad)
    return w, mu, sd


def predict(x: np.ndarray, w: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """The fitted logistic's score of every row of ``x``."""
    return 1.0 / (1.0 + np.exp(-np.clip(w[0] + ((np.asarray(x, dtype=np.float64) - mu) / sd) @ w[1:], -60, 60)))


def folds(groups: np.ndarray, k: int) -> np.ndarray:
    """Fold of every row: the sorted distinct groups dealt round-robin to ``k`` folds (deterministic)."""
    ids = np.unique(groups)
    if len(ids) < k:
        raise ValueError(f"{k}-fold cross-validation needs at least {k} groups (scenes); there are {len(ids)}")
    return (np.searchsorted(ids, groups) % k).astype(int)


def matrix(columns: dict[str, np.ndarray], names: Sequence[str], rows: int) -> np.ndarray:
    """The named columns side by side, (rows, 0) for no name."""
    return np.column_stack([columns[n] for n in names]) if names else np.empty((rows, 0))


def cv_auroc(x: np.ndarray, y: np.ndarray, groups: np.ndarray, k: int = 5) -> float:
    """AUROC of the out-of-fold scores of a logistic fit on ``x``, folds grouped by ``groups``."""
    fold = folds(groups, k)
    out = np.empty(len(y))
    for f in range(k):
        held = fold == f
        out[held] = predict(x[held], *fit_logistic(x[~held], y[~held]))
    return auroc(out, y)


def select(columns: dict[str, np.ndarray], y: np.ndarray, groups: np.ndarray,
           candidates: dict[str, Sequence[str]], k: int = 5) -> tuple[str, dict[str, float]]:
    """The candidate subset of ``columns`` with the best cross-validated AUROC, and every candidate's.

    Candidates naming a column not in ``columns`` are skipped; ties go to the
    subset with fewer features (then the earlier one).
    """
    y = np.asarray(y)
    scores = {}
    for name, names in candidates.items():
        if all(n in columns for n in names):
            scores[name] = cv_auroc(matrix(columns, names, len(y)), y, groups, k)
    if not scores:
        raise ValueError(f"no candidate subset can be formed from the features {', '.join(columns)}")
    order = list(scores)
    ranked = {n: scores[n] if np.isfinite(scores[n]) else -np.inf for n in order}  # one class in a fold: no AUROC
    best = max(order, key=lambda n: (ranked[n], -len(candidates[n]), -order.index(n)))
    return best, scores
