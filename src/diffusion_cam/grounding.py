"""Is a word grounded in the image?  Per-token grounding features and a score in [0, 1].

Every feature is read from what an :class:`~diffusion_cam.explanation.Explanation`
already holds, so it costs no forward pass:

``concentration``
    1 minus the normalised Shannon entropy of the refined grid map taken as a
    distribution over patches: 1 = all evidence on one patch, 0 = spread evenly
    (or no evidence at all).
``contrast``
    peak over mean of the refined grid map (1 for a flat map; 0 for an empty one).
``raw_mass``
    mean of the raw grid map (before the refinement modules).  The extractor
    min-max normalises each layer's map before it is stored, so this is the
    share of the grid that carries evidence relative to the peak, not the
    gradient's absolute mass, which is not kept.
``raw_concentration`` / ``raw_contrast``
    the same two measures on the raw map (to tell whether refinement helps).
``probability`` / ``commit_step``
    the model's probability of the token when the denoising trajectory
    committed it, and that step over the trajectory's last step (None for an answer
    given with ``answer=``, which was never denoised).

The explained score at the ``final`` state is no confidence: there the token
is on the canvas, unmasked, and a masked diffusion model's output at an
unmasked position says little (on shapes-tiny a forced true answer gets
probability near 0), so a given answer has no probability feature.

The score is a logistic combination of these features with the coefficients
in :data:`COEFFICIENTS`, fitted once on selection scenes of the Shapes world by
``benchmarks/grounding_validation.py`` and frozen here; a token scoring below
:data:`THRESHOLD` is flagged as ungrounded.  A token without a commit
probability is scored by the map-only combination (:data:`MAP_COEFFICIENTS`).
Measured on held-out Shapes scenes (docs/benchmarks.md), the map features are
near chance and the commit probability carries the signal; the constants come
from shapes-tiny alone, so on another model the score is a rough guide.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .explanation import Explanation

#: the features every combination reads, in order (the commit probability is appended when known)
MAP_FEATURES = ("concentration", "log_contrast", "raw_mass")
#: intercept then one weight per feature of MAP_FEATURES + ("probability",); fitted by
#: ``python benchmarks/grounding_validation.py --model shapes-tiny --scenes 40 --fit`` on the
#: 40 selection scenes (seeds from 70,000,000) with shapes-tiny's default DiffusionCAM
COEFFICIENTS: tuple[float, ...] = (-1.1513, -0.2552, 0.6274, 0.3545, 4.9026)
#: intercept then one weight per feature of MAP_FEATURES (tokens without a commit probability)
MAP_COEFFICIENTS: tuple[float, ...] = (0.0152, 0.0681, 0.138, 0.2271)
#: a token whose score is below this is flagged as ungrounded
THRESHOLD = 0.5
#: what the features were standardised by before fitting: (mean, std) per feature, probability last
SCALE: tuple[tuple[float, float], ...] = ((0.351, 0.071), (2.7978, 0.3195), (0.0395, 0.0181), (0.97, 0.083))
#: the same for the map-only combination
MAP_SCALE: tuple[tuple[float, float], ...] = ((0.3485, 0.0732), (2.776, 0.3288), (0.0418, 0.0202))


def _concentration(m: np.ndarray) -> float:
    p = np.clip(np.asarray(m, dtype=np.float64).ravel(), 0.0, None)
    total = p.sum()
    if not np.isfinite(total) or total <= 0 or p.size < 2:
        return 0.0  # no evidence is no concentration
    p = p[p > 0] / total
    return float(1.0 - (-(p * np.log(p)).sum()) / math.log(m.size))


def _contrast(m: np.ndarray) -> float:
    m = np.clip(np.asarray(m, dtype=np.float64), 0.0, None)
    mean = m.mean()
    return float(m.max() / mean) if mean > 0 else 0.0


def _commit(exp: "Explanation", row: int) -> tuple[float | None, float | None]:
    """(commit probability, commit step over the number of steps) of explained row ``row``."""
    position = exp.token_indices[row]
    probability = None
    for step in exp.trajectory:
        if position in step.get("committed", []):
            probs = step.get("probabilities") or []
            k = step["committed"].index(position)
            probability = float(probs[k]) if k < len(probs) else None
            break
    # the last step that committed a word closes the trajectory (the configured count may be unset)
    last = max((int(t["step"]) for t in exp.trajectory), default=-1)
    step = exp.steps[row] if row < len(exp.steps) else -1
    share = float(step) / last if step >= 0 and last > 0 else (0.0 if step == 0 else None)
    return probability, share


def features(exp: "Explanation") -> list[dict[str, Any]]:
    """The grounding features of every explained token (see the module's docstring)."""
    out = []
    for row in range(len(exp.tokens)):
        refined, raw = exp.grid_maps[row], exp.raw_grid_maps[row]
        probability, share = _commit(exp, row)
        contrast = _contrast(refined)
        out.append({
            "token": exp.tokens[row],
            "concentration": _concentration(refined),
            "contrast": contrast,
            "raw_mass": float(np.clip(raw, 0.0, None).mean()),
            "raw_concentration": _concentration(raw),
            "raw_contrast": _contrast(raw),
            "probability": probability,
            "commit_step": share,
        })
    return out


def vector(feat: dict[str, Any], raw: bool = False) -> list[float]:
    """The combination's inputs of one token: MAP_FEATURES (from the raw map when ``raw``)."""
    conc = feat["raw_concentration" if raw else "concentration"]
    contrast = feat["raw_contrast" if raw else "contrast"]
    return [float(conc), math.log1p(float(contrast)), float(feat["raw_mass"])]


def combine(x: list[float], coefficients: tuple[float, ...], scale: tuple[tuple[float, float], ...]) -> float:
    """Logistic of intercept + weights . standardised ``x``, in [0, 1]."""
    z = coefficients[0] + sum(w * (v - mu) / sd for w, v, (mu, sd) in zip(coefficients[1:], x, scale))
    return float(1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z)))))


def score(feat: dict[str, Any]) -> float:
    """Grounding score in [0, 1] of one token's features (higher = better supported by the image)."""
    x = vector(feat)
    if feat.get("probability") is None:
        return combine(x, MAP_COEFFICIENTS, MAP_SCALE)
    return combine(x + [float(feat["probability"])], COEFFICIENTS, SCALE)


def grounding(exp: "Explanation") -> list[dict[str, Any]]:
    """One dict per explained token: ``score``, ``flagged`` (score below :data:`THRESHOLD`) and the features."""
    out = []
    for feat in features(exp):
        s = score(feat)
        out.append({"score": s, "flagged": bool(s < THRESHOLD), **feat})
    return out
