"""Scores of one explanation: word-level localization, Func-IoU, pointing game, deletion / insertion."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .. import metrics
from ..metrics.faithfulness import PerturbationTarget, deletion_insertion
from .datasets import Unit

SCORED_KINDS = ("object", "count")
_KEEP = ("obj_iou", "precision", "recall", "contrast", "contrast_score", "concentration", "f3")


def score_units(adapter, run, exp, units: Sequence[Unit], *, faithfulness: bool = True,
                blur_sigma: float | None = None, replacement: str = "blur", batch_size: int = 64,
                cache: dict | None = None) -> dict[str, Any]:
    """``{"units": [...], "function": [...]}`` for the units of one answer.

    A unit of several tokens is represented by its best token (highest
    Obj-IoU), as TAM does for multi-token words.  Maps are the explanation's
    refined maps at image resolution, resized to the mask if it differs;
    deletion / insertion rank the patches by the refined grid map.  ``cache``
    (one dict per answer) lets several methods share perturbed forwards.
    """
    rows = {int(t): r for r, t in enumerate(exp.token_indices)}
    scored, function = [], []
    noun_maps = []
    for u in units:
        if u.kind not in SCORED_KINDS:
            continue
        best = None
        for t in u.tokens:
            m = exp.maps[rows[t]]
            s = metrics.score(m, u.mask, mode="mask")
            if best is None or s["obj_iou"] > best[1]["obj_iou"]:
                best = (t, s, m)
        t, s, m = best
        rec = {"word": u.word, "kind": u.kind, "tokens": list(u.tokens), "token": int(t),
               **{k: float(s[k]) for k in _KEEP},
               "pointing": bool(metrics.pointing_game(m, u.mask))}
        scored.append(rec)
        noun_maps.append([exp.maps[rows[x]] for x in u.tokens])
    if noun_maps:
        mask_shape = next(u.mask.shape for u in units if u.kind in SCORED_KINDS)
        threshold = metrics.noun_threshold(noun_maps, mask_shape)
        for u in units:
            if u.kind == "function":
                maps = np.stack([exp.maps[rows[t]] for t in u.tokens])
                function.append({"word": u.word, "tokens": list(u.tokens),
                                 "func_iou": float(metrics.func_iou(maps, threshold=threshold))})
    if faithfulness and scored:
        targets = [PerturbationTarget(run.canvas_position(r["token"]), run.answer_ids[r["token"]],
                                      exp.grid_maps[rows[r["token"]]]) for r in scored]
        for rec, res in zip(scored, deletion_insertion(adapter, run.inputs, run.generation.sequence, targets,
                                                       blur_sigma=blur_sigma, replacement=replacement,
                                                       batch_size=batch_size, cache=cache)):
            rec["deletion_auc"] = res.deletion_auc
            rec["insertion_auc"] = res.insertion_auc
    return {"units": scored, "function": function}
