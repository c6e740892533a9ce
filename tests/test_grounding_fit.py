"""Choosing the grounding score's features by scene-grouped cross-validation, on synthetic data."""

import numpy as np
import pytest

from diffusion_cam.evaluation import grounding_fit as gf


def _data(seed: int = 0, scenes: int = 30, words: int = 8):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(scenes), words)
    y = rng.integers(0, 2, groups.size)
    columns = {"signal": y + rng.normal(0.0, 0.7, y.size)}
    for name in ("noise_a", "noise_b", "noise_c"):
        columns[name] = rng.normal(0.0, 1.0, y.size)
    return columns, y, groups


def test_selection_keeps_the_informative_feature():
    columns, y, groups = _data()
    candidates = {"noise": ("noise_a", "noise_b", "noise_c"), "a": ("noise_a",), "signal": ("signal",),
                  "signal + noise": ("signal", "noise_a", "noise_b"), "missing": ("absent",)}
    best, cv = gf.select(columns, y, groups, candidates)
    assert "signal" in candidates[best]
    assert "missing" not in cv  # a candidate naming an unknown feature is skipped
    assert cv["signal"] > 0.75 and abs(cv["noise"] - 0.5) < 0.12
    assert gf.select(columns, y, groups, candidates) == (best, cv)  # deterministic


def test_ties_go_to_fewer_features(monkeypatch):
    columns, y, groups = _data(1)
    monkeypatch.setattr(gf, "cv_auroc", lambda *args, **kw: 0.7)  # every candidate ties
    candidates = {"three": ("signal", "noise_a", "noise_b"), "one": ("noise_a",), "also one": ("signal",)}
    assert gf.select(columns, y, groups, candidates)[0] == "one"


def test_folds_split_scenes_not_words():
    groups = np.repeat([7, 3, 9, 1, 5, 2], 4)
    fold = gf.folds(groups, 3)
    for g in np.unique(groups):
        assert len(set(fold[groups == g])) == 1
    assert sorted(np.bincount(fold)) == [8, 8, 8]
    with pytest.raises(ValueError, match="at least 5 groups"):
        gf.folds(np.array([0, 1, 1]), 5)


def test_auroc_and_logistic():
    assert gf.auroc(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 0, 1, 1])) == 1.0
    assert gf.auroc(np.array([1.0, 1.0]), np.array([0, 1])) == 0.5
    columns, y, _ = _data(2)
    x = np.column_stack([columns["signal"]])
    w, mu, sd = gf.fit_logistic(x, y)
    assert w[1] > 0 and gf.auroc(gf.predict(x, w, mu, sd), y) == pytest.approx(gf.auroc(x[:, 0], y))
