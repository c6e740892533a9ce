"""Bootstrap 95 % intervals for bench tables, and paired differences between configurations.

The resampling unit is the item (one answer: a scene and its prompt), not the
word: the words of one answer share an image and a generation, so they are
not independent.  Every resample draws items with replacement and recomputes
each statistic over the words of the drawn items (an item drawn twice counts
twice).  Paired differences use the same draws for both configurations, over
the items both scored.  The generator is seeded: the same records and seed
give the same intervals.

Statistics (as in the tables): means over words for Obj-IoU, Concentration,
per-word F3 and deletion / insertion AUC, over object words for the pointing
game; the *median* Contrast (the mean is dominated by maps that are exactly
zero off the referent); F3 of the means.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import OutputError
from ..metrics.localization import contrast_score, f3
from .records import read_records
from .tables import load_config

RESAMPLES = 2000
SEED = 0

#: (key, header, scale, digits); deletion / insertion get the run's fill in their header
LOCALISATION = (
    ("obj_iou", "Obj-IoU (%)", 100, 1),
    ("contrast_median", "Contrast (median ×)", 1, 2),
    ("concentration", "Concen. (%)", 100, 1),
    ("f3_of_means", "F3 (of means)", 100, 1),
    ("f3_mean", "F3 (mean)", 100, 1),
    ("pointing", "Pointing (%)", 100, 1),
)
FAITHFULNESS = (("deletion_auc", "Deletion AUC ↓", 1, 3), ("insertion_auc", "Insertion AUC ↑", 1, 3))
HEADLINE = ("obj_iou", "f3_of_means", "pointing")


@dataclass
class Run:
    """One bench run's scored words: ``words[label][item]`` lists the unit dicts of that answer."""

    path: Path
    fill: str | None  # deletion / insertion fill, None without faithfulness
    main: list[str]
    ablation: list[tuple[str, str]]
    words: dict[str, dict[str, list[dict[str, Any]]]]
    items: int  # scenes x prompts of the run


def load_run(path: Path | str) -> Run:
    path = Path(path)
    config = load_config(path)
    faith = config.get("faithfulness", {})
    fill = faith.get("replacement", "blur") if faith.get("enabled") else None
    words: dict[str, dict[str, list]] = {}
    for r in read_records(path):
        if r["status"] == "ok":
            words.setdefault(r["method"], {})[r["item"]] = r.get("units", [])
    return Run(path, fill, list(config["main"]), [tuple(r) for r in config.get("ablation", [])], words,
               int(config["dataset"]["items"]))


class _Draws:
    """Item-level bootstrap weights: ``weights[b, i]`` = how often item ``i`` is drawn in resample ``b``."""

    def __init__(self, n_items: int, resamples: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, n_items, size=(resamples, n_items))
        self.weights = np.zeros((resamples, n_items))
        np.add.at(self.weights, (np.arange(resamples)[:, None], draws), 1.0)
        self.point = np.ones(n_items)


def _columns(words: list[list[dict[str, Any]]], key: str, objects_only: bool = False):
    """Per-word values and their item index, skipping words without the value."""
    vals, owner = [], []
    for i, units in enumerate(words):
        for u in units:
            if objects_only and u.get("kind") != "object":
                continue
            v = u.get(key)
            if v is None:
                continue
            vals.append(float(v))
            owner.append(i)
    return np.asarray(vals), np.asarray(owner, dtype=int)


def _means(words, key, weights, objects_only=False):
    """Weighted word means, one per row of ``weights`` (rows: resamples; columns: items)."""
    vals, owner = _columns(words, key, objects_only)
    if not len(vals):
        return None
    n = len(words)
    sums = np.bincount(owner, weights=vals, minlength=n)
    counts = np.bincount(owner, minlength=n).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights @ sums) / (weights @ counts)


def _medians(words, key, weights):
    vals, owner = _columns(words, key)
    if not len(vals):
        return None
    order = np.argsort(vals, kind="stable")
    vals, owner = vals[order], owner[order]
    w = weights[:, owner]  # (B, words)
    cum = np.cumsum(w, axis=1)
    half = cum[:, -1:] / 2
    lo = (cum >= half).argmax(axis=1)  # first sorted word reaching half the weight
    hi = (cum > half).argmax(axis=1)
    return (vals[lo] + vals[hi]) / 2


def statistic(words: list[list[dict[str, Any]]], key: str, weights: np.ndarray) -> np.ndarray | None:
    """``key``'s statistic over the words of weighted items (one value per row of ``weights``)."""
    if key == "contrast_median":
        return _medians(words, "contrast", weights)
    if key == "pointing":
        return _means(words, "pointing", weights, objects_only=True)
    if key == "f3_mean":
        return _means(words, "f3", weights)
    if key == "f3_of_means":
        parts = [_means(words, k, weights) for k in ("obj_iou", "contrast", "concentration")]
        if any(p is None for p in parts):
            return None
        return np.array([f3(a, contrast_score(c), b) for a, c, b in zip(*parts)])
    return _means(words, key, weights)


def _interval(point: float, samples: np.ndarray) -> tuple[float, float, float]:
    lo, hi = np.nanpercentile(samples, [2.5, 97.5])
    return float(point), float(lo), float(hi)


