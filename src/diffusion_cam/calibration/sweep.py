"""Label-free calibration: score configurations by the deletion and insertion of the answer's own words.

Each image and prompt is generated once; every configuration explains that
same answer.  Raw maps of all formulas and blocks at one score come from one
set of backward passes (the blocks are hooked together); the refinement
variants reuse them.  A configuration's score is the insertion AUC minus the
deletion AUC of its maps (:mod:`diffusion_cam.metrics.faithfulness`), averaged
over tokens and then over answers: a map that ranks the patches the word
depends on first makes the word's probability fall fast when they are removed
and rise fast when they are restored.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from ..errors import ImageLoadError, PromptError, UnknownNameError
from ..explanation import Explanation
from ..extract import cam_from_grid
from ..methods.base import RawMaps, Run
from ..methods.gradient import DiffusionCAM, GradientCAM
from ..metrics.faithfulness import REPLACEMENTS
from .grid import Config, Grid, build_grid

#: what removed patches show: the mean colour separated faithful from inverted maps best in a probe
DEFAULT_FILL = "mean"
#: 0, 20, ..., 100 % of the patches: half the forwards of the 10 % steps, same ranking in the probe's setting
DEFAULT_STEPS = 5
PROFILE_FILE = "profile.json"
REPORT_FILE = "calibration.html"


class _Variants(GradientCAM):
    """Raw maps of several formulas at several blocks from one hooked forward and backward per step.

    :meth:`GradientCAM.compute` stacks whatever :meth:`maps_from_gradients`
    returns along the token axis, so returning (K, V, h, w) per grid (V =
    blocks x formulas) carries every variant through it unchanged.
    """

    def __init__(self, adapter, layers: Sequence[int], cams: Sequence[str], score: str, **options: Any) -> None:
        super().__init__(adapter, layer=list(layers), cam=cams[0], score=score, modules=(), **options)
        self.cams = tuple(cams)

    def maps_from_gradients(self, gg):
        per_grid, degenerate = [], None
        for g in range(len(gg.grids)):
            maps, flags = [], []
            for li in range(len(gg.layers)):
                for cam in self.cams:
                    m, bad = cam_from_grid(gg.acts[li][g], gg.grads[li][g], cam)
                    maps.append(m)
                    flags.append(bad)
            per_grid.append(torch.stack(maps, 1).cpu().numpy().astype(np.float32))
            bad = torch.stack(flags, 1)
            degenerate = bad if degenerate is None else degenerate | bad
        return per_grid, degenerate.cpu().numpy()

    def split(self, raw: RawMaps) -> dict[tuple[int, str], RawMaps]:
        out, v = {}, 0
        for layer in self.layers:
            for cam in self.cams:
                out[(layer, cam)] = RawMaps(raw.grids, [m[:, v] for m in raw.grid_maps], raw.degenerate[:, v],
                                            raw.scores)
                v += 1
        return out


@dataclass
class Query:
    """One image and prompt with its generated answer."""

    image: str  # the name given (a path, or "image i" for an array)
    sha256: str
    prompt: str
    run: Run
    cache: dict = field(default_factory=dict)  # perturbed forwards shared by the configurations


def image_sha256(image: Any) -> str:
    """sha256 of an image file's bytes, or of an array's pixels."""
    from pathlib import Path

    if isinstance(image, (str, Path)):
        try:
            return hashlib.sha256(Path(image).read_bytes()).hexdigest()
        except OSError as err:
            raise ImageLoadError(f"{image}: cannot read image ({err.strerror or err})") from None
    arr = np.ascontiguousarray(np.asarray(image))
    return hashlib.sha256(arr.tobytes()).hexdigest()


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable) or (
            isinstance(value, np.ndarray) and value.ndim == 3):
        return [value]
    return list(value)


def check_inputs(images, prompts) -> tuple[list, list[str]]:
    images = _as_list(images)
    prompts = _as_list(prompts)
    if not images:
        raise ImageLoadError("no images given: calibration needs at least one of your images")
    if not prompts:
        raise PromptError("no prompt given: calibration needs at least one prompt to ask about the images")
    for p in prompts:
        if not isinstance(p, str) or not p.strip():
            raise PromptError(f"prompt is empty ({p!r}): ask a question or give an instruction about the image")
    return images, prompts


def generate_queries(adapter, images, prompts, *, state: str = "trajectory", generation=None,
                     progress: bool = False) -> list[Query]:
    """Generate every image x prompt once (the answers every configuration explains)."""
    from ..progress import bar as progress_bar

    images, prompts = check_inputs(images, prompts)
    maker = DiffusionCAM(adapter, state=state, generation=generation, modules=())
    queries = []
    pairs = [(i, im, p) for i, im in enumerate(images) for p in prompts]
    for i, im, p in progress_bar(pairs, desc="generate", unit="answer", disable=not progress):
        name = str(im) if isinstance(im, (str, bytes)) or hasattr(im, "__fspath__") else f"image {i}"
        run = maker.generate(im, p)
        if not run.answer_ids:
            warnings.warn(f"{name}: the answer to {p!r} is empty; it is left out of the calibration", stacklevel=2)
            continue
        queries.append(Query(name, image_sha256(im), p, run))
    if not queries:
        raise PromptError("every answer was empty: there is no word to calibrate on")
    return queries


def explain_configs(adapter, query: Query, configs: Sequence[Config], *, state: str = "trajectory",
                    generation=None, chunk_size: int | str = 16) -> Iterator[tuple[Config, Explanation]]:
    """Each configuration's explanation of every token of ``query``'s answer (raw maps shared)."""
    run = query.run
    indices = list(range(len(run.answer_ids)))
    by_score: dict[str, list[Config]] = {}
    for c in configs:
        by_score.setdefault(c.score, []).append(c)
    for score, members in by_score.items():
        layers = sorted({c.layer for c in members})
        cams = list(dict.fromkeys(c.cam for c in members))
        variants = _Variants(adapter, layers, cams, score, state=state, generation=generation, chunk_size=chunk_size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # degenerate maps are counted in the sweep table instead
            raws = variants.split(variants.compute(run, indices))
            for c in members:
                method = DiffusionCAM(adapter, **{k: v for k, v in c.settings(state).items() if k != "method"},
                                      generation=generation, chunk_size=chunk_size)
                yield c, method.build(run, indices, raws[(c.layer, c.cam)])


def faithfulness_score(query: Query, exp: Explanation, *, fill: str = DEFAULT_FILL, steps: int = DEFAULT_STEPS,
                       batch_size: int = 64) -> dict[str, float]:
    """Mean deletion and insertion AUC of one explanation's maps, and their difference."""
    f = DiffusionCAM.faithfulness(query.run, exp, fill, fractions=np.linspace(0.0, 1.0, steps + 1),
                                  batch_size=batch_size, cache=query.cache)
    d, i = f["mean"]["deletion_auc"], f["mean"]["insertion_auc"]
    degenerate = [bool(b) or float(np.ptp(m)) == 0.0 for b, m in zip(exp.degenerate, exp.grid_maps)]
    return {"deletion_auc": d, "insertion_auc": i, "score": i - d, "degenerate": float(np.mean(degenerate))}


