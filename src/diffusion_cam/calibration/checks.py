"""Sanity checks of a method's maps on a model, without masks.

* **Randomization** (Adebayo et al., "Sanity Checks for Saliency Maps",
  NeurIPS 2018): the language model's blocks are re-initialised from the top
  down, cumulatively, then the rest of the model (embeddings, vision
  encoder, projector, output head), and the same answers are explained again.  Maps that
  stay alike (Spearman rank correlation and SSIM of the grid maps) do not
  depend on what the model learned.  The weights are restored afterwards,
  bit for bit.
* **Faithfulness against random maps**: insertion minus deletion AUC of the
  maps against seeded uniform random maps on the same answers.
* **Degenerate maps**: the share of maps that are empty or constant.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ..methods import get_method
from ..metrics.faithfulness import PerturbationTarget, deletion_insertion
from .sweep import DEFAULT_FILL, DEFAULT_STEPS, check_inputs, image_sha256

#: the maps of the fully re-initialised model must correlate less than this with the trained model's
#: (mean Spearman over maps); Adebayo et al. show faithful gradients falling to about 0.1-0.3
MAX_SPEARMAN = 0.5
#: ... and be less alike than this (mean SSIM of the grid maps)
MAX_SSIM = 0.5
#: most maps may be empty or constant
MAX_DEGENERATE = 0.10
#: cascade in at most this many stages (a deep model re-initialises several blocks per stage)
MAX_STAGES = 8


@dataclass
class CheckResult:
    name: str
    passed: bool
    line: str
    figures: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "line": self.line, "figures": self.figures}


@dataclass
class CheckReport:
    method: str
    settings: dict[str, Any]
    results: list[CheckResult]
    images: list[dict[str, str]]
    prompts: list[str]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def lines(self) -> list[str]:
        return [f"{r.name:<14} {'PASS' if r.passed else 'FAIL'}  {r.line}" for r in self.results]

    def to_dict(self) -> dict[str, Any]:
        from .. import __version__

        return {"method": self.method, "settings": self.settings, "passed": self.passed,
                "checks": [r.to_dict() for r in self.results], "images": self.images, "prompts": self.prompts,
                "package_version": __version__}


# ------------------------------------------------------------------ similarity
def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps; a constant map shares no ranking (0), two equal ones 1."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(spearmanr(a, b).statistic)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity of two [0, 1] maps (scikit-image), window as large as the map allows up to 7."""
    from skimage.metrics import structural_similarity

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    side = min(a.shape)
    win = min(7, side if side % 2 else side - 1)
    if win < 3:
        return float("nan")
    return float(structural_similarity(a, b, data_range=1.0, win_size=win))


# ------------------------------------------------------------- randomization
@contextmanager
def restored(modules: Sequence[torch.nn.Module]):
    """Put back every parameter and buffer of ``modules`` on exit, bit for bit, whatever happened inside."""
    # kept in host memory: a large model on an accelerator has no room for a second copy there
    saved = [{k: v.detach().to("cpu", copy=True) for k, v in m.state_dict(keep_vars=True).items()} for m in modules]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, state in zip(modules, saved):
                m.load_state_dict(state)


def reinitialise(block: torch.nn.Module) -> None:
    """Fresh weights: each layer's own ``reset_parameters``; other matrices drawn from N(0, 0.02^2).

    One-dimensional parameters of layers without ``reset_parameters`` (a
    hand-written norm's scale, say) are kept: drawing them at random would
    only scale the activations.
    """
    covered = set()
    for m in block.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()
            covered.update(id(p) for p in m.parameters(recurse=False))
    with torch.no_grad():
        for p in block.parameters():
            if id(p) not in covered and p.dim() >= 2:
                p.normal_(0.0, 0.02)


def cascade(n_blocks: int, max_stages: int = MAX_STAGES) -> list[list[int]]:
    """Blocks re-initialised at each stage, cumulatively from the top (the output side) down."""
    step = max(1, math.ceil(n_blocks / max_stages))
    top_down = list(range(n_blocks - 1, -1, -1))
    return [top_down[:min(k, n_blocks)] for k in range(step, n_blocks + step, step)]


# ---------------------------------------------------------------------- check
def _maps(method, runs) -> list[tuple[Any, np.ndarray, np.ndarray]]:
    """(explanation, grid maps, degenerate flags) of every answer."""
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for run in runs:
            idx = list(range(len(run.answer_ids)))
            exp = method.build(run, idx, method.compute(run, idx))
            grid = np.asarray(exp.grid_maps, np.float64)
            flags = np.array([bool(d) or float(np.ptp(m)) == 0.0 for d, m in zip(exp.degenerate, grid)])
            out.append((exp, grid, flags))
    return out


