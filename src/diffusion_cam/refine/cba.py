"""CBA — Contextual Background Attenuation.

Values below an adaptive background threshold ``tau`` are scaled down by
``clip(v / tau, floor, 1)``: the weaker a background value, the more it is
attenuated, but never below ``floor`` times itself.

``tau = w_p50·P50(non-zero) + w_p60·P60(all) + w_mean·(mean_scale·mean(non-zero))
+ w_max·(max_scale·max)``. This is the one rule the authors' code effectively
applies (its extra "×0.3 below 0.2·tau" branch is undone by the later floor).
The paper figure's fixed threshold (0.4) is available through ``tau=``.
"""

from __future__ import annotations

import numpy as np

from ._validate import as_map

__all__ = ["cba", "cba_threshold"]


def cba_threshold(
    m,
    *,
    w_p50: float = 0.15,
    w_p60: float = 0.15,
    w_mean: float = 0.4,
    w_max: float = 0.3,
    mean_scale: float = 0.5,
    max_scale: float = 0.05,
    empty_tau: float = 1e-6,
) -> float:
    """The background threshold ``tau`` of map ``m`` (``empty_tau`` if ``m`` has no positive value)."""
    x = as_map(m)
    nonzero = x[x > 0]
    if nonzero.size == 0:
        return float(empty_tau)
    return float(
        w_p50 * np.percentile(nonzero, 50)
        + w_p60 * np.percentile(x, 60)
        + w_mean * (mean_scale * nonzero.mean())
        + w_max * (max_scale * x.max())
    )


def cba(
    m,
    *,
    floor: float = 0.5,
    tau: float | None = None,
    w_p50: float = 0.15,
    w_p60: float = 0.15,
    w_mean: float = 0.4,
    w_max: float = 0.3,
    mean_scale: float = 0.5,
    max_scale: float = 0.05,
    empty_tau: float = 1e-6,
) -> np.ndarray:
    """Attenuate background values: ``v <- v · clip(v / tau, floor, 1)`` where ``v < tau``.

    ``tau=None`` computes the adaptive threshold (:func:`cba_threshold`);
    a number fixes it.
    """
    x = as_map(m)
    if not 0 <= floor <= 1:
        raise ValueError(f"floor must lie in [0, 1], got {floor}")
    if tau is None:
        tau = cba_threshold(
            x,
            w_p50=w_p50,
            w_p60=w_p60,
            w_mean=w_mean,
            w_max=w_max,
            mean_scale=mean_scale,
            max_scale=max_scale,
            empty_tau=empty_tau,
        )
    if not tau > 0:
        # No positive threshold means no value counts as background.
        return x
    factor = np.clip(x / tau, floor, 1.0)
    return np.where(x < tau, x * factor, x)