@dataclass
class SweepRow:
    config: Config
    stage: int
    per_query: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        keys = ("score", "deletion_auc", "insertion_auc", "degenerate")
        return {"label": self.config.label(), "stage": self.stage, "cam": self.config.cam, "layer": self.config.layer,
                "score_name": self.config.score, "modules": self.config.modules, "akd_border": self.config.akd_border,
                **{k: float(np.mean([q[k] for q in self.per_query])) for k in keys},
                "score_sd": float(np.std([q["score"] for q in self.per_query], ddof=1))
                if len(self.per_query) > 1 else 0.0}


def sweep(adapter, queries: Sequence[Query], configs: Sequence[Config], *, stage: int = 1, state: str = "trajectory",
          generation=None, fill: str = DEFAULT_FILL, steps: int = DEFAULT_STEPS, batch_size: int = 64,
          chunk_size: int | str = 16, bar=None) -> list[SweepRow]:
    rows = {c: SweepRow(c, stage) for c in configs}
    for q in queries:
        for c, exp in explain_configs(adapter, q, configs, state=state, generation=generation, chunk_size=chunk_size):
            rows[c].per_query.append(faithfulness_score(q, exp, fill=fill, steps=steps, batch_size=batch_size))
            if bar is not None:
                bar.update(1)
    return [rows[c] for c in configs]


