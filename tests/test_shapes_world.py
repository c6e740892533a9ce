"""The shapes-world generator obeys every rule of shared/spec/shapes_world.md."""

from __future__ import annotations

import numpy as np
import pytest

from diffusion_cam.datasets import shapes as sw

N_SCENES = 2000


@pytest.fixture(scope="module")
def scenes() -> list[sw.Scene]:
    return sw.generate_scenes(12345, N_SCENES)


def _nominal(colour: str) -> np.ndarray:
    return np.array(sw.COLOUR_RGB[colour], dtype=float)


def test_reproducible_from_seed():
    a, b = sw.generate_scene(99), sw.generate_scene(99)
    assert np.array_equal(a.image, b.image)
    assert [o.to_dict() for o in a.objects] == [o.to_dict() for o in b.objects]
    assert a.seed == 99
    assert not np.array_equal(a.image, sw.generate_scene(100).image)
    s1 = sw.generate_scenes(5, 3)
    s2 = sw.generate_scenes(5, 3)
    assert all(np.array_equal(x.image, y.image) for x, y in zip(s1, s2))


def test_canvas_and_object_counts(scenes):
    counts = np.zeros(4, dtype=int)
    for s in scenes:
        assert s.image.shape == (96, 96, 3) and s.image.dtype == np.uint8
        assert 1 <= s.n_objects <= 3
        counts[s.n_objects] += 1
    assert min(counts[1:]) > N_SCENES / 5  # all three counts occur often


def test_unique_colours_and_shapes(scenes):
    for s in scenes:
        cols = [o.colour for o in s.objects]
        shps = [o.shape for o in s.objects]
        assert len(set(cols)) == len(cols) and len(set(shps)) == len(shps)
        assert set(cols) <= set(sw.COLOURS) and set(shps) <= set(sw.SHAPES)


def test_geometry(scenes):
    for s in scenes:
        for o in s.objects:
            x0, y0, x1, y1 = o.bbox
            assert x1 - x0 == y1 - y0 and 18 <= x1 - x0 <= 34
            assert 0 <= x0 and 0 <= y0 and x1 <= 96 and y1 <= 96
            assert o.mask.shape == (96, 96) and o.mask.dtype == bool
            ys, xs = np.nonzero(o.mask)
            assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1
        for i, a in enumerate(s.objects):
            for b in s.objects[i + 1 :]:
                ax0, ay0, ax1, ay1 = a.bbox
                bx0, by0, bx1, by1 = b.bbox
                gap_x = max(bx0 - ax1, ax0 - bx1)
                gap_y = max(by0 - ay1, ay0 - by1)
                assert max(gap_x, gap_y) >= 3, "bounding boxes closer than 3 px"
                assert abs(a.centre_x - b.centre_x) >= 6
                assert not (a.mask & b.mask).any()


def test_objects_sorted_left_to_right(scenes):
    for s in scenes:
        cx = [o.centre_x for o in s.objects]
        assert cx == sorted(cx)


def test_object_pixels_and_colours(scenes):
    for s in scenes:
        for o in s.objects:
            nominal = _nominal(o.colour)
            assert np.all(np.abs(np.array(o.rgb) - nominal) <= 20)
            # Objects are drawn flat in their jittered colour, on top of everything.
            assert np.all(s.image[o.mask] == np.array(o.rgb, dtype=np.uint8))


def test_background_far_from_object_colours(scenes):
    nominal = np.array(list(sw.COLOUR_RGB.values()), dtype=float)
    for s in scenes[:300]:
        fg = np.zeros((96, 96), dtype=bool)
        for o in s.objects:
            fg |= o.mask
        bg = s.image[~fg].astype(float)
        # Median over the background is robust to noise and clutter; its
        # nominal colour lies in 70..160 and clutter within +-25 of it.
        med = np.median(bg, axis=0)
        assert np.all(med >= 70 - 8) and np.all(med <= 160 + 8)
        assert np.linalg.norm(nominal - med, axis=1).min() >= 80 - 15


