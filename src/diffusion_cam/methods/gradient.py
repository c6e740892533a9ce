"""Gradient-weighted maps from a hooked block, at the trajectory or the final state."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..errors import TargetError, UnknownNameError
from ..extract import CAM_FORMULAS, SCORES, Target, cam_from_grid, grid_gradients, normalize, target_scores, window
from .base import ExplanationMethod, RawMaps, Run, state_forwards


class GradientCAM(ExplanationMethod):
    """CAM from activations and score gradients of one or several blocks.

    ``state="trajectory"`` explains each token at the denoising step that
    committed it (tokens committed together share one forward);
    ``state="final"`` explains every token from one forward over the whole
    generated answer.  Gradients of all tokens of one forward come from one
    batched backward, ``chunk_size`` tokens at a time (``"auto"``: as many as
    the device's free memory allows, see :func:`diffusion_cam.extract.memory.auto_chunk_size`).
    ``profile``: a calibration profile (file, dict or
    :class:`~diffusion_cam.calibration.Profile`) whose settings fill in the
    options left unset; ``settings()["profile"]`` records it.
    """

    name = "gradient-cam"
    #: map formulas this method accepts (a baseline narrows them to its own)
    formulas: tuple[str, ...] = CAM_FORMULAS

    def __init__(self, adapter, *, layer: int | Sequence[int] | None = None, state: str | None = None,
                 score: str | None = None, cam: str | None = None, chunk_size: int | str = 16,
                 distractor: int | str | None = None, profile: Any = None, **kwargs: Any) -> None:
        self.profile = None
        if profile is not None:
            # a calibration profile fills in what the caller left unset (see diffusion_cam.calibration)
            from ..calibration.profile import method_options

            given = dict(layer=layer, state=state, score=score, cam=cam, modules=kwargs.get("modules"),
                         akd_border=kwargs.get("akd_border"))
            merged, self.profile = method_options(profile, adapter, self.name, given)
            layer, state, score, cam = (merged.get(k) for k in ("layer", "state", "score", "cam"))
            kwargs.update({k: merged[k] for k in ("modules", "akd_border") if k in merged})
        state = state or "trajectory"
        super().__init__(adapter, **kwargs)
        score = score or adapter.default_score
        if score not in SCORES:
            raise UnknownNameError(f"unknown score {score!r}; choose one of {', '.join(SCORES)}")
        cam = cam or adapter.default_cam
        if cam not in self.formulas:
            raise UnknownNameError(f"unknown CAM formula {cam!r}; choose one of {', '.join(self.formulas)}")
        adapter.check_state(state)
        self.layers = adapter.resolve_layers(layer)
        self.state, self.score, self.cam = state, score, cam
        if chunk_size != "auto" and (not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive integer or 'auto', got {chunk_size!r}")
        self.chunk_size = chunk_size
        self.distractor = distractor

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "layers": self.layers, "state": self.state, "score": self.score,
                "cam": self.cam, "chunk_size": self.chunk_size,
                "distractor": self.distractor, **({"profile": self.profile} if self.profile else {})}

    def degenerate_hint(self) -> str:
        if self.score == "logprob":
            return ("; the logprob score's gradient vanishes for a confident token (1 - p underflows, "
                    "in half precision first): score='logodds' has the same direction without it")
        return ""

    # ------------------------------------------------------------------ plan
    def forwards(self, run: Run, indices: list[int]) -> list[tuple[torch.Tensor, list[int]]]:
        """(input sequence, answer indices explained from it) for every forward to run."""
        return state_forwards(run, indices, self.state)

    def _distractor_id(self, run: Run, i: int) -> int | None:
        if self.score != "contrastive":
            return None
        if self.distractor is not None:
            return self.adapter.token_id(self.distractor) if isinstance(self.distractor, str) else int(self.distractor)
        # as the reference: contrast with the first answer token that is a different token
        for other in run.answer_ids:
            if other != run.answer_ids[i]:
                return other
        raise TargetError(
            f"the contrastive score needs a distractor: the answer {run.texts!r} has no other token; pass distractor=WORD"
        )

    def targets(self, run: Run, members: list[int]) -> list[Target]:
        return [Target(run.canvas_position(i), run.answer_ids[i], self._distractor_id(run, i)) for i in members]

    # --------------------------------------------------------------- compute
    def maps_from_gradients(self, gg) -> tuple[list[np.ndarray], np.ndarray]:
        """Per-grid (K, h, w) maps averaged over layers after normalisation."""
        per_grid, degenerate = [], None
        for g in range(len(gg.grids)):
            stack, bad = [], None
            for li in range(len(gg.layers)):
                maps, flag = cam_from_grid(gg.acts[li][g], gg.grads[li][g], self.cam)
                stack.append(maps)
                bad = flag if bad is None else bad & flag  # degenerate only if every layer is
            mean = torch.stack(stack).mean(0)
            if len(stack) > 1:
                mean, _ = normalize(mean)
            per_grid.append(mean.cpu().numpy().astype(np.float32))
            degenerate = bad if degenerate is None else degenerate | bad
        return per_grid, degenerate.cpu().numpy()

    def compute(self, run: Run, indices: list[int]) -> RawMaps:
        order: list[int] = []
        grids = None
        grid_parts: list[list[np.ndarray]] = []
        flags, scores = [], []
        for sequence, members in self.forwards(run, indices):
            targets = self.targets(run, members)
            rows = window(targets)
            chunk = self.chunk_size
            if chunk == "auto":
                from ..extract.memory import auto_chunk_size

                chunk = auto_chunk_size(self.adapter, run.inputs, len(targets), rows=len(rows))
            # the formula only combines activations and gradients, so maps that differ in it share one backward
            key = (id(self.adapter), sequence.cpu().numpy().tobytes(), tuple(self.layers), self.score,
                   tuple(targets), chunk)
            gg = None if run.gradients is None else run.gradients.get(key)
            if gg is None:
                gg = grid_gradients(self.adapter, run.inputs, sequence, self.layers,
                                    lambda logits, t=targets, r=rows: target_scores(logits, t, self.score, r), chunk,
                                    n_targets=len(targets), positions=rows)
                if run.gradients is not None:
                    run.gradients[key] = gg
            if grids is None:
                grids = gg.grids
            elif [g.shape for g in gg.grids] != [g.shape for g in grids]:
                raise RuntimeError("image grids changed between denoising steps; the adapter must report stable grids")
            maps, bad = self.maps_from_gradients(gg)
            grid_parts.append(maps)
            flags.append(bad)
            scores.append(gg.scores.cpu().numpy())
            order.extend(members)
        # forwards come in step order; put rows back in answer order
        perm = np.argsort(np.asarray(order), kind="stable")
        grid_maps = [np.concatenate([part[g] for part in grid_parts])[perm] for g in range(len(grids))]
        return RawMaps(grids, grid_maps, np.concatenate(flags)[perm], np.concatenate(scores)[perm].astype(np.float64))


class DiffusionCAM(GradientCAM):
    """Diffusion-CAM: trajectory-aware positive-gradient CAM plus AKD, DACG, CBA and SICD."""

    name = "diffusion-cam"
    default_modules = ("akd", "dacg", "cba", "sicd")


class DiffusionCAMRaw(DiffusionCAM):
    """Diffusion-CAM's raw maps without any refinement module (the ablation's baseline row, by name).

    Refinement options (``modules``, ``akd_*``, ``sicd_mode``, ``module_params``)
    do not apply and are ignored, as for the baselines, so one command line
    can drive every method.
    """

    name = "diffusion-cam-raw"
    default_modules = ()

    def __init__(self, adapter, **kwargs: Any) -> None:
        for key in ("modules", "akd_kernel", "akd_border", "sicd_mode", "module_params"):
            kwargs.pop(key, None)
        super().__init__(adapter, modules=(), **kwargs)
