"""Is a word grounded in the image?  Per-token grounding features and a score in [0, 1].

The default features are read from what an :class:`~diffusion_cam.explanation.Explanation`
already holds, so they cost no forward pass:

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

Optionally (``explain(..., grounding_probe=True)``, CLI ``--grounding-probe``)
a one-word deletion probe adds two features, at a cost of four image forwards
per explained token (batched; :func:`diffusion_cam.metrics.faithfulness.deletion_insertion`
with the fractions 0 and :data:`PROBE_SHARE`, which also forms the two insertion images):

``masked_probability``
    the model's probability of the token at its position, re-masked when the
    model has a mask token, with the image intact.  A model without a mask
    token (DiffusionGemma) reads the position with the token visible, which
    asks it to copy the word rather than to predict it.
``deletion_drop``
    how much that probability falls when the top :data:`PROBE_SHARE` of the
    grid patches under the word's map are replaced by the image's mean colour.

The score is a logistic combination of some of these features.  Which ones
depends on what a token has, the *case*: a generated answer has a commit
probability, an answer given with ``answer=`` has none, and either may have
the probe's features.  :data:`CASES` holds, per case, the features it reads,
the intercept and weights, and the (mean, std) each feature was standardised
by: chosen among candidate subsets by scene-grouped cross-validation and fitted
on selection scenes of the Shapes world by ``benchmarks/grounding_validation.py``,
then frozen here.  A token scoring below :data:`THRESHOLD` is flagged as
ungrounded.  The constants come from shapes-tiny alone (docs/benchmarks.md
reports them on held-out scenes), so on another model the score is a rough guide.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .explanation import Explanation

#: what the combinations can read, per token (``log_contrast`` is log(1 + contrast): contrast has a long tail)
FEATURES = ("concentration", "log_contrast", "raw_mass", "probability", "masked_probability", "deletion_drop")
#: the features read from the map alone
MAP_FEATURES = ("concentration", "log_contrast", "raw_mass")
#: the features the one-word deletion probe adds
PROBE_FEATURES = ("masked_probability", "deletion_drop")
#: share of the grid's patches the probe removes (at least one patch)
PROBE_SHARE = 0.1
#: a token whose score is below this is flagged as ungrounded
THRESHOLD = 0.5

#: per case: (features read, intercept then one weight per feature, (mean, std) per feature);
#: printed by ``python benchmarks/grounding_validation.py --model shapes-tiny --scenes 40 --probe --fit``
#: from the 40 selection scenes (seeds from 70,000,000) with shapes-tiny's default DiffusionCAM.
#: Cross-validation kept one feature where there was one: the commit probability for a generated
#: answer (the probe added nothing to it), the re-masked probability for a given one, and no feature
#: for a given answer without the probe (its map features did worse than chance out of fold), which
#: therefore scores 0.5, not flagged: no evidence either way.
CASES: dict[str, tuple[tuple[str, ...], tuple[float, ...], tuple[tuple[float, float], ...]]] = {
    "generated": (("probability",), (-1.1906, 5.0234), ((0.97, 0.083),)),
    "given": ((), (0.0,), ()),
    "generated+probe": (("probability",), (-1.1906, 5.0234), ((0.97, 0.083),)),
    "given+probe": (("masked_probability",), (0.0016, 8.0142), ((0.4996, 0.4985),)),
}


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


def value(feat: dict[str, Any], name: str) -> float:
    """One input of a combination: a feature of :data:`FEATURES`, or ``raw_``-prefixed map feature."""
    if name.endswith("log_contrast"):
        return math.log1p(float(feat[name.replace("log_contrast", "contrast")]))
    return float(feat[name])


def case(feat: dict[str, Any]) -> str:
    """Which combination scores a token: by whether it has a commit probability and the probe's features."""
    base = "generated" if feat.get("probability") is not None else "given"
    return base + ("+probe" if feat.get("masked_probability") is not None else "")


def combine(x: Sequence[float], coefficients: Sequence[float], scale: Sequence[tuple[float, float]]) -> float:
    """Logistic of intercept + weights . standardised ``x``, in [0, 1]."""
    z = coefficients[0] + sum(w * (v - mu) / sd for w, v, (mu, sd) in zip(coefficients[1:], x, scale))
    return float(1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z)))))


def score(feat: dict[str, Any], cases: dict | None = None) -> float:
    """Grounding score in [0, 1] of one token's features (higher = better supported by the image)."""
    table = CASES if cases is None else cases
    name = case(feat)
    # a table without the probe's case scores a probed token as it would an unprobed one
    names, coefficients, scale = table.get(name) or table[name.replace("+probe", "")]
    return combine([value(feat, n) for n in names], coefficients, scale)


def probe(curves: Sequence[dict[str, Any]]) -> list[dict[str, float]]:
    """The probe's features of every token from its deletion curve at fractions (0, share)."""
    return [{"masked_probability": float(c["deletion"][0]), "deletion_drop": float(c["deletion"][0] - c["deletion"][1])}
            for c in curves]


def probe_share(grid_shape: Sequence[int]) -> float:
    """:data:`PROBE_SHARE`, raised to one patch on a grid too small to round it to one."""
    return max(PROBE_SHARE, 1.0 / max(1, int(np.prod(grid_shape))))


def grounding(exp: "Explanation", probed: Sequence[dict[str, float]] | None = None) -> list[dict[str, Any]]:
    """One dict per explained token: ``score``, ``flagged`` (score below :data:`THRESHOLD`), the ``case``
    that scored it and the features (with the probe's, ``probed``, when measured)."""
    out = []
    for row, feat in enumerate(features(exp)):
        if probed is not None:
            feat.update(probed[row])
        s = score(feat)
        out.append({"score": s, "flagged": bool(s < THRESHOLD), "case": case(feat), **feat})
    return out
