"""Localization metrics: hand-made masks with known answers, edge cases and properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffusion_cam.metrics import (
    aggregate,
    concentration,
    contrast,
    contrast_score,
    f3,
    f3_geometric,
    func_iou,
    func_iou_reference,
    noun_threshold,
    obj_iou,
    otsu_binarize,
    pointing_game,
    precision_recall,
    score,
)

pytestmark = pytest.mark.filterwarnings("error")

SCORE_KEYS = {
    "obj_iou",
    "precision",
    "recall",
    "contrast",
    "contrast_score",
    "concentration",
    "f3",
    "f3_geometric",
    "func_iou_reference",
}


def box_mask(shape, rows, cols):
    m = np.zeros(shape, dtype=np.uint8)
    m[rows, cols] = 1
    return m


# --------------------------------------------------------------------------- primitives


def test_mask_primitives():
    pred = np.zeros((4, 4), bool)
    pred[:2] = True  # 8 pixels
    gt = np.zeros((4, 4), bool)
    gt[1:3] = True  # 8 pixels, 4 shared
    assert obj_iou(pred, gt) == pytest.approx(4 / 12)
    assert precision_recall(pred, gt) == pytest.approx((0.5, 0.5))
    empty = np.zeros((4, 4), bool)
    assert obj_iou(empty, empty) == 0.0
    assert precision_recall(empty, gt) == (0.0, 0.0)
    assert precision_recall(pred, empty) == (0.0, 0.0)


def test_f3_variants():
    assert f3(0.5, 0.5, 0.5) == pytest.approx(0.5)
    assert f3(1.0, 0.5, 0.25) == pytest.approx(3 / (1 + 2 + 4))
    assert f3(0.0, 1.0, 1.0) == 0.0
    assert f3_geometric(1.0, 0.5, 0.25) == pytest.approx(0.125 ** (1 / 3))
    assert f3_geometric(0.3, 0.0, 1.0) == 0.0
    assert contrast_score(10.0) == 0.5
    assert contrast_score(40.0) == 1.0
    assert contrast_score(0.0) == 0.0


def test_contrast_and_concentration_known_values():
    fg = box_mask((4, 4), slice(0, 2), slice(None))
    heat = np.where(fg, 0.8, 0.2).astype(np.float32)
    assert contrast(heat, fg) == pytest.approx(0.8 / (0.2 + 1e-8), rel=1e-6)
    assert concentration(heat, fg) == pytest.approx(0.8 / 1.0, rel=1e-6)
    uniform = np.full((4, 4), 0.6)
    assert contrast(uniform, fg) == pytest.approx(1.0, abs=1e-6)
    assert concentration(uniform, fg) == pytest.approx(0.5, abs=1e-6)
    # Grid maps are resized to the mask first.
    assert contrast(np.full((2, 2), 0.6), fg) == pytest.approx(1.0, abs=1e-6)


def test_contrast_conventions_for_empty_regions():
    heat = np.full((3, 3), 0.5)
    # No foreground: its mean counts as 1.
    assert contrast(heat, np.zeros((3, 3), bool)) == pytest.approx(1 / 0.5, rel=1e-6)
    # No background: its mean counts as 0.
    assert contrast(heat, np.ones((3, 3), bool)) == pytest.approx(0.5 / 1e-8, rel=1e-6)
    assert contrast(np.zeros((3, 3)), np.ones((3, 3), bool)) == 0.0
    assert concentration(np.zeros((3, 3)), np.ones((3, 3), bool)) == 0.0


def test_otsu_binarize_bimodal():
    grid = np.full((8, 8), 0.1)
    grid[2:5, 3:7] = 0.9
    b = otsu_binarize(grid, (8, 8))
    assert b.mask.dtype == bool and b.resized.dtype == np.float32
    np.testing.assert_array_equal(b.mask, grid > 0.5)
    assert int(255 * 0.1) <= b.threshold < int(255 * 0.9)
    b2 = otsu_binarize(grid, (16, 24))
    assert b2.mask.shape == b2.resized.shape == (16, 24)
    # OpenCV puts t at the lower mode (U > t is the foreground), so the
    # reference's "below t/255" share excludes that mode itself.
    assert b.threshold == int(255 * 0.1)
    assert func_iou_reference(grid, (8, 8)) == 0.0
    grid[0, :4] = 0.05
    assert func_iou_reference(grid, (8, 8)) == pytest.approx(4 / 64)


# --------------------------------------------------------------------------- score


def test_map_equal_to_mask_is_perfect():
    mask = box_mask((12, 16), slice(3, 9), slice(4, 12))
    s = score(mask.astype(np.float64), mask)
    assert s["obj_iou"] == 1.0 and s["precision"] == 1.0 and s["recall"] == 1.0
    assert s["concentration"] == pytest.approx(1.0, abs=1e-6)
    assert s["contrast_score"] == 1.0
    assert s["f3"] == pytest.approx(1.0, abs=1e-6)
    assert score(mask.astype(np.float64), mask, mode="mask") == s


def test_uniform_map_has_contrast_one():
    mask = box_mask((10, 10), slice(0, 5), slice(0, 5))
    s = score(np.full((5, 5), 0.7), mask)
    assert s["contrast"] == pytest.approx(1.0, abs=1e-6)
    assert s["concentration"] == pytest.approx(0.25, abs=1e-6)
    assert s["contrast_score"] == pytest.approx(0.05, abs=1e-7)


def test_max_class_picks_best_class_and_reports_pr_there():
    labels = np.zeros((8, 8), dtype=np.uint8)
    labels[:4, :4] = 1
    labels[4:, 4:] = 2
    grid = np.zeros((8, 8))
    grid[4:, 4:6] = 1.0  # half of class 2
    s = score(grid, labels, mode="max_class")
    assert s["obj_iou"] == pytest.approx(8 / 16)
    assert s["precision"] == 1.0 and s["recall"] == pytest.approx(0.5)
    # Word mode against class 1 only: no overlap.
    w = score(grid, labels == 1, mode="mask")
    assert w["obj_iou"] == 0.0 and w["f3"] == 0.0
    # Contrast / Concentration use the union of objects in max_class mode.
    assert s["concentration"] == pytest.approx(1.0, abs=1e-6)


def test_max_class_tie_goes_to_lowest_label():
    labels = np.zeros((4, 4), dtype=np.uint8)
    labels[0, :2] = 3
    labels[3, :2] = 5
    grid = np.zeros((4, 4))
    grid[0, :2] = grid[3, :2] = 1.0
    s = score(grid, labels)
    assert s["obj_iou"] == pytest.approx(0.5)
    assert s["recall"] == 1.0 and s["precision"] == 0.5


@pytest.mark.parametrize("mode", ["max_class", "mask"])
def test_degenerate_inputs_are_finite(mode):
    rng = np.random.default_rng(0)
    empty = np.zeros((10, 12), dtype=np.uint8)
    full = np.ones((10, 12), dtype=np.uint8)
    for grid in (np.zeros((5, 6)), np.full((5, 6), 0.4), rng.random((5, 6))):
        for labels in (empty, full):
            s = score(grid, labels, mode=mode)
            assert set(s) == SCORE_KEYS
            assert all(np.isfinite(v) for v in s.values())
    s = score(np.zeros((5, 6)), full, mode=mode)
    assert s["obj_iou"] == s["precision"] == s["recall"] == s["f3"] == 0.0
    assert s["contrast"] == 0.0 and s["concentration"] == 0.0
    s = score(rng.random((5, 6)), empty, mode=mode)
    assert s["obj_iou"] == 0.0 and s["recall"] == 0.0 and s["concentration"] == 0.0


def test_score_errors():
    with pytest.raises(ValueError, match="mode"):
        score(np.ones((2, 2)), np.ones((2, 2), np.uint8), mode="nope")
    with pytest.raises(ValueError):
        score(np.ones((2, 2)), np.full((2, 2), 0.5))
    with pytest.raises(ValueError):
        score(np.ones(4), np.ones((2, 2), np.uint8))
    with pytest.raises(ValueError):
        score(np.array([[np.nan]]), np.ones((2, 2), np.uint8))


# --------------------------------------------------------------------------- Func-IoU, pointing


def test_func_iou_tam_definition():
    noun = np.full((8, 8), 0.3)
    noun[2:6, 2:6] = 0.9
    assert noun_threshold([noun]) == int(255 * 0.3)  # OpenCV: U > t is the foreground
    assert func_iou(np.full((8, 8), 0.1), [noun]) == 1.0
    assert func_iou(np.full((8, 8), 1.0), [noun]) == 0.0
    half = np.full((8, 8), 0.1)
    half[:4] = 1.0
    assert func_iou(half, [noun]) == pytest.approx(0.5)
    # Averaged over the function word's tokens; nouns may have several tokens.
    assert func_iou([half, np.full((8, 8), 0.1)], [[noun, noun * 0.5]]) == pytest.approx(0.75)
    # The threshold is the mean over noun words of each word's highest threshold.
    low = noun * 0.5
    words = [[low, noun], [low]]
    expected = (max(noun_threshold([low]), noun_threshold([noun])) + noun_threshold([low])) / 2
    assert noun_threshold(words) == pytest.approx(expected)
    assert func_iou(half, threshold=300.0) == 1.0
    with pytest.raises(ValueError):
        func_iou(half, [])


def test_pointing_game():
    mask = box_mask((20, 20), slice(10, 20), slice(10, 20))
    grid = np.zeros((4, 4))
    grid[3, 3] = 1.0
    assert pointing_game(grid, mask)
    grid = np.zeros((4, 4))
    grid[0, 0] = 1.0
    assert not pointing_game(grid, mask)
    assert not pointing_game(np.zeros((4, 4)), mask)
    assert not pointing_game(np.full((4, 4), 0.5), np.ones((20, 20)))
    assert not pointing_game(np.eye(4), np.zeros((20, 20)))


# --------------------------------------------------------------------------- aggregate


def test_aggregate_means_and_both_f3():
    a = {"obj_iou": 0.2, "contrast": 4.0, "contrast_score": 0.2, "concentration": 0.4, "f3": 0.25}
    b = {"obj_iou": 0.4, "contrast": 12.0, "contrast_score": 0.6, "concentration": 0.6, "f3": 0.45}
    agg = aggregate([a, b])
    assert agg["n"] == 2
    assert agg["obj_iou"] == pytest.approx(0.3)
    assert agg["contrast"] == pytest.approx(8.0)
    assert agg["f3_mean_of_items"] == pytest.approx(0.35)
    assert agg["f3_of_means"] == pytest.approx(f3(0.3, 0.4, 0.5))
    with pytest.raises(ValueError):
        aggregate([])


def test_aggregate_of_scores():
    rng = np.random.default_rng(1)
    labels = box_mask((16, 16), slice(2, 10), slice(3, 12))
    items = [score(rng.random((8, 8)), labels) for _ in range(5)]
    agg = aggregate(items)
    for key in SCORE_KEYS:
        assert agg[key] == pytest.approx(np.mean([s[key] for s in items]))


# --------------------------------------------------------------------------- properties


@st.composite
def map_and_labels(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    gh, gw = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    kind = draw(st.sampled_from(["random", "zero", "constant", "single_hot"]))
    grid = {
        "random": lambda: rng.random((gh, gw)),
        "zero": lambda: np.zeros((gh, gw)),
        "constant": lambda: np.full((gh, gw), 0.5),
        "single_hot": lambda: np.eye(gh, gw),
    }[kind]()
    mh, mw = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    label_kind = draw(st.sampled_from(["random", "empty", "full", "classes"]))
    labels = {
        "random": lambda: (rng.random((mh, mw)) < 0.3).astype(np.uint8),
        "empty": lambda: np.zeros((mh, mw), np.uint8),
        "full": lambda: np.ones((mh, mw), np.uint8),
        "classes": lambda: rng.integers(0, 4, (mh, mw)).astype(np.uint8),
    }[label_kind]()
    return grid, labels


@settings(max_examples=60, deadline=None)
@given(pair=map_and_labels(), mode=st.sampled_from(["max_class", "mask"]))
def test_metrics_in_range(pair, mode):
    grid, labels = pair
    s = score(grid, labels, mode=mode)
    assert set(s) == SCORE_KEYS
    assert all(np.isfinite(v) for v in s.values())
    for key in SCORE_KEYS - {"contrast"}:
        assert 0.0 <= s[key] <= 1.0 + 1e-6, key
    assert s["contrast"] >= 0.0
    assert isinstance(pointing_game(grid, labels), bool)
    agg = aggregate([s, s])
    assert all(np.isfinite(v) for v in agg.values())
    assert 0.0 <= agg["f3_of_means"] <= 1.0 + 1e-6
