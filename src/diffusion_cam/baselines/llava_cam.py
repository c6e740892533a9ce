"""LLaVA-CAM (Zhang et al., NAACL 2025), adapted to a masked-diffusion model (spec §4).

One teacher-forced forward over prompt, image and the complete generated
answer (the ``final`` state); the score is the sum of the answer tokens'
logits at their positions, so the map is class-agnostic: every token of the
answer gets the same map.  Map: positive-gradient channel weights
``a_c = mean_ij max(G, 0)``, ``H = mean_c a_c max(A_c, 0)``, then ``H /= max H``
(no min-max) and the hard threshold ``H[H < 0.5] = 0``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..extract import grid_gradients
from ..methods.base import ExplanationMethod, RawMaps, Run


class LLaVACAM(ExplanationMethod):
    """Class-agnostic positive-gradient CAM of the summed answer logits, thresholded at 0.5."""

    name = "llava-cam"
    default_modules = ()

    def __init__(self, adapter, *, layer: int | Sequence[int] | None = None, chunk_size: int = 16,
                 threshold: float = 0.5, **options) -> None:
        options.pop("modules", None)
        super().__init__(adapter, modules=(), **options)
        adapter.check_state("final")
        self.layers = adapter.resolve_layers(layer)
        self.chunk_size = chunk_size
        self.threshold = float(threshold)

    def settings(self):
        return {**super().settings(), "layers": self.layers, "state": "final", "score": "answer_logit_sum",
                "threshold": self.threshold}

    def compute(self, run: Run, indices: list[int]) -> RawMaps:
        positions = [run.canvas_position(i) for i in range(len(run.answer_ids))]
        ids = torch.tensor(run.answer_ids)

        def score(logits: torch.Tensor) -> torch.Tensor:
            # row i holds answer token i's position
            return logits[torch.arange(len(positions), device=logits.device), ids.to(logits.device)].float().sum()[None]

        gg = grid_gradients(self.adapter, run.inputs, run.generation.sequence, self.layers, score, self.chunk_size,
                            positions=positions)
        k = len(indices)
        grid_maps, positive = [], False
        for g in range(len(gg.grids)):
            per_layer = []
            for li in range(len(self.layers)):
                acts, grads = gg.acts[li][g], gg.grads[li][g][0]
                grads = torch.nan_to_num(grads, nan=0.0, posinf=0.0, neginf=0.0)
                weights = grads.clamp(min=0).mean(dim=(0, 1))  # (D,)
                heat = (acts.clamp(min=0) * weights).mean(-1)  # (h, w)
                top = heat.max()
                if top > 0:
                    heat = heat / top
                    heat = torch.where(heat < self.threshold, torch.zeros_like(heat), heat)
                else:
                    heat = torch.zeros_like(heat)
                per_layer.append(heat)
            heat = torch.stack(per_layer).mean(0).cpu().numpy().astype(np.float32)
            positive = positive or bool(heat.max() > 0)
            grid_maps.append(np.repeat(heat[None], k, axis=0))
        score_value = float(gg.scores[0])
        return RawMaps(gg.grids, grid_maps, np.full(k, not positive), np.full(k, score_value))
