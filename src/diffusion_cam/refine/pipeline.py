"""The refinement chain: AKD → DACG → CBA → clip to [0, max raw] → min-max → SICD.

Any subset of the four modules can be switched on (ablations); they always
run in that order, and the clip and min-max steps always run. Module
parameters are passed as ``<module>_<parameter>`` keywords, e.g.
``refine(m, ids, dacg_sigma=0.5, cba_floor=0.4, akd_steps=32,
akd_image_size=480)``; parameters of modules that are switched off are
ignored so that one set of keywords can drive a whole ablation.
"""

from __future__ import annotations

import numpy as np

from ._validate import as_map
from .akd import akd
from .cba import cba
from .dacg import dacg
from .sicd import SICD_MODES, sicd

__all__ = ["refine", "refine_stack", "MODULES"]

#: Module names in the order the chain applies them.
MODULES = ("akd", "dacg", "cba", "sicd")

_MINMAX_EPS = 1e-8


def _check_modules(modules) -> tuple[str, ...]:
    if isinstance(modules, str):
        modules = (modules,)
    names = tuple(modules)
    unknown = [name for name in names if name not in MODULES]
    if unknown:
        raise ValueError(f"unknown refinement module(s) {unknown}; valid modules: {', '.join(MODULES)}")
    return tuple(name for name in MODULES if name in names)


def _split_params(module_params: dict) -> dict[str, dict]:
    routed: dict[str, dict] = {name: {} for name in MODULES}
    for key, value in module_params.items():
        prefix, sep, param = key.partition("_")
        if not sep or prefix not in routed or not param:
            raise TypeError(
                f"unexpected keyword {key!r}: module parameters are written "
                f"<module>_<parameter> with <module> one of {', '.join(MODULES)}"
            )
        routed[prefix][param] = value
    return routed


def _pre_sicd(x: np.ndarray, active, params, raw_max, akd_kernel) -> np.ndarray:
    out = x
    if "akd" in active:
        out = akd(out, akd_kernel, **params["akd"])
    if "dacg" in active:
        out = dacg(out, **params["dacg"])
    if "cba" in active:
        out = cba(out, **params["cba"])
    top = float(x.max() if raw_max is None else raw_max)
    out = np.clip(out, 0.0, max(top, 0.0))
    lo, hi = out.min(), out.max()
    if hi > lo:
        # Same epsilon as the raw-map normalisation (and the authors' code).
        out = (out - lo) / (hi - lo + _MINMAX_EPS)
    return out


def _finish(out: np.ndarray) -> np.ndarray:
    # A no-op for maps in [0, 1]; it only bounds inputs that were never
    # normalised (e.g. a constant map above 1, which min-max leaves alone).
    return np.clip(out, 0.0, 1.0)


def refine(
    m,
    token_ids=None,
    modules=MODULES,
    *,
    raw_max: float | None = None,
    akd_kernel: int | str = 3,
    sicd_mode: str = "reference",
    other_maps=None,
    **module_params,
) -> np.ndarray:
    """Refine one raw map.

    ``m``: 2-D raw map (normally min-max normalised, in [0, 1]).
    ``token_ids``: passed to SICD as given — in reference mode the answer's
    token ids; in causal mode the ids of ``other_maps`` (or None).
    ``modules``: any subset of :data:`MODULES`, applied in the chain's order.
    ``raw_max``: upper clip bound; default ``m.max()``.
    ``akd_kernel``: odd int or ``"adaptive"`` (then give ``akd_steps=`` and
    ``akd_image_size=``).
    ``sicd_mode``: ``"reference"`` or ``"causal"`` (needs ``other_maps``).

    Returns a float64 map of ``m``'s shape with values in [0, 1]; an all-zero
    map stays all zero.
    """
    x = as_map(m)
    active = _check_modules(modules)
    if sicd_mode not in SICD_MODES:
        raise ValueError(f"unknown SICD mode {sicd_mode!r}; valid modes: {', '.join(SICD_MODES)}")
    if other_maps is not None and sicd_mode != "causal":
        raise ValueError("other_maps is only used with sicd_mode='causal'")
    params = _split_params(module_params)
    out = _pre_sicd(x, active, params, raw_max, akd_kernel)
    if "sicd" in active:
        if sicd_mode == "causal":
            out = sicd(out, token_ids, "causal", other_maps=other_maps, **params["sicd"])
        else:
            out = sicd(out, token_ids, "reference", **params["sicd"])
    return _finish(out)


def refine_stack(
    maps,
    token_ids,
    modules=MODULES,
    sicd_mode: str = "reference",
    *,
    relevance=None,
    akd_kernel: int | str = 3,
    **module_params,
) -> np.ndarray:
    """Refine the maps of all answer tokens of one answer together.

    ``maps``: (N, h, w) raw maps, one per answer token; ``token_ids``: the N
    token ids in the same order. Each map is clipped to its own raw maximum.

    Reference SICD uses all N ids for every token. Causal SICD builds each
    token's interference from the other tokens' **pre-SICD** maps (after
    AKD/DACG/CBA, clip and min-max): every token then sees the same inputs
    whatever the order, no token's debiasing feeds another's, and interference
    is on the same normalised scale as the map it is fitted to. Tokens with
    the explained token's id are excluded. ``relevance`` (N, N), optional:
    row ``i`` holds the relevance of every token to token ``i`` (diagonal
    ignored), used as the causal weights; default equal weights.

    Returns an (N, h, w) float64 array.
    """
    stack = np.asarray(maps, dtype=np.float64)
    if stack.ndim != 3:
        raise ValueError(f"maps must have shape (N, h, w); got {stack.shape}")
    n = stack.shape[0]
    ids = np.asarray(token_ids).ravel()
    if ids.shape != (n,):
        raise ValueError(f"token_ids must hold one id per map: expected {n}, got {ids.size}")
    active = _check_modules(modules)
    if sicd_mode not in SICD_MODES:
        raise ValueError(f"unknown SICD mode {sicd_mode!r}; valid modes: {', '.join(SICD_MODES)}")
    if relevance is not None:
        relevance = np.asarray(relevance, dtype=np.float64)
        if relevance.shape != (n, n):
            raise ValueError(f"relevance must have shape ({n}, {n}); got {relevance.shape}")
        if sicd_mode != "causal":
            raise ValueError("relevance is only used with sicd_mode='causal'")
    params = _split_params(module_params)

    reserved = {"other_maps", "weights", "self_id"} & params["sicd"].keys()
    if reserved:
        raise TypeError(f"refine_stack sets sicd {sorted(reserved)} itself (use relevance= for the weights)")

    pre = np.empty_like(stack)
    for i in range(n):
        pre[i] = _pre_sicd(as_map(stack[i], f"maps[{i}]"), active, params, None, akd_kernel)
    if "sicd" not in active:
        return _finish(pre)

    out = np.empty_like(pre)
    for i in range(n):
        if sicd_mode == "reference":
            out[i] = sicd(pre[i], ids, "reference", **params["sicd"])
        else:
            keep = np.arange(n) != i
            out[i] = sicd(
                pre[i],
                ids[keep],
                "causal",
                other_maps=pre[keep],
                weights=None if relevance is None else relevance[i, keep],
                self_id=ids[i],
                **params["sicd"],
            )
    return _finish(out)