def check(adapter, images, prompts, *, method: str = "diffusion-cam", profile=None, seed: int = 0,
          fill: str = DEFAULT_FILL, steps: int = DEFAULT_STEPS, batch_size: int = 64, max_stages: int = MAX_STAGES,
          progress: bool = False, **options: Any) -> CheckReport:
    """Run the three sanity checks of ``method`` (with ``profile`` and ``options``) on ``images`` x ``prompts``.

    The model's weights are changed during the randomization check and
    restored, bit for bit, before this returns (also on error).
    """
    from tqdm import tqdm

    images, prompts = check_inputs(images, prompts)
    if profile is not None:
        options["profile"] = profile
    explainer = get_method(method, adapter, **options)
    runs, names = [], []
    for i, im in enumerate(images):
        for p in prompts:
            run = explainer.generate(im, p)
            if run.answer_ids:
                runs.append(run)
                names.append({"image": str(im) if isinstance(im, str) else f"image {i}", "sha256": image_sha256(im)})
    if not runs:
        from ..errors import PromptError

        raise PromptError("every answer was empty: there is no word to check")
    trained = _maps(explainer, runs)
    results = [_degenerate(trained), _faithfulness(adapter, runs, trained, seed, fill, steps, batch_size)]

    blocks = list(adapter.blocks())
    # the blocks top down, then everything else (embeddings, vision encoder, projector, head): the image
    # tokens' activations carry the input's structure until the layers that encode it are random too
    stages: list[Any] = cascade(len(blocks), max_stages) + ["model"]
    per_stage = []
    device = adapter.device
    with restored([adapter.model]), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        done: set[int] = set()
        for s, chosen in enumerate(tqdm(stages, desc="randomize", unit="stage", disable=not progress)):
            torch.manual_seed(seed + s)
            if chosen == "model":
                reinitialise(adapter.model)
            for b in (() if chosen == "model" else chosen):
                if b not in done:
                    reinitialise(blocks[b])
                    done.add(b)
            randomized = _maps(explainer, runs)
            rho = [spearman(a, b) for (_, ga, _), (_, gb, _) in zip(trained, randomized) for a, b in zip(ga, gb)]
            sim = [ssim(a, b) for (_, ga, _), (_, gb, _) in zip(trained, randomized) for a, b in zip(ga, gb)]
            per_stage.append({"randomized": "whole model" if chosen == "model" else f"blocks {list(chosen)}",
                              "spearman": float(np.mean(rho)), "ssim": float(np.nanmean(sim)),
                              "spearman_sd": float(np.std(rho)), "ssim_sd": float(np.nanstd(sim))})
    results.insert(0, _randomization(per_stage, len(blocks)))
    names = list({n["sha256"]: n for n in names}.values())
    return CheckReport(explainer.name, explainer.settings(), results, names, list(prompts))


def _randomization(per_stage, n_blocks) -> CheckResult:
    last = per_stage[-1]
    passed = last["spearman"] < MAX_SPEARMAN and last["ssim"] < MAX_SSIM
    trail = ", ".join(f"{s['spearman']:.2f}" for s in per_stage[:-1])
    line = (f"whole model re-initialised: Spearman {last['spearman']:.2f} "
            f"({'<' if last['spearman'] < MAX_SPEARMAN else '>='} {MAX_SPEARMAN}), SSIM {last['ssim']:.2f} "
            f"({'<' if last['ssim'] < MAX_SSIM else '>='} {MAX_SSIM}); after the {n_blocks} blocks "
            f"top down, Spearman {trail}")
    return CheckResult("randomization", bool(passed), line,
                       {"stages": per_stage, "max_spearman": MAX_SPEARMAN, "max_ssim": MAX_SSIM})


def _degenerate(trained) -> CheckResult:
    flags = np.concatenate([f for _, _, f in trained])
    share = float(flags.mean())
    passed = share <= MAX_DEGENERATE
    line = (f"{int(flags.sum())} of {len(flags)} maps empty or constant ({share:.1%}, "
            f"{'<=' if passed else '>'} {MAX_DEGENERATE:.0%})")
    return CheckResult("degenerate", passed, line, {"share": share, "maps": int(len(flags)),
                                                    "max_share": MAX_DEGENERATE})


def _faithfulness(adapter, runs, trained, seed, fill, steps, batch_size) -> CheckResult:
    fractions = np.linspace(0.0, 1.0, steps + 1)
    rng = np.random.default_rng(seed)
    ours, chance = [], []
    for run, (exp, grid, _) in zip(runs, trained):
        cache: dict = {}
        positions = [run.canvas_position(i) for i in exp.token_indices]
        ids = [run.answer_ids[i] for i in exp.token_indices]
        random_maps = rng.random(grid.shape)
        pair = []
        for maps in (grid, random_maps):
            res = deletion_insertion(adapter, run.inputs, run.generation.sequence,
                                     [PerturbationTarget(p, t, m) for p, t, m in zip(positions, ids, maps)],
                                     replacement=fill, fractions=fractions, batch_size=batch_size, cache=cache)
            pair.append((float(np.mean([r.deletion_auc for r in res])), float(np.mean([r.insertion_auc for r in res]))))
        ours.append(pair[0])
        chance.append(pair[1])
    ours_a, chance_a = np.array(ours), np.array(chance)
    diff = (ours_a[:, 1] - ours_a[:, 0]) - (chance_a[:, 1] - chance_a[:, 0])
    passed = float(diff.mean()) > 0
    m, r = ours_a.mean(0), chance_a.mean(0)
    line = (f"insertion - deletion AUC {m[1] - m[0]:+.3f} vs {r[1] - r[0]:+.3f} for random maps (must be higher); "
            f"deletion {m[0]:.3f} vs {r[0]:.3f}, insertion {m[1]:.3f} vs {r[1]:.3f}; "
            f"better on {int((diff > 0).sum())} of {len(diff)} answers ({fill} fill)")
    return CheckResult("faithfulness", passed, line,
                       {"deletion_auc": float(m[0]), "insertion_auc": float(m[1]),
                        "random_deletion_auc": float(r[0]), "random_insertion_auc": float(r[1]),
                        "answers_better": int((diff > 0).sum()), "answers": int(len(diff)), "seed": seed,
                        "fill": fill})