def intervals(run: Run, labels: Sequence[str], keys: Sequence[str], resamples: int = RESAMPLES,
              seed: int = SEED) -> dict[str, dict[str, tuple[float, float, float]]]:
    """``{label: {key: (value, low, high)}}``: each statistic with its item-bootstrap 95 % interval."""
    out: dict[str, dict[str, tuple[float, float, float]]] = {}
    for label in labels:
        per_item = run.words.get(label, {})
        words = [per_item[i] for i in sorted(per_item)]
        out[label] = {}
        if not words:
            continue
        draws = _Draws(len(words), resamples, seed)
        for key in keys:
            point = statistic(words, key, draws.point[None])
            if point is None:
                continue
            out[label][key] = _interval(point[0], statistic(words, key, draws.weights))
    return out


def paired(run: Run, base: str, others: Sequence[str], keys: Sequence[str], resamples: int = RESAMPLES,
           seed: int = SEED) -> dict[str, dict[str, tuple[float, float, float]]]:
    """``{label: {key: (difference, low, high)}}`` of ``label`` minus ``base``, over the items both scored."""
    out: dict[str, dict[str, tuple[float, float, float]]] = {}
    for label in others:
        a, b = run.words.get(base, {}), run.words.get(label, {})
        items = sorted(set(a) & set(b))
        out[label] = {}
        if not items:
            continue
        for i in items:
            if [u["word"] for u in a[i]] != [u["word"] for u in b[i]]:
                raise OutputError(f"{run.path}: {base!r} and {label!r} scored different words for {i}")
        draws = _Draws(len(items), resamples, seed)
        wa, wb = [a[i] for i in items], [b[i] for i in items]
        for key in keys:
            pa, pb = statistic(wa, key, draws.point[None]), statistic(wb, key, draws.point[None])
            if pa is None or pb is None:
                continue
            diff = statistic(wb, key, draws.weights) - statistic(wa, key, draws.weights)
            out[label][key] = _interval(pb[0] - pa[0], diff)
    return out


# ------------------------------------------------------------------- tables
def _cell(v, scale, digits, signed=False) -> str:
    value, lo, hi = v
    sign = "+" if signed else ""
    return f"{value * scale:{sign}.{digits}f} [{lo * scale:{sign}.{digits}f}, {hi * scale:{sign}.{digits}f}]"


def _column_sets(runs: Sequence[Run], keys: Sequence[str] | None):
    """(run, key, header, scale, digits) of every column: localisation from the first run, faithfulness from each."""
    cols = [(runs[0], k, h, s, d) for k, h, s, d in LOCALISATION if keys is None or k in keys]
    for run in runs:
        if run.fill is None:
            continue
        cols += [(run, k, f"{h} ({run.fill})", s, d) for k, h, s, d in FAITHFULNESS]
    return cols


def _n_line(runs: Sequence[Run], label: str) -> str:
    parts = []
    for run in runs:
        per_item = run.words.get(label, {})
        n_words = sum(len(u) for u in per_item.values())
        what = f"deletion / insertion, {run.fill} fill" if run.fill else "localisation"
        if run is runs[0] and run.fill:
            what = f"localisation and deletion / insertion, {run.fill} fill"
        parts.append(f"{what}: {len(per_item)} answers, {n_words} words ({run.path.name})")
    text = "; ".join(parts)
    return text[:1].upper() + text[1:]


def main_table(runs: Sequence[Run], labels: Sequence[str] | None = None, keys: Sequence[str] | None = HEADLINE,
               resamples: int = RESAMPLES, seed: int = SEED) -> str:
    """Markdown: every method's headline figures with item-bootstrap 95 % intervals."""
    labels = list(labels or runs[0].main)
    cols = _column_sets(runs, keys)
    by_run = {id(run): intervals(run, labels, [c[1] for c in cols if c[0] is run], resamples, seed) for run in runs}
    lines = ["| Method | " + " | ".join(c[2] for c in cols) + " |", "|---|" + "---:|" * len(cols)]
    for label in labels:
        cells = [_cell(by_run[id(run)][label][k], s, d) if k in by_run[id(run)][label] else "–"
                 for run, k, _, s, d in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"95 % intervals: {resamples} item-bootstrap resamples, seed {seed}. "
                 + _n_line(runs, labels[0]) + ".")
    return "\n".join(lines) + "\n"


def ablation_table(runs: Sequence[Run], resamples: int = RESAMPLES, seed: int = SEED) -> str:
    """Markdown: the raw configuration's figures, then what each module (and all four) adds, paired, with intervals."""
    rows = runs[0].ablation
    if not rows:
        raise OutputError(f"{runs[0].path} has no ablation rows: run bench with --ablation")
    base_row, base = rows[0]
    cols = _column_sets(runs, None)
    lines = ["| Config. | " + " | ".join(c[2] for c in cols) + " |", "|---|" + "---:|" * len(cols)]
    absolute = {id(run): intervals(run, [base], [c[1] for c in cols if c[0] is run], resamples, seed)[base]
                for run in runs}
    lines.append(f"| {base_row} | " + " | ".join(
        _cell(absolute[id(run)][k], s, d) if k in absolute[id(run)] else "–" for run, k, _, s, d in cols) + " |")
    others = [label for _, label in rows[1:]]
    diffs = {id(run): paired(run, base, others, [c[1] for c in cols if c[0] is run], resamples, seed) for run in runs}
    for row, label in rows[1:]:
        cells = [_cell(diffs[id(run)][label][k], s, d, signed=True) if k in diffs[id(run)][label] else "–"
                 for run, k, _, s, d in cols]
        lines.append(f"| {row} (Δ) | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"First row: the configuration without modules; the others: each configuration minus it, paired "
                 f"over the same answers and words. 95 % intervals: {resamples} item-bootstrap resamples, seed "
                 f"{seed}. " + _n_line(runs, base) + ".")
    return "\n".join(lines) + "\n"
