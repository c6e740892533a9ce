"""Property tests of the pipeline pieces around the refinement modules.

``test_refine.py`` and ``test_metrics.py`` cover each module, the chain on
one map and the metrics; here: the whole stack as the method template runs
it (module subsets, adaptive AKD, both SICD modes, token order), placement of
grid maps into image coordinates, and saving/loading explanations.
"""

from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import diffusion_cam as dc
from diffusion_cam.adapters.base import ImageGrid
from diffusion_cam.extract import place_maps
from diffusion_cam.refine import MODULES, refine_stack

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def map_stacks(draw, max_n=5, max_side=20):
    """(N, h, w) raw maps in [0, 1] with some degenerate rows, and N token ids (repeats likely)."""
    n = draw(st.integers(1, max_n))
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows = []
    for _ in range(n):
        kind = draw(st.sampled_from(["random", "zero", "constant", "single_hot", "sparse"]))
        if kind == "random":
            m = rng.random((h, w))
        elif kind == "zero":
            m = np.zeros((h, w))
        elif kind == "constant":
            m = np.full((h, w), draw(st.sampled_from([1e-6, 0.5, 1.0])))
        elif kind == "single_hot":
            m = np.zeros((h, w))
            m[rng.integers(h), rng.integers(w)] = 1.0
        else:
            m = rng.random((h, w)) * (rng.random((h, w)) < 0.1)
        rows.append(m)
    ids = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    return np.stack(rows), np.asarray(ids)


chains = st.fixed_dictionaries({
    "modules": st.sets(st.sampled_from(MODULES)).map(lambda s: tuple(m for m in MODULES if m in s)),
    "sicd_mode": st.sampled_from(["reference", "causal"]),
    "akd_kernel": st.sampled_from([1, 3, 5, "adaptive"]),
})


def _run(stack, ids, chain):
    extra = {}
    if chain["akd_kernel"] == "adaptive":  # what the method template passes
        extra = {"akd_steps": 12, "akd_image_size": 96}
    return refine_stack(stack, ids, chain["modules"], chain["sicd_mode"], akd_kernel=chain["akd_kernel"], **extra)


@SETTINGS
@given(data=map_stacks(), chain=chains, perm_seed=st.integers(0, 1000))
def test_refine_stack_full_chain(data, chain, perm_seed):
    stack, ids = data
    before = stack.copy()
    out = _run(stack, ids, chain)
    assert out.shape == stack.shape
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert np.array_equal(stack, before)  # input untouched
    assert np.array_equal(out, _run(stack, ids, chain))  # bit-for-bit deterministic
    assert not out[~stack.reshape(len(stack), -1).any(1)].any()  # an all-zero map stays all-zero
    # tokens are refined as a set: reordering them (maps and ids together) reorders the result
    perm = np.random.default_rng(perm_seed).permutation(len(stack))
    assert np.allclose(_run(stack[perm], ids[perm], chain), out[perm], rtol=0, atol=1e-12)


@st.composite
def placements(draw):
    height, width = draw(st.integers(2, 40)), draw(st.integers(2, 40))
    k = draw(st.integers(1, 3))
    grids, maps = [], []
    for g in range(draw(st.integers(1, 3))):
        h, w = draw(st.integers(1, 8)), draw(st.integers(1, 8))
        x0 = draw(st.floats(-10, width, allow_nan=False))
        y0 = draw(st.floats(-10, height, allow_nan=False))
        x1 = x0 + draw(st.floats(0, width + 10, allow_nan=False))
        y1 = y0 + draw(st.floats(0, height + 10, allow_nan=False))
        index = draw(st.sampled_from([0, 0, 1]))  # some grids belong to another image
        grids.append(ImageGrid(tuple(range(h * w)), (h, w), (x0, y0, x1, y1), image_index=index, name=f"g{g}"))
        maps.append(np.asarray(draw(st.lists(st.floats(0, 1), min_size=k * h * w, max_size=k * h * w)),
                               dtype=np.float32).reshape(k, h, w))
    return (height, width), grids, maps


