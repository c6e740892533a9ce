"""How well do the grounding features tell grounded words from hallucinated ones?  Measured on the Shapes world.

A labelled set where the truth is known by construction:

* hallucinated: "what color is the <shape not in the scene>", "what shape is
  <colour not in the scene>" (the generated answer word), and answers forced
  wrong with ``answer=`` (a wrong colour, a wrong shape, a count off by one);
* grounded: the same questions about present objects when the generated answer
  is right, and the true answers forced with ``answer=``.

Words fall into the cases of :data:`diffusion_cam.grounding.CASES`: a generated
answer (it has a commit probability) or a given one, each with or without the
one-word deletion probe (``--probe``).  Per case, the feature subset is chosen
among :data:`diffusion_cam.evaluation.grounding_fit.CANDIDATES` by 5-fold
cross-validated AUROC over the selection scenes (seeds from 70,000,000; folds
split scenes), refitted on all selection scenes and reported on other scenes
(seeds from 71,000,000), with bootstrap 95 % intervals (resampling scenes).
``--fit`` prints the table to freeze in the module.

    python benchmarks/grounding_validation.py --model shapes-tiny --scenes 40 --probe --fit
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np
import diffusion_cam as dc
from diffusion_cam import grounding as gr
from diffusion_cam.datasets import shapes
from diffusion_cam.evaluation import grounding_fit as gf
from diffusion_cam.evaluation.grounding_fit import auroc

SELECTION_SEED = 70_000_000
REPORT_SEED = 71_000_000
RESAMPLES = 1000
FOLDS = 5


def _items(scene: shapes.Scene, rng: np.random.Generator):
    """(prompt, forced answer or None, label 1 = grounded / 0 = hallucinated / None = by correctness, truth)."""
    present_shapes = [o.shape for o in scene.objects]
    present_colours = [o.colour for o in scene.objects]
    absent_shapes = [s for s in shapes.SHAPES if s not in present_shapes]
    absent_colours = [c for c in shapes.COLOURS if c not in present_colours]
    obj = scene.objects[int(rng.integers(len(scene.objects)))]
    out = []
    if absent_shapes:
        out.append((shapes.colour_question(str(rng.choice(absent_shapes))), None, 0, None))
    out.append((shapes.colour_question(obj.shape), None, None, obj.colour))
    if absent_colours:
        out.append((shapes.shape_question(str(rng.choice(absent_colours))), None, 0, None))
    out.append((shapes.shape_question(obj.colour), None, None, obj.shape))
    # forced answers: the truth and a wrong one of the same kind
    wrong_colour = str(rng.choice([c for c in shapes.COLOURS if c != obj.colour]))
    wrong_shape = str(rng.choice([s for s in shapes.SHAPES if s != obj.shape]))
    n = scene.n_objects
    off = n + 1 if n == 1 else (n - 1 if n == 3 else n + int(rng.choice([-1, 1])))
    out += [(shapes.colour_question(obj.shape), obj.colour, 1, None),
            (shapes.colour_question(obj.shape), wrong_colour, 0, None),
            (shapes.shape_question(obj.colour), obj.shape, 1, None),
            (shapes.shape_question(obj.colour), wrong_shape, 0, None),
            (shapes.PROMPT_COUNT, shapes.COUNT_WORDS[n - 1], 1, None),
            (shapes.PROMPT_COUNT, shapes.COUNT_WORDS[off - 1], 0, None)]
    return out


def collect(adapter, seed: int, count: int, probe: bool) -> list[dict]:
    """One row per labelled word: scene index, label, kind and the grounding features."""
    generated = dc.DiffusionCAM(adapter)
    forced = dc.DiffusionCAM(adapter, state="final")
    rows = []
    for k, scene in enumerate(shapes.generate_scenes(seed, count)):
        rng = np.random.default_rng([seed, k])
        for prompt, given, label, truth in _items(scene, rng):
            method = generated if given is None else forced
            try:
                exp = method.explain(scene.image, prompt, answer=given, grounding_probe=probe)
            except dc.errors.TargetError:
                continue  # an empty answer (the model stopped at once) has no word to judge
            feat = exp.grounding[0]
            if label is None:  # a present-object question: grounded only when answered right
                label = int(exp.tokens[0].strip() == truth)
            kind = ("forced" if given is not None else
                    "absent" if label == 0 and truth is None else "present")
            rows.append({"scene": k, "label": label, "kind": kind, "prompt": prompt, "word": exp.tokens[0], **feat})
    return rows


def interval(scores: np.ndarray, labels: np.ndarray, scenes: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """AUROC with a bootstrap 95 % interval over scenes (a scene's words move together)."""
    rng = np.random.default_rng(seed)
    ids = np.unique(scenes)
    members = [np.flatnonzero(scenes == s) for s in ids]
    samples = []
    for _ in range(RESAMPLES):
        pick = np.concatenate([members[i] for i in rng.integers(len(ids), size=len(ids))])
        samples.append(auroc(scores[pick], labels[pick]))
    lo, hi = np.nanpercentile(samples, [2.5, 97.5])
    return auroc(scores, labels), float(lo), float(hi)


def cell(scores, labels, scenes) -> str:
    if len(labels) == 0:
        return "–"
    a, lo, hi = interval(np.asarray(scores, dtype=np.float64), np.asarray(labels), np.asarray(scenes))
    return f"{a:.3f} [{lo:.3f}, {hi:.3f}]"


def column(rows: list[dict], name: str) -> np.ndarray:
    return np.array([gr.value(r, name) for r in rows], dtype=np.float64)


def available(rows: list[dict]) -> tuple[str, ...]:
    """The features every row of a case has."""
    return tuple(n for n in gr.FEATURES if rows and all(r.get(n.replace("log_contrast", "contrast")) is not None
                                                         for r in rows))


def choose(rows: list[dict]) -> tuple[str, dict[str, float], tuple]:
    """(chosen candidate, every candidate's CV AUROC, (features, coefficients, scale)) of one case's selection rows."""
    have = available(rows)
    candidates = {**gf.CANDIDATES, "everything": have}
    unique: dict[str, tuple[str, ...]] = {}
    for name, names in candidates.items():  # "everything" may equal a named subset: keep the first name
        if all(n in have for n in names) and set(names) not in [set(v) for v in unique.values()]:
            unique[name] = tuple(names)
    y = np.array([r["label"] for r in rows])
    best, cv = gf.select({n: column(rows, n) for n in have}, y, np.array([r["scene"] for r in rows]), unique, FOLDS)
    names = unique[best]
    w, mu, sd = gf.fit_logistic(gf.matrix({n: column(rows, n) for n in names}, names, len(rows)), y)
    const = (names, tuple(round(float(v), 4) for v in w),
             tuple((round(float(m), 4), round(float(d), 4)) for m, d in zip(mu, sd)))
    return best, {n: cv[n] for n in unique}, const


def fixed(rows: list[dict], names: tuple[str, ...]) -> tuple:
    """A logistic fit of the given features on the selection rows, as a CASES entry (for comparison rows)."""
    w, mu, sd = gf.fit_logistic(np.column_stack([column(rows, n) for n in names]), np.array([r["label"] for r in rows]))
    return names, tuple(w), tuple(zip(mu, sd))


def strip_probe(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in gr.PROBE_FEATURES}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="shapes-tiny")
    p.add_argument("--scenes", type=int, default=40, help="scenes on each side (selection, report)")
    p.add_argument("--probe", action="store_true", help="also run the one-word deletion probe (4 forwards per word)")
    p.add_argument("--fit", action="store_true", help="print the chosen constants for diffusion_cam/grounding.py")
    args = p.parse_args(argv)
    adapter = dc.load_model(args.model)
    # an absent-object question often draws the out-of-world warning: it is the case measured here
    warnings.simplefilter("ignore", dc.errors.OutOfWorldWarning)
    start = time.time()
    sel = collect(adapter, SELECTION_SEED, args.scenes, args.probe)
    rep = collect(adapter, REPORT_SEED, args.scenes, args.probe)
    # every word once without the probe's features; with --probe, once more with them
    variants = {"without probe": ([strip_probe(r) for r in sel], [strip_probe(r) for r in rep])}
    if args.probe:
        variants["with probe"] = (sel, rep)
    table, chosen = {}, {}
    for sel_v, _ in variants.values():
        for name in sorted({gr.case(r) for r in sel_v}):
            rows = [r for r in sel_v if gr.case(r) == name]
            best, cv, const = choose(rows)
            table[name], chosen[name] = const, (best, cv)
    if args.fit:
        print("CASES = {")
        for name, (names, w, scale) in table.items():
            print(f"    {name!r}: ({names!r},\n        {w!r},\n        {scale!r}),")
        print("}")
        print()
    yr, scenes = np.array([r["label"] for r in rep]), np.array([r["scene"] for r in rep])
    gen = np.array([r["probability"] is not None for r in rep])
    kinds = {k: sum(1 for r in rep if r["kind"] == k) for k in ("absent", "present", "forced")}
    print(f"model {args.model}; selection scenes from seed {SELECTION_SEED}, reported scenes from seed {REPORT_SEED}, "
          f"{args.scenes} each; reported words: {len(rep)} ({int(yr.sum())} grounded, {int((1 - yr).sum())} "
          f"hallucinated; {kinds['absent']} absent-object, {kinds['present']} present-object, {kinds['forced']} forced)")
    print()
    print("Each feature alone, held-out scenes (higher = grounded):")
    print()
    print("| feature | all words | generated answers | given answers |")
    print("|---|---|---|---|")
    raw_map = ("raw_concentration", "raw_log_contrast", "raw_mass")
    features = [("concentration (refined map)", "concentration"), ("concentration (raw map)", "raw_concentration"),
                ("peak-to-mean contrast (refined map)", "contrast"), ("peak-to-mean contrast (raw map)", "raw_contrast"),
                ("raw evidence mass", "raw_mass"), ("commit probability", "probability")]
    if args.probe:
        features += [("masked probability (probe)", "masked_probability"), ("deletion drop (probe)", "deletion_drop")]
    everyone = np.ones(len(rep), dtype=bool)
    for label, name in features:
        have = np.array([r.get(name) is not None for r in rep])
        values = np.array([r[name] if r.get(name) is not None else np.nan for r in rep], dtype=np.float64)
        # a feature some words of a column lack (the commit probability of given answers) has no AUROC there
        print(f"| {label} | " + " | ".join(cell(values[m], yr[m], scenes[m]) if m.any() and have[m].all() else "–"
                                          for m in (everyone, gen, ~gen)) + " |")
    # refinement: the map-only combination from refined against raw map features, fitted on all selection words
    for label, names in (("combined, refined-map features", gr.MAP_FEATURES), ("combined, raw-map features", raw_map)):
        fit = {"generated": fixed(sel, names), "given": fixed(sel, names)}
        values = np.array([gr.score(strip_probe(r), fit) for r in rep])
        print(f"| {label} | {cell(values, yr, scenes)} | {cell(values[gen], yr[gen], scenes[gen])} | "
              f"{cell(values[~gen], yr[~gen], scenes[~gen])} |")
    print()
    print("Per case: the subset chosen by cross-validation on the selection scenes, held-out AUROC:")
    print()
    print("| case | words (held out) | chosen subset | CV AUROC (selection) | held-out AUROC | "
          "best other candidate by CV |")
    print("|---|---|---|---|---|---|")
    for variant, (_, rep_v) in variants.items():
        for name in sorted({gr.case(r) for r in rep_v}):
            rows = [r for r in rep_v if gr.case(r) == name]
            best, cv = chosen[name]
            values = np.array([gr.score(r, table) for r in rows])
            other = max((n for n in cv if n != best), key=lambda n: cv[n], default=None)
            print(f"| {name} | {len(rows)} | {best} ({', '.join(table[name][0]) or 'no feature'}) | {cv[best]:.3f} | "
                  f"{cell(values, [r['label'] for r in rows], [r['scene'] for r in rows])} | "
                  + (f"{other} ({cv[other]:.3f})" if other else "–") + " |")
    print()
    print("The score as the module gives it (each word by its case), held-out scenes:")
    print()
    print("| score | all words | generated answers | given answers | hallucinated flagged | grounded flagged |")
    print("|---|---|---|---|---|---|")
    for variant, (_, rep_v) in variants.items():
        values = np.array([gr.score(r, table) for r in rep_v])
        flagged = values < gr.THRESHOLD
        print(f"| {variant} | {cell(values, yr, scenes)} | {cell(values[gen], yr[gen], scenes[gen])} | "
              f"{cell(values[~gen], yr[~gen], scenes[~gen])} | {flagged[yr == 0].mean():.1%} | "
              f"{flagged[yr == 1].mean():.1%} |")
    print()
    print("Cross-validated AUROC of every candidate (selection scenes):")
    for name, (best, cv) in chosen.items():
        print(f"  {name}: " + ", ".join(f"{n} {v:.3f}" for n, v in cv.items()))
    print(f"({time.time() - start:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
