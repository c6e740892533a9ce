"""Template for explanation methods: generate, pick tokens, compute raw maps, refine, place.

A method subclass only says how raw grid maps are computed for a set of answer
tokens (:meth:`ExplanationMethod.compute`); generation, token selection,
refinement, placement into image coordinates and the result object are shared.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import torch

from ..adapters.base import Adapter, GenerationConfig, ImageGrid, ModelInputs
from ..errors import (DegenerateMapWarning, InfeasibleStateError, OutOfWorldWarning, PromptError, ResourceError,
                      TargetError, UnknownNameError)
from ..explanation import Explanation, GridView
from ..generation import GenerationResult
from ..io import load_image
from ..metrics.faithfulness import REPLACEMENTS
from ..refine.akd import BORDERS as AKD_BORDERS
from ..words import find_word


@dataclass
class Run:
    """Everything known about one query once the answer is generated."""

    adapter: Adapter
    inputs: ModelInputs
    generation: GenerationResult
    answer_ids: list[int]  # the answer's own tokens (stop/padding removed), canvas order
    texts: list[str]
    #: set to a dict by a caller that explains this answer with several configurations (a bench grid): the
    #: backward passes are then shared by every map formula that reads the same block, score and targets
    gradients: dict | None = field(default=None, repr=False, compare=False)

    def canvas_position(self, index: int) -> int:
        return self.inputs.answer_start + index


def state_forwards(run: Run, indices: list[int], state: str) -> list[tuple["torch.Tensor", list[int]]]:
    """(input sequence, answer indices explained from it) for every forward a state needs.

    ``final``: one forward over the whole generated answer; ``trajectory``:
    one replayed denoising step per commit step, each explaining the tokens
    it committed.
    """
    if state == "final":
        return [(run.generation.sequence, list(indices))]
    groups: dict[int, list[int]] = {}
    for i in indices:
        groups.setdefault(run.generation.commit_step[i], []).append(i)
    return [(run.generation.steps[s].sequence, members) for s, members in sorted(groups.items())]


@contextmanager
def memory_step(what: str, hint: str):
    """Turn running out of memory during ``what`` into a :class:`ResourceError` that names the step and a remedy."""
    try:
        yield
    except ResourceError:
        raise
    except MemoryError:
        raise ResourceError(f"out of memory {what}; {hint}") from None
    except RuntimeError as err:
        # torch.cuda.OutOfMemoryError (and MPS's plain RuntimeError) without importing torch.cuda here
        if type(err).__name__ == "OutOfMemoryError" or "out of memory" in str(err).lower():
            raise ResourceError(f"out of accelerator memory {what}; {hint}") from None
        raise


@dataclass
class RawMaps:
    """Raw maps of K tokens at grid resolution, one (K, h, w) array per image grid."""

    grids: list[ImageGrid]
    grid_maps: list[np.ndarray]
    degenerate: np.ndarray
    scores: np.ndarray


class ExplanationMethod(ABC):
    """Base class: subclasses set :attr:`name` and implement :meth:`compute`."""

    name = "base"
    #: refinement modules applied by default (baselines use none)
    default_modules: tuple[str, ...] = ()

    def __init__(self, adapter: Adapter, *, modules: Sequence[str] | None = None,
                 generation: GenerationConfig | None = None, sicd_mode: str = "reference",
                 akd_kernel: int | str = 3, akd_border: str | None = None,
                 module_params: dict[str, Any] | None = None) -> None:
        from ..refine import MODULES

        self.adapter = adapter
        self.modules = tuple(self.default_modules if modules is None else modules)
        unknown = [m for m in self.modules if m not in MODULES]
        if unknown:
            raise UnknownNameError(f"unknown refinement module(s) {', '.join(map(repr, unknown))}; choose from {', '.join(MODULES)}")
        self.generation = generation or adapter.default_generation
        self.sicd_mode = sicd_mode
        self.akd_kernel = akd_kernel
        # None: the adapter's measured choice (the reference's reflect-101 unless measured otherwise)
        self.akd_border = akd_border or adapter.default_akd_border
        if self.akd_border not in AKD_BORDERS:
            raise UnknownNameError(f"unknown AKD border {self.akd_border!r}; choose one of {', '.join(AKD_BORDERS)}")
        self.module_params = dict(module_params or {})

    # ---------------------------------------------------------------- hooks
    @abstractmethod
    def compute(self, run: Run, indices: list[int]) -> RawMaps:
        """Raw [0, 1] grid maps for the answer tokens at ``indices`` (answer order)."""

    def settings(self) -> dict[str, Any]:
        from ..devices import describe

        return {
            "method": self.name,
            **describe(self.adapter.model),  # where it ran: --device / --dtype auto pick these
            "modules": list(self.modules),
            "sicd_mode": self.sicd_mode,
            "akd_kernel": self.akd_kernel,
            "akd_border": self.akd_border,
            "module_params": self.module_params,
            "generation": asdict(self.generation),
        }

    # ------------------------------------------------------------- pipeline
    def generate(self, image: Any, prompt: str, gen_length: int | None = None) -> Run:
        """Load the image, build the inputs and generate the answer with its trajectory."""
        images, config = self._images_and_config(image, prompt, gen_length)
        inputs = self.adapter.prepare(images, prompt, config.gen_length)
        return self._run(inputs, self.adapter.generate(inputs, config))

    def given(self, image: Any, prompt: str, answer: str, gen_length: int | None = None) -> Run:
        """Like :meth:`generate`, with ``answer`` on the canvas instead of a generated one (no trajectory)."""
        images, config = self._images_and_config(image, prompt, gen_length)
        canvas = self.adapter.answer_canvas(answer, config.gen_length)
        inputs = self.adapter.prepare(images, prompt, len(canvas))
        sequence = inputs.input_ids.clone()
        sequence[inputs.answer_slice] = torch.tensor(canvas, dtype=sequence.dtype)
        result = GenerationResult(sequence=sequence, answer_ids=list(canvas), steps=[],
                                  config=replace(config, gen_length=len(canvas)), commit_step=[-1] * len(canvas))
        return self._run(inputs, result)

    def _images_and_config(self, image: Any, prompt: str, gen_length: int | None):
        if not isinstance(prompt, str) or not prompt.strip():
            # checked here so that every adapter refuses it the same way, before the image is decoded
            raise PromptError(f"prompt is empty ({prompt!r}): ask a question or give an instruction about the image")
        images = [load_image(im) for im in (image if isinstance(image, (list, tuple)) else [image])]
        config = self.generation
        if gen_length is not None:
            config = replace(config, gen_length=int(gen_length))
        return images, config

    def _run(self, inputs: ModelInputs, result: GenerationResult) -> Run:
        stops = self.adapter.stop_token_ids
        answer_ids: list[int] = []
        for tid in result.answer_ids:
            if tid in stops or tid == self.adapter.mask_token_id:
                break
            answer_ids.append(tid)
        return Run(self.adapter, inputs, result, answer_ids, self.adapter.decode(answer_ids))

    def select(self, run: Run, targets: Sequence[int | str] | int | str | None) -> list[int]:
        """Answer indices to explain: all tokens, or those named by index or word."""
        n = len(run.answer_ids)
        if n == 0:
            raise TargetError(f"the model's answer to {run.inputs.prompt!r} is empty: there is no token to explain")
        if targets is None:
            return list(range(n))
        if isinstance(targets, (int, str, np.integer)):
            targets = [targets]
        words = ", ".join(f"{i}:{t!r}" for i, t in enumerate(run.texts))
        targets = list(targets)
        if not targets:
            raise TargetError(f"no target given: name tokens by index or word, or pass None for all ({words})")
        chosen: list[int] = []
        for target in targets:
            if not isinstance(target, (str, int, np.integer)) or isinstance(target, bool):
                raise TargetError(f"target {target!r} is neither a token index nor a word ({words})")
            if isinstance(target, str):
                # a token with that text, else every token of a word split into subwords
                hits = [i for occurrence in find_word(run.texts, target) for i in occurrence]
                if not hits:
                    raise TargetError(f"target word {target!r} is not in the answer {run.adapter.join(run.texts)!r}; its tokens are {words}")
                chosen.extend(hits)
            else:
                i = int(target)
                if not -n <= i < n:
                    raise TargetError(f"target token index {i} is out of range: the answer has {n} tokens ({words})")
                chosen.append(i % n)
        return sorted(set(chosen))

    def explain(self, image: Any, prompt: str, *, targets: Sequence[int | str] | int | str | None = None,
                gen_length: int | None = None, faithfulness: bool | str = False,
                answer: str | None = None, grounding_probe: bool = False, progress: bool = False) -> Explanation:
        """Generate an answer to ``prompt`` about ``image`` and explain its tokens.

        ``answer``: explain this answer instead of generating one (e.g. a
        reference caption, or a wrong answer, to see what would support it).
        It was never denoised, so it has no trajectory: the method must use
        the ``final`` state (one forward over the prompt, image and answer).

        ``faithfulness``: also measure every map's deletion and insertion
        curves (:mod:`diffusion_cam.metrics.faithfulness`; ``True`` or
        ``"blur"``, ``"mean"``, ``"road"`` for what removed patches show),
        kept in :attr:`Explanation.faithfulness`.  It costs 20 forwards per
        token, batched.

        ``grounding_probe``: also run the one-word deletion probe behind the
        grounding score (:mod:`diffusion_cam.grounding`): every token's
        probability with the image intact and its drop when the top 10 % of
        the patches under its map are removed.  It costs four forwards per
        token, batched.

        ``progress``: show bars (on stderr) over the denoising steps and the
        batched backwards.
        """
        from ..progress import reporting

        with reporting(progress):
            return self._explain(image, prompt, targets, gen_length, faithfulness, answer, grounding_probe)

    def _explain(self, image: Any, prompt: str, targets: Sequence[int | str] | int | str | None,
                 gen_length: int | None, faithfulness: bool | str, answer: str | None,
                 grounding_probe: bool = False) -> Explanation:
        replacement = "blur" if faithfulness is True else faithfulness
        if replacement and replacement not in REPLACEMENTS:  # before the model runs, not after
            raise UnknownNameError(f"unknown replacement {replacement!r}; choose one of {', '.join(REPLACEMENTS)}")
        if answer is not None and getattr(self, "state", "final") != "final":
            raise InfeasibleStateError(
                f"a given answer was never denoised, so it has no {self.state!r} state to explain it from; "
                "use state='final' (CLI: --state final, the default with --answer)")
        with memory_step("while generating the answer",
                         "try --dtype bfloat16 (half the weights' memory), a shorter --gen-length or a larger device"):
            if answer is None:
                run = self.generate(image, prompt, gen_length)
            else:
                run = self.given(image, prompt, answer, gen_length)
        # said before the maps are computed: with an answer that is likely meaningless, so are they
        doubt = self.adapter.out_of_world(run.inputs, run.generation if answer is None else None)
        if doubt:
            doubt = f"{doubt}; the answer is likely meaningless"
            warnings.warn(doubt, OutOfWorldWarning, stacklevel=2)
        indices = self.select(run, targets)
        chunk = getattr(self, "chunk_size", None)
        held = f", {chunk} per batched backward" if isinstance(chunk, int) else ""
        with memory_step(f"in the backward passes of {len(indices)} token(s){held} over "
                         f"{int(run.inputs.input_ids.shape[-1])} positions",
                         "try a smaller --chunk-size (or 'auto'), fewer --targets or --dtype bfloat16"):
            raw = self.compute(run, indices)
        exp = self.build(run, indices, raw)
        if doubt:
            exp.warnings.append(doubt)
        if replacement:
            with memory_step("measuring faithfulness (batches of perturbed images)",
                             "leave out --faithfulness or use a smaller batch"):
                exp.faithfulness = self.faithfulness(run, exp, replacement)
        if grounding_probe:
            with memory_step("in the grounding probe (batches of perturbed images)",
                             "leave out --grounding-probe or use a larger device"):
                exp.set_grounding_probe(self.grounding_probe(run, exp))
        return exp

    @classmethod
    def grounding_probe(cls, run: Run, exp: Explanation) -> list[dict[str, float]]:
        """The one-word deletion probe of every explained token (:func:`diffusion_cam.grounding.probe`):
        a deletion curve at two fractions, the mean colour filling removed patches (no blur that
        would leave the word's object half visible)."""
        from ..grounding import probe, probe_share

        share = probe_share(exp.grid_maps.shape[1:])
        return probe(cls.faithfulness(run, exp, "mean", fractions=(0.0, share))["per_token"])

    @staticmethod
    def faithfulness(run: Run, exp: Explanation, replacement: str = "blur", **options: Any) -> dict[str, Any]:
        """Deletion / insertion curves and AUCs of every explained token's map (``options``: see
        :func:`~diffusion_cam.metrics.faithfulness.deletion_insertion`)."""
        from ..metrics.faithfulness import PerturbationTarget, deletion_insertion

        if replacement not in REPLACEMENTS:
            raise UnknownNameError(f"unknown replacement {replacement!r}; choose one of {', '.join(REPLACEMENTS)}")
        targets = [PerturbationTarget(run.canvas_position(i), run.answer_ids[i], m)
                   for i, m in zip(exp.token_indices, exp.grid_maps)]
        results = deletion_insertion(run.adapter, run.inputs, run.generation.sequence, targets,
                                     replacement=replacement, **options)
        per_token = [r.to_dict() for r in results]
        mean = {key: float(np.mean([r[key] for r in per_token])) for key in ("deletion_auc", "insertion_auc")}
        return {"replacement": replacement, "per_token": per_token, "mean": mean}

    def degenerate_hint(self) -> str:
        """Appended to the warning about an empty map: a setting of this method that can cause it."""
        return ""

    def refine_grid_maps(self, run: Run, maps: np.ndarray, indices: list[int]) -> np.ndarray:
        """Apply the refinement modules to (K, h, w) raw maps of the tokens at ``indices``."""
        from ..refine import refine, refine_stack

        if not self.modules:
            return maps.astype(np.float32)
        params = {"akd_border": self.akd_border, **self.module_params}
        if self.akd_kernel == "adaptive":
            params.setdefault("akd_steps", len(run.generation.steps))
            params.setdefault("akd_image_size", max(run.inputs.image_size))
        raw = maps.astype(np.float64)
        if self.sicd_mode == "causal":
            # causal SICD reads the other explained tokens' maps
            out = refine_stack(raw, [run.answer_ids[i] for i in indices], modules=self.modules,
                               sicd_mode="causal", akd_kernel=self.akd_kernel, **params)
        else:
            # reference SICD counts repeats over the whole answer, whichever tokens are explained
            out = np.stack([refine(m, run.answer_ids, self.modules, akd_kernel=self.akd_kernel, **params)
                            for m in raw])
        return np.asarray(out, dtype=np.float32)

    def build(self, run: Run, indices: list[int], raw: RawMaps) -> Explanation:
        for i, bad in zip(indices, raw.degenerate):
            if bad:
                warnings.warn(
                    f"token {i} ({run.texts[i]!r}) has no positive evidence at the hooked layer "
                    "(zero, constant or non-finite map, e.g. all-zero gradients): its map is reported as zeros"
                    + self.degenerate_hint(),
                    DegenerateMapWarning, stacklevel=3,
                )
        refined = [self.refine_grid_maps(run, m, indices) for m in raw.grid_maps]
        for r, bad in zip(refined, [raw.degenerate] * len(refined)):
            r[bad] = 0.0
        size = run.inputs.image_size
        steps_with_commits = [
            {"step": s.index, "committed": [p for p in s.committed if p < len(run.answer_ids)],
             "ids": [tid for p, tid in zip(s.committed, s.committed_ids) if p < len(run.answer_ids)],
             # the model's probability of each when committed: the grounding score reads it
             "probabilities": [float(q) for p, q in zip(s.committed, s.probabilities) if p < len(run.answer_ids)]}
            for s in run.generation.steps
        ]
        return Explanation(
            answer=run.adapter.join(run.texts),
            tokens=[run.texts[i] for i in indices],
            token_ids=[run.answer_ids[i] for i in indices],
            token_indices=list(indices),
            steps=[run.generation.commit_step[i] for i in indices],
            # kept at grid resolution: maps at image resolution are drawn when asked for
            views=[GridView(r, m.astype(np.float32), tuple(float(v) for v in grid.region))
                   for r, m, grid in zip(refined, raw.grid_maps, raw.grids) if grid.image_index == 0],
            image_size=tuple(size),
            grid_maps=refined[0],
            raw_grid_maps=raw.grid_maps[0].astype(np.float32),
            image=run.inputs.images[0],
            prompt=run.inputs.prompt,
            model=run.adapter.name,
            method=self.name,
            settings=self.settings(),
            scores=[float(s) for s in raw.scores],
            degenerate=[bool(d) for d in raw.degenerate],
            trajectory=[s for s in steps_with_commits if s["committed"]],
            answer_tokens=list(run.texts),
        )
