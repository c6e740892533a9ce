"""Refinement modules: hand-checked behaviour, edge cases and properties."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.ndimage as ndi
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import diffusion_cam.refine as R
from diffusion_cam.refine import (
    MODULES,
    adaptive_kernel_size,
    akd,
    cba,
    dacg,
    dacg_threshold,
    refine,
    refine_stack,
    sicd,
)
from diffusion_cam.refine.akd import _sorting_network
from diffusion_cam.refine.cba import cba_threshold
from diffusion_cam.refine.sicd import repeat_ratio


def loop_rank_gaussian(img: np.ndarray, k: int, pad_mode: str = "reflect") -> np.ndarray:
    """Per-pixel statement of the AKD rule, used as an independent oracle."""
    n = k * k
    offsets = np.arange(n) - n // 2
    padded = np.pad(img, k // 2, mode=pad_mode)
    out = np.zeros_like(img, dtype=np.float64)
    for i in range(img.shape[0]):
        for j in range(img.shape[1]):
            w = np.sort(padded[i : i + k, j : j + k].ravel())
            mu = w.mean()
            if mu <= 0:
                continue
            s = w.std() / mu
            if s == 0:
                out[i, j] = mu
                continue
            weights = np.exp(-(offsets**2) / (2 * s * s))
            out[i, j] = (weights * w).sum() / weights.sum()
    return out


def random_map(rng, shape, zero_fraction=0.3):
    m = rng.random(shape)
    m[rng.random(shape) < zero_fraction] = 0.0
    return m


# --------------------------------------------------------------------------- AKD


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8, 9, 16])
def test_sorting_network_sorts_every_01_input(n):
    # 0-1 principle: a comparator network that sorts all 0/1 inputs sorts everything.
    data = np.array(list(itertools.product((0, 1), repeat=n)), dtype=np.int8).T.copy()
    for a, b in _sorting_network(n):
        lo = np.minimum(data[a], data[b])
        data[b] = np.maximum(data[a], data[b])
        data[a] = lo
    assert np.all(np.diff(data, axis=0) >= 0)


@pytest.mark.parametrize("n", [25, 49])
def test_sorting_network_sorts_random_input(n):
    data = np.random.default_rng(n).random((n, 4000))
    expected = np.sort(data, axis=0)
    for a, b in _sorting_network(n):
        lo = np.minimum(data[a], data[b])
        data[b] = np.maximum(data[a], data[b])
        data[a] = lo
    np.testing.assert_array_equal(data, expected)


@pytest.mark.parametrize("k", [1, 3, 5, 7, 9, 11])
@pytest.mark.parametrize("shape", [(1, 1), (1, 6), (2, 3), (5, 4), (13, 9)])
def test_akd_matches_per_pixel_rule(k, shape):
    rng = np.random.default_rng(k * 100 + shape[0] * 10 + shape[1])
    m = random_map(rng, shape)
    np.testing.assert_allclose(akd(m, k), loop_rank_gaussian(m, k), rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("border", ["symmetric", "zero"])
def test_akd_other_borders_match_per_pixel_rule(k, border):
    m = random_map(np.random.default_rng(k), (9, 7))
    pad = {"symmetric": "symmetric", "zero": "constant"}[border]
    np.testing.assert_allclose(akd(m, k, border=border), loop_rank_gaussian(m, k, pad), rtol=0, atol=1e-12)
    inner = (slice(k // 2, -(k // 2)),) * 2  # windows inside the map do not see the border
    np.testing.assert_array_equal(akd(m, k, border=border)[inner], akd(m, k)[inner])


def test_akd_zero_border_gives_an_edge_blob_no_extra_support():
    # two 2x2 blobs of about the same strength, one on the edge, one inside
    m = np.full((6, 6), 0.1)
    m[0:2, 3:5] = 1.0
    m[3:5, 1:3] = 0.9
    sym, zero = akd(m, 3, border="symmetric"), akd(m, 3, border="zero")
    # the symmetric border repeats the edge row, so the edge blob fills more of its windows
    assert sym[0:2, 3:5].max() > 2.5 * sym[3:5, 1:3].max()
    # zero padding counts nothing twice: the two blobs come out in proportion to their strength
    assert 1.0 < zero[0:2, 3:5].max() / zero[3:5, 1:3].max() < 1.3
    np.testing.assert_array_equal(zero[3:5, 1:3], sym[3:5, 1:3])


def test_akd_border_decides_whether_a_peak_next_to_the_edge_moves_onto_it():
    # a two-pixel blob one column in from the left edge of a coarse grid
    m = np.zeros((6, 6))
    m[2:4, 1] = 1.0
    m[2:4, 2] = 0.5
    ref = akd(m, 3)  # reflect-101: the edge window sees column 1 twice
    assert ref[2:4, 0].max() > ref[2:4, 1].max()
    sym = akd(m, 3, border="symmetric")
    assert np.unravel_index(np.argmax(sym), sym.shape)[1] in (1, 2)
    assert sym[2:4, 0].max() < sym[2:4, 1].max()
    np.testing.assert_array_equal(akd(m, 3, border="reflect101"), ref)  # the default is the reference's
    with pytest.raises(ValueError, match="border must be one of reflect101, symmetric, zero"):
        akd(m, 3, border="wrap")
    # the pipeline routes it like any module parameter
    routed = R.refine(m, [1, 2], ("akd",), akd_border="symmetric")
    assert np.argmax(routed) == np.argmax(sym) and np.argmax(R.refine(m, [1, 2], ("akd",))) == np.argmax(ref)


def test_akd_constant_window_gives_mean_not_nan():
    m = np.full((6, 7), 0.37)
    out = akd(m, 3)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, 0.37, atol=1e-15)
    # A flat patch inside a varied map too.
    m = np.random.default_rng(0).random((10, 10))
    m[2:7, 2:7] = 0.5
    out = akd(m, 3)
    np.testing.assert_allclose(out[3:6, 3:6], 0.5, atol=1e-15)


def test_akd_zero_windows_and_single_hot():
    assert np.array_equal(akd(np.zeros((5, 5)), 3), np.zeros((5, 5)))
    m = np.zeros((7, 7))
    m[3, 3] = 1.0
    out = akd(m, 3)
    np.testing.assert_allclose(out, loop_rank_gaussian(m, 3), atol=1e-15)
    assert out[0, 0] == 0.0 and out.max() < 1.0


def test_akd_does_not_modify_input_and_is_deterministic():
    m = np.random.default_rng(1).random((9, 11))
    before = m.copy()
    a, b = akd(m, 5), akd(m, 5)
    assert np.array_equal(m, before)
    assert np.array_equal(a, b)


def test_akd_accepts_lists_and_float32():
    m = np.random.default_rng(2).random((4, 5)).astype(np.float32)
    out = akd(m.tolist(), 3)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, akd(m, 3))


@pytest.mark.parametrize("bad", [0, 2, 4, -3, 2.5, "big", True])
def test_akd_rejects_bad_kernel(bad):
    with pytest.raises(ValueError):
        akd(np.ones((3, 3)), bad)


@pytest.mark.parametrize("bad", [np.ones(4), np.ones((2, 2, 2)), np.zeros((0, 3)), [[0.1, np.nan]], [[np.inf]]])
def test_modules_reject_bad_maps(bad):
    for fn in (lambda m: akd(m), dacg, cba, lambda m: sicd(m, [1, 2])):
        with pytest.raises(ValueError):
            fn(bad)


def test_adaptive_kernel_size_formula_and_clamp():
    # int(3 · 2 · 1 · 0.9375) = 5
    assert adaptive_kernel_size(32, 0.2, 480) == 5
    # 3 · 2 · 1.5 · 1.25 = 11.25 -> 11
    assert adaptive_kernel_size(32, 0.3, 640) == 11
    assert adaptive_kernel_size(2, 0.05, 24) == 3  # the reference's case
    assert adaptive_kernel_size(1000, 10.0, 10_000) == 11  # every factor capped: 3·2·2·1.5 = 18 -> 11
    for steps, sigma, size in itertools.product([1, 8, 32, 64], [0.0, 0.1, 0.3, 1.0], [14, 256, 1024]):
        k = adaptive_kernel_size(steps, sigma, size)
        assert 3 <= k <= 11 and k % 2 == 1
    with pytest.raises(ValueError):
        adaptive_kernel_size(0, 0.1, 100)


def test_akd_adaptive_kernel():
    m = np.random.default_rng(3).random((20, 20))
    k = adaptive_kernel_size(32, float(np.std(m)), 640)
    assert k > 3
    np.testing.assert_array_equal(akd(m, "adaptive", steps=32, image_size=640), akd(m, k))
    np.testing.assert_array_equal(
        akd(m, "adaptive", steps=32, image_size=640, sigma=0.01), akd(m, 3)
    )
    with pytest.raises(ValueError, match="steps"):
        akd(m, "adaptive")


# --------------------------------------------------------------------------- DACG


def test_dacg_threshold_branches():
    # std > 0.22 -> 90
    assert dacg_threshold(np.array([[0.0, 1.0], [0.0, 1.0]]))[0] == 90
    # low std, mean > 0.35 -> 75
    assert dacg_threshold(np.full((3, 3), 0.5))[0] == 75
    # low std, mean < 0.25 -> 80
    assert dacg_threshold(np.full((3, 3), 0.1))[0] == 80
    # low std, mean in [0.25, 0.35] -> 85
    assert dacg_threshold(np.full((3, 3), 0.3))[0] == 85
    m = np.linspace(0.0, 0.2, 16).reshape(4, 4)
    q, zeta = dacg_threshold(m)
    assert zeta == pytest.approx(np.percentile(m[m > 0], q))
    assert dacg_threshold(np.zeros((3, 3))) == (80.0, 1e-6)


def test_dacg_blurs_only_low_confidence_pixels_with_2d_gaussian():
    rng = np.random.default_rng(4)
    m = random_map(rng, (12, 10))
    sigma = 0.8
    _, zeta = dacg_threshold(m)
    out = dacg(m, sigma=sigma)
    taps = np.exp(-(np.arange(-1, 2) ** 2) / (2 * sigma**2))
    taps /= taps.sum()
    blurred = ndi.correlate1d(ndi.correlate1d(m, taps, axis=0, mode="mirror"), taps, axis=1, mode="mirror")
    high = m > zeta
    assert high.any() and (~high).any()
    np.testing.assert_array_equal(out[high], m[high])
    np.testing.assert_allclose(out[~high], blurred[~high], atol=1e-12)


def test_dacg_default_is_close_to_identity_but_not_a_noop():
    m = random_map(np.random.default_rng(5), (16, 16))
    out = dacg(m)
    assert not np.array_equal(out, m)
    assert np.abs(out - m).max() < 0.02


def test_dacg_edge_cases():
    assert np.array_equal(dacg(np.zeros((4, 4))), np.zeros((4, 4)))
    np.testing.assert_array_equal(dacg(np.ones((3, 3))), np.ones((3, 3)))
    assert dacg(np.array([[0.4]]))[0, 0] == pytest.approx(0.4)
    with pytest.raises(ValueError):
        dacg(np.ones((3, 3)), sigma=0)


# --------------------------------------------------------------------------- CBA


def test_cba_fixed_threshold_worked_examples():
    # The paper figure's examples with delta = 0.4: 0.3 -> x0.75, 0.1 and 0.2 -> x0.5, 0.7 kept.
    m = np.array([[0.3, 0.1], [0.2, 0.7]])
    out = cba(m, tau=0.4)
    np.testing.assert_allclose(out, [[0.225, 0.05], [0.1, 0.7]])


def test_cba_adaptive_threshold():
    rng = np.random.default_rng(6)
    m = random_map(rng, (9, 9))
    nz = m[m > 0]
    tau = 0.15 * np.percentile(nz, 50) + 0.15 * np.percentile(m, 60) + 0.4 * 0.5 * nz.mean() + 0.3 * 0.05 * m.max()
    assert cba_threshold(m) == pytest.approx(tau)
    expected = np.where(m < tau, m * np.clip(m / tau, 0.5, 1.0), m)
    np.testing.assert_allclose(cba(m), expected)
    np.testing.assert_allclose(cba(m, floor=0.2), np.where(m < tau, m * np.clip(m / tau, 0.2, 1.0), m))


def test_cba_edge_cases():
    assert np.array_equal(cba(np.zeros((3, 3))), np.zeros((3, 3)))
    np.testing.assert_array_equal(cba(np.full((2, 2), 0.6)), np.full((2, 2), 0.6))
    with pytest.raises(ValueError):
        cba(np.ones((2, 2)), floor=1.5)


# --------------------------------------------------------------------------- SICD


def test_repeat_ratio():
    assert repeat_ratio([1, 2, 3]) == 0
    assert repeat_ratio([1, 1, 2, 2, 2, 3]) == pytest.approx(2 / 6)
    assert repeat_ratio([]) == 0
    assert repeat_ratio(np.array([5, 5, 5, 5])) == pytest.approx(1 / 4)


def test_sicd_reference_closed_form():
    rng = np.random.default_rng(7)
    m = rng.random((8, 8)) * 0.5
    m[0, 0] = 1.0  # an outlier above mean + 2 std
    ids = [1, 1, 2, 3]
    r = 1 / 4
    interference = np.full_like(m, 0.05 * r)
    interference[m > m.mean() + 2 * m.std()] += 0.02
    alpha = min(np.vdot(m, interference) / np.vdot(interference, interference), 0.5)
    expected = np.maximum(m - alpha * interference, 0)
    np.testing.assert_allclose(sicd(m, ids), expected)
    # Uncapped, alpha is the least-squares fit.
    lsq = np.linalg.lstsq(interference.reshape(-1, 1), m.ravel(), rcond=None)[0][0]
    out = sicd(m, ids, max_alpha=np.inf, range_guard=0.0)
    np.testing.assert_allclose(out, np.maximum(m - lsq * interference, 0))


def test_sicd_reference_no_interference_and_guard():
    m = np.full((4, 4), 0.2)
    np.testing.assert_array_equal(sicd(m, [1, 2, 3]), m)  # no repeats, no outliers
    # Uncapped alpha flattens the map; the range guard then keeps the input.
    m = np.zeros((6, 6))
    m[1, 1] = 1.0
    np.testing.assert_array_equal(sicd(m, [1, 2], max_alpha=np.inf), m)
    assert np.ptp(sicd(m, [1, 2], max_alpha=np.inf, range_guard=0.0)) < 0.9


def test_sicd_causal_least_squares():
    rng = np.random.default_rng(8)
    m = rng.random((6, 6))
    others = rng.random((3, 6, 6))
    weights = np.array([1.0, 2.0, 0.0])
    interference = (weights[:, None, None] * others).sum(0) / weights.sum()
    alpha = np.vdot(m, interference) / np.vdot(interference, interference)
    out = sicd(m, None, "causal", other_maps=others, weights=weights)
    np.testing.assert_allclose(out, np.maximum(m - alpha * interference, 0))
    # The same map as interference is removed entirely.
    np.testing.assert_allclose(sicd(m, None, "causal", other_maps=m[None]), 0, atol=1e-15)


def test_sicd_causal_excludes_same_token_and_handles_no_interference():
    rng = np.random.default_rng(9)
    m = rng.random((5, 5))
    other = rng.random((1, 5, 5))
    np.testing.assert_array_equal(sicd(m, [42], "causal", other_maps=other, self_id=42), m)
    assert not np.array_equal(sicd(m, [41], "causal", other_maps=other, self_id=42), m)
    np.testing.assert_array_equal(sicd(m, None, "causal", other_maps=np.zeros((0, 5, 5))), m)
    np.testing.assert_array_equal(sicd(m, None, "causal", other_maps=other, weights=[-1.0]), m)
    np.testing.assert_array_equal(sicd(m, None, "causal", other_maps=np.zeros((2, 5, 5))), m)


def test_sicd_errors():
    m = np.ones((3, 3))
    with pytest.raises(ValueError, match="other_maps"):
        sicd(m, [1, 2], "causal")
    with pytest.raises(ValueError, match="shape"):
        sicd(m, None, "causal", other_maps=np.ones((2, 4, 4)))
    with pytest.raises(ValueError, match="weights"):
        sicd(m, None, "causal", other_maps=np.ones((2, 3, 3)), weights=[1.0])
    with pytest.raises(ValueError, match="ids"):
        sicd(m, [1, 2, 3], "causal", other_maps=np.ones((2, 3, 3)))
    with pytest.raises(ValueError, match="mode"):
        sicd(m, [1], "other")
    with pytest.raises(ValueError):
        sicd(m, [1], other_maps=np.ones((1, 3, 3)))


# --------------------------------------------------------------------------- pipeline


def test_refine_order_is_fixed_and_matches_manual_chain():
    rng = np.random.default_rng(10)
    m = random_map(rng, (14, 14))
    ids = [3, 3, 4, 5, 6]
    e = cba(dacg(akd(m, 3)))
    e = np.clip(e, 0, m.max())
    e = (e - e.min()) / (e.max() - e.min() + 1e-8)
    expected = sicd(e, ids)
    np.testing.assert_allclose(refine(m, ids), expected, atol=1e-15)
    np.testing.assert_array_equal(refine(m, ids, ("sicd", "cba", "akd", "dacg")), refine(m, ids))


def test_refine_no_modules_is_clip_and_minmax():
    m = np.array([[0.2, 0.4], [0.6, 1.2]])
    np.testing.assert_allclose(refine(m, [], ()), (m - 0.2) / (1.0 + 1e-8))
    np.testing.assert_allclose(refine(m, [], (), raw_max=0.6), np.clip((np.minimum(m, 0.6) - 0.2) / (0.4 + 1e-8), 0, 1))


def test_refine_param_routing():
    m = random_map(np.random.default_rng(11), (10, 10))
    assert not np.array_equal(refine(m, [1], ("dacg",), dacg_sigma=2.0), refine(m, [1], ("dacg",)))
    # Parameters of modules that are switched off are ignored.
    np.testing.assert_array_equal(refine(m, [1], ("akd",), cba_floor=0.1), refine(m, [1], ("akd",)))
    np.testing.assert_array_equal(
        refine(m, [1], ("akd",), akd_kernel="adaptive", akd_steps=32, akd_image_size=640),
        refine(m, [1], ("akd",), akd_kernel=adaptive_kernel_size(32, float(np.std(m)), 640)),
    )
    with pytest.raises(TypeError):
        refine(m, [1], blur=3)
    with pytest.raises(TypeError):
        refine(m, [1], ("dacg",), dacg_nonsense=3)


def test_refine_errors():
    m = np.ones((3, 3))
    with pytest.raises(ValueError) as err:
        refine(m, [1], ("akd", "gauss"))
    assert all(name in str(err.value) for name in MODULES)
    with pytest.raises(ValueError, match="other_maps"):
        refine(m, [1], sicd_mode="causal")
    with pytest.raises(ValueError, match="mode"):
        refine(m, [1], sicd_mode="nope")
    with pytest.raises(ValueError):
        refine(m, [1], other_maps=np.ones((1, 3, 3)))


def test_refine_all_zero_and_constant_maps():
    z = np.zeros((5, 6))
    for mods in [MODULES, ("akd",), ("dacg", "cba"), ()]:
        out = refine(z, [1, 1, 2], mods)
        assert np.array_equal(out, z)
    out = refine(np.full((4, 4), 7.0), [1, 1], MODULES)
    assert np.all((out >= 0) & (out <= 1))


def test_refine_stack_reference_equals_per_map_refine():
    rng = np.random.default_rng(12)
    maps = np.stack([random_map(rng, (8, 9)) for _ in range(4)])
    ids = [5, 6, 5, 7]
    out = refine_stack(maps, ids)
    for i in range(4):
        np.testing.assert_array_equal(out[i], refine(maps[i], ids))


def test_refine_stack_causal_uses_pre_sicd_maps_of_other_tokens():
    rng = np.random.default_rng(13)
    maps = np.stack([random_map(rng, (8, 8)) for _ in range(4)])
    ids = np.array([5, 6, 5, 7])
    relevance = rng.random((4, 4))
    out = refine_stack(maps, ids, sicd_mode="causal", relevance=relevance)
    pre = refine_stack(maps, ids, modules=("akd", "dacg", "cba"))
    for i in range(4):
        keep = np.arange(4) != i
        expected = sicd(
            pre[i], ids[keep], "causal", other_maps=pre[keep], weights=relevance[i, keep], self_id=ids[i]
        )
        np.testing.assert_allclose(out[i], expected, atol=1e-15)
        np.testing.assert_allclose(
            out[i],
            refine(maps[i], ids[keep], sicd_mode="causal", other_maps=pre[keep],
                   sicd_weights=relevance[i, keep], sicd_self_id=ids[i]),
            atol=1e-15,
        )
    # A single token has no interference.
    np.testing.assert_array_equal(
        refine_stack(maps[:1], ids[:1], sicd_mode="causal"), refine_stack(maps[:1], ids[:1], ("akd", "dacg", "cba"))
    )


def test_refine_stack_errors():
    maps = np.ones((2, 3, 3))
    with pytest.raises(ValueError):
        refine_stack(maps, [1])
    with pytest.raises(ValueError):
        refine_stack(np.ones((3, 3)), [1])
    with pytest.raises(ValueError):
        refine_stack(maps, [1, 2], sicd_mode="causal", relevance=np.ones((3, 3)))
    with pytest.raises(TypeError):
        refine_stack(maps, [1, 2], sicd_mode="causal", sicd_self_id=1)


def test_public_api():
    for name in ("akd", "dacg", "cba", "sicd", "refine", "refine_stack", "adaptive_kernel_size", "dacg_threshold", "MODULES"):
        assert hasattr(R, name) and name in R.__all__
    assert R.MODULES == ("akd", "dacg", "cba", "sicd")


# --------------------------------------------------------------------------- properties


@st.composite
def maps(draw, max_side=64):
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    kind = draw(st.sampled_from(["random", "sparse", "constant", "zero", "single_hot", "binary"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "random":
        return rng.random((h, w))
    if kind == "sparse":
        return random_map(rng, (h, w), zero_fraction=0.9)
    if kind == "constant":
        return np.full((h, w), draw(st.sampled_from([1e-300, 1e-6, 0.3, 1.0])))
    if kind == "zero":
        return np.zeros((h, w))
    if kind == "binary":
        return (rng.random((h, w)) < 0.5).astype(np.float64)
    m = np.zeros((h, w))
    m[rng.integers(h), rng.integers(w)] = draw(st.sampled_from([1e-9, 0.5, 1.0]))
    return m


def _check_map(out, shape):
    assert out.shape == shape
    assert np.all(np.isfinite(out))
    assert out.min() >= 0.0 and out.max() <= 1.0


PROPERTY_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
token_lists = st.lists(st.integers(0, 6), max_size=12)


@PROPERTY_SETTINGS
@given(m=maps(), k=st.sampled_from([1, 3, 5, 7]), ids=token_lists)
def test_every_module_keeps_maps_finite_in_range_and_is_deterministic(m, k, ids):
    before = m.copy()
    for fn in (lambda x: akd(x, k), dacg, cba, lambda x: sicd(x, ids)):
        out = fn(m)
        _check_map(out, m.shape)
        assert np.array_equal(out, fn(m))
    assert np.array_equal(m, before)


@PROPERTY_SETTINGS
@given(m=maps(max_side=24), others=st.integers(0, 3), seed=st.integers(0, 1000))
def test_causal_sicd_properties(m, others, seed):
    rng = np.random.default_rng(seed)
    other_maps = rng.random((others,) + m.shape)
    out = sicd(m, None, "causal", other_maps=other_maps, weights=rng.random(others))
    _check_map(out, m.shape)
    assert np.all(out <= m)


@PROPERTY_SETTINGS
@given(
    m=maps(),
    modules=st.sets(st.sampled_from(MODULES)),
    ids=token_lists,
    raw_max=st.one_of(st.none(), st.floats(0.0, 2.0)),
)
def test_chain_properties(m, modules, ids, raw_max):
    out = refine(m, ids, tuple(modules), raw_max=raw_max)
    _check_map(out, m.shape)
    assert np.array_equal(out, refine(m, ids, tuple(modules), raw_max=raw_max))
    if not m.any():
        assert not out.any()


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 4), m=maps(max_side=16), seed=st.integers(0, 1000), mode=st.sampled_from(["reference", "causal"]))
def test_stack_properties(n, m, seed, mode):
    rng = np.random.default_rng(seed)
    stack = np.stack([m] + [rng.random(m.shape) for _ in range(n - 1)])
    out = refine_stack(stack, rng.integers(0, 3, n), sicd_mode=mode)
    assert out.shape == stack.shape
    assert np.all(np.isfinite(out)) and out.min() >= 0 and out.max() <= 1