def test_background_and_clutter_colour_rule():
    rng = np.random.default_rng(3)
    nominal = np.array(list(sw.COLOUR_RGB.values()), dtype=float)
    for _ in range(300):
        img, bg = sw._background(rng)
        assert np.all((bg >= 70) & (bg <= 160))
        assert np.linalg.norm(nominal - bg, axis=1).min() >= 80


def test_shape_rasterisation():
    box = (10, 20, 40, 50)  # side 30
    sq = sw._shape_mask("square", box)
    assert sq.sum() == 900
    circ = sw._shape_mask("circle", box)
    assert abs(circ.sum() - np.pi * 15**2) < 40
    assert circ[35, 25] and not circ[20, 10]
    tri = sw._shape_mask("triangle", box)
    assert abs(tri.sum() - 450) < 30
    assert tri[49, 10] and tri[49, 39] and tri[21, 25] and not tri[21, 12]
    cross = sw._shape_mask("cross", box)
    assert abs(cross.sum() - (2 * 30 * 10 - 100)) < 30
    assert cross[35, 25] and cross[21, 25] and cross[35, 11] and not cross[21, 11]


def test_prompts_and_answers(scenes):
    for s in scenes:
        prompts = sw.prompts_for(s)
        assert len(prompts) == 2 + 2 * s.n_objects
        for p in prompts:
            assert p == " ".join(p.split()) and p == p.lower()
        caption = sw.answer(s, "describe the image")
        parts = caption.split(" and ")
        assert parts == [f"a {o.colour} {o.shape}" for o in s.objects]
        assert sw.answer(s, "how many objects") == ["one", "two", "three"][s.n_objects - 1]
        for o in s.objects:
            assert sw.answer(s, f"what color is the {o.shape}") == o.colour
            assert sw.answer(s, f"what shape is {o.colour}") == o.shape
        assert len(caption.split()) <= 11


def test_caption_order_matches_pixels(scenes):
    for s in scenes[:500]:
        words = sw.answer(s, "describe the image").split()
        colours = [w for w in words if w in sw.COLOURS]
        centres = [np.nonzero(s.object_by_colour(c).mask)[1].mean() for c in colours]
        assert centres == sorted(centres)


def test_invalid_prompts():
    s = sw.generate_scene(1, n_objects=1)
    missing_shape = next(x for x in sw.SHAPES if x != s.objects[0].shape)
    with pytest.raises(ValueError):
        sw.answer(s, f"what color is the {missing_shape}")
    with pytest.raises(ValueError):
        sw.prompt_type("what is this")


def test_referent_masks(scenes):
    for s in scenes[:300]:
        cap = sw.answer(s, "describe the image").split()
        masks = sw.referent_masks(s, "describe the image", cap)
        assert len(masks) == len(cap)
        for w, m in zip(cap, masks):
            if w in ("a", "and"):
                assert m is None
            else:
                obj = s.object_by_colour(w) or s.object_by_shape(w)
                assert np.array_equal(m, obj.mask)
        union = sw.referent_masks(s, "how many objects", [sw.answer(s, "how many objects")])[0]
        assert np.array_equal(union, sw.label_image(s) > 0)
        o = s.objects[0]
        assert np.array_equal(sw.referent_masks(s, f"what color is the {o.shape}", [o.colour])[0], o.mask)
        assert np.array_equal(sw.referent_masks(s, f"what shape is {o.colour}", [o.shape])[0], o.mask)
        # A wrong answer to a question still points at the object asked about.
        wrong = next(c for c in sw.COLOURS if s.object_by_colour(c) is None)
        assert np.array_equal(sw.referent_masks(s, f"what color is the {o.shape}", [wrong])[0], o.mask)


def test_label_image(scenes):
    for s in scenes[:200]:
        lab = sw.label_image(s)
        assert lab.dtype == np.uint8 and lab.shape == (96, 96)
        assert set(np.unique(lab)) == set(range(s.n_objects + 1))
        for k, o in enumerate(s.objects, start=1):
            assert np.array_equal(lab == k, o.mask)


def test_generation_speed():
    import time

    # CPU time, not wall time: the suite may share its cores with other work.
    t = time.process_time()
    sw.generate_scenes(0, 200)
    assert 200 / max(time.process_time() - t, 1e-9) > 150  # scenes per CPU-second