def _covered(grids, size):
    height, width = size
    mask = np.zeros(size, bool)
    for g in grids:
        if g.image_index != 0:
            continue
        # clamp both ends into the image: a negative end would count from the far side
        x0, x1 = (min(max(int(round(v)), 0), width) for v in g.region[0::2])
        y0, y1 = (min(max(int(round(v)), 0), height) for v in g.region[1::2])
        mask[y0:y1, x0:x1] = True
    return mask


@SETTINGS
@given(case=placements())
def test_place_maps(case):
    size, grids, maps = case
    out = place_maps(maps, grids, size)
    k = maps[0].shape[0]
    assert out.shape == (k, *size) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    covered = _covered(grids, size)
    assert not out[:, ~covered].any()  # nothing outside the regions the grids cover
    mine = [m for m, g in zip(maps, grids) if g.image_index == 0]
    if covered.any() and mine:
        lo = min(float(m.min()) for m in mine)
        hi = max(float(m.max()) for m in mine)
        # bilinear resizing and averaging of views are convex: no value outside the inputs' range
        assert out[:, covered].min() >= lo - 1e-6 and out[:, covered].max() <= hi + 1e-6
    assert np.array_equal(out, place_maps(maps, grids, size))


@SETTINGS
@given(size=st.tuples(st.integers(2, 40), st.integers(2, 40)), grid=st.tuples(st.integers(1, 8), st.integers(1, 8)),
       value=st.floats(0, 1, width=32))
def test_place_constant_full_view_is_constant(size, grid, value):
    h, w = grid
    g = ImageGrid(tuple(range(h * w)), grid, (0.0, 0.0, float(size[1]), float(size[0])))
    out = place_maps([np.full((1, h, w), value, np.float32)], [g], size)
    assert np.allclose(out, value, atol=1e-6)


# any JSON-able text, including path-like, control and non-Latin characters
texts = st.text(max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=5,
)


@st.composite
def explanations(draw):
    n = draw(st.integers(1, 4))
    height, width = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    gh, gw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    tokens = draw(st.lists(texts, min_size=n, max_size=n))
    answer_tokens = tokens + draw(st.lists(texts, max_size=3))
    return dc.Explanation(
        answer=" ".join(answer_tokens),
        tokens=tokens,
        token_ids=draw(st.lists(st.integers(0, 2**31 - 1), min_size=n, max_size=n)),
        token_indices=list(range(n)),
        steps=draw(st.lists(st.integers(0, 100), min_size=n, max_size=n)),
        maps=rng.random((n, height, width)).astype(np.float32),
        raw_maps=rng.random((n, height, width)).astype(np.float32),
        grid_maps=rng.random((n, gh, gw)).astype(np.float32),
        raw_grid_maps=rng.random((n, gh, gw)).astype(np.float32),
        image=rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
        prompt=draw(texts),
        model=draw(texts),
        method=draw(texts),
        settings=draw(st.dictionaries(texts, json_values, max_size=4)),
        scores=draw(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=n, max_size=n)),
        degenerate=draw(st.lists(st.booleans(), min_size=n, max_size=n)),
        trajectory=[{"step": i, "committed": [i], "ids": [i]} for i in range(n)],
        answer_tokens=answer_tokens,
        metrics=draw(st.dictionaries(texts, st.floats(allow_nan=False, allow_infinity=False), max_size=3)),
    )


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(exp=explanations())
def test_explanation_save_load_round_trip(exp, tmp_path_factory):
    d = tmp_path_factory.mktemp("exp")
    exp.save(d / "a")
    back = dc.Explanation.load(d / "a")
    for name in ("maps", "raw_maps", "grid_maps", "raw_grid_maps", "image"):
        a, b = getattr(exp, name), getattr(back, name)
        assert a.dtype == b.dtype and np.array_equal(a, b)
    for name in ("answer", "tokens", "token_ids", "token_indices", "steps", "prompt", "model", "method",
                 "scores", "degenerate", "trajectory", "answer_tokens"):
        assert getattr(back, name) == getattr(exp, name), name
    assert back.settings == json.loads(json.dumps(exp.settings))  # JSON keeps what JSON can hold
    assert back.metrics == exp.metrics
    back.save(d / "b")
    for f in ("result.json", "maps.npz"):
        assert (d / "a" / f).read_bytes() == (d / "b" / f).read_bytes()