@dataclass
class Calibration:
    """What :func:`calibrate` found: the sweep table, best first, and the chosen configuration."""

    best: Config
    rows: list[dict[str, Any]]
    queries: list[Query]
    grid: Grid
    criterion: dict[str, Any]
    state: str
    seconds: float
    model: dict[str, Any]

    @property
    def settings(self) -> dict[str, Any]:
        return self.best.settings(self.state)

    def profile(self) -> dict[str, Any]:
        """The profile's content (:mod:`diffusion_cam.calibration.profile`)."""
        from .. import __version__
        from .profile import FORMAT

        return {
            "format": FORMAT,
            "model": self.model,
            "settings": self.settings,
            "criterion": self.criterion,
            "package_version": __version__,
            "images": [{"image": n, "sha256": s} for n, s in dict.fromkeys((q.image, q.sha256) for q in self.queries)],
            "prompts": list(dict.fromkeys(q.prompt for q in self.queries)),
            "answers": len(self.queries),
            "seconds": round(self.seconds, 1),
            "sweep": self.rows,
        }

    def save(self, out) -> list[str]:
        """Write ``profile.json`` and ``calibration.html`` (the sweep's chart and table) into ``out``."""
        from pathlib import Path

        from ..errors import OutputError
        from .profile import write_profile
        from .report import calibration_html

        out = Path(out)
        content = self.profile()
        write_profile(content, out / PROFILE_FILE)
        try:
            (out / REPORT_FILE).write_text(calibration_html(content), encoding="utf-8")
        except OSError as err:
            raise OutputError(f"cannot write {out / REPORT_FILE}: {err.strerror or err}") from None
        return [PROFILE_FILE, REPORT_FILE]


def model_identity(adapter) -> dict[str, Any]:
    return {"name": adapter.name, "family": adapter.family, "weights": adapter.weights_id}


def calibrate(adapter, images, prompts, *, cams=None, layers=None, scores=None, modules=None, borders=None,
              full: bool = False, state: str = "trajectory", generation=None, fill: str = DEFAULT_FILL,
              steps: int = DEFAULT_STEPS, batch_size: int = 64, chunk_size: int | str = 16,
              progress: bool = True) -> Calibration:
    """Choose Diffusion-CAM's configuration for ``adapter`` on unlabelled ``images`` without masks.

    Sweeps map formula x block x modules on / off (stage one, at the
    adapter's score and AKD border), then the best of those with each other
    score and border (stage two); ``full=True`` sweeps every combination
    instead.  ``cams``, ``layers``, ``scores``, ``modules`` (``[True,
    False]``), ``borders`` narrow or widen the grid
    (:func:`~diffusion_cam.calibration.grid.build_grid`).  Every
    configuration is scored by insertion minus deletion AUC with ``fill`` in
    the removed patches, at ``steps`` + 1 fractions.  Cost: one generation per
    image and prompt, then per configuration and answer token ``2 * steps``
    batched forwards of perturbed images (fewer when rankings coincide).
    """
    from ..progress import bar as progress_bar

    if fill not in REPLACEMENTS:
        raise UnknownNameError(f"unknown fill {fill!r}; choose one of {', '.join(REPLACEMENTS)}")
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    adapter.check_state(state)
    grid = build_grid(adapter, cams=cams, layers=layers, scores=scores, modules=modules, borders=borders)
    t0 = time.perf_counter()
    queries = generate_queries(adapter, images, prompts, state=state, generation=generation, progress=progress)
    common = dict(state=state, generation=generation, fill=fill, steps=steps, batch_size=batch_size,
                  chunk_size=chunk_size)
    first = grid.factorial() if full else grid.stage_one()
    n_second = 0 if full else max(len(grid.scores) - 1 + len(grid.borders) - 1, 0)
    with progress_bar(total=(len(first) + n_second) * len(queries), desc="calibrate", unit="map set",
                      disable=not progress) as bar:
        rows = sweep(adapter, queries, first, stage=1, bar=bar, **common)
        if not full:
            best = _ranked(rows)[0].config
            second = grid.around(best)
            bar.total = (len(first) + len(second)) * len(queries)
            bar.refresh()
            rows += sweep(adapter, queries, second, stage=2, bar=bar, **common)
    ranked = _ranked(rows)
    table = [{"rank": r + 1, **row.summary()} for r, row in enumerate(ranked)]
    criterion = {"score": "insertion_auc - deletion_auc", "fill": fill, "fractions": steps + 1,
                 "mask_target": True, "averaged": "over tokens, then over answers", "full_grid": full}
    return Calibration(ranked[0].config, table, queries, grid, criterion, state, time.perf_counter() - t0,
                       model_identity(adapter))


def _ranked(rows: Sequence[SweepRow]) -> list[SweepRow]:
    # best score first; ties keep the sweep order, so the result does not depend on float noise in sorting
    return sorted(rows, key=lambda r: -float(np.mean([q["score"] for q in r.per_query])))
