"""TAM: Token Activation Map (Li et al., ICCV 2025), adapted to a masked-diffusion model (spec §4).

Per answer token with id ``c``:

1. logit lens at the image positions of the last block's output:
   ``m = max(0, W_out[c] · norm_f(h_img))`` (``Adapter.logit_lens``), from the
   same forward Diffusion-CAM explains the token from (``state``: the denoising
   step that committed it, or the final sequence);
2. estimated causal inference (ECI) with the maps of the earlier answer tokens
   (reading order), leaving out tokens identical to the explained one: their
   relevances ``s_i = max(0, z_i[c])`` (the logit of ``c`` at each earlier
   token's position, same forward) weight an interference map
   ``I = sum_i s_i m_i / sum_i s_i``; ``s* = argmin_s ||m - s I||^2``
   (unconstrained, closed form) and ``m' = max(m - s* I, 0)``;
3. ``m' / max m'`` and the rank-Gaussian filter with k = 3 (``refine.akd``).

TAM normalises image and text scores jointly before the filter; only the
scale of the image part changes with that, and every metric used here is
scale-free, so the map is normalised on its own.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ExtractionError, UnknownNameError
from ..extract import ActivationRecorder, rows_in, window
from ..methods.base import ExplanationMethod, RawMaps, Run, state_forwards
from ..refine import rank_gaussian_filter


def eci(m: np.ndarray, earlier: np.ndarray, relevance: np.ndarray) -> np.ndarray:
    """TAM's estimated causal inference: ``max(m - s* I, 0)`` with ``I`` the relevance-weighted earlier maps."""
    rel = np.maximum(np.asarray(relevance, dtype=np.float64), 0.0)
    if earlier.shape[0] == 0 or not rel.sum() > 0:
        return m
    interference = np.tensordot(rel / rel.sum(), earlier, axes=1)
    ii = float(np.vdot(interference, interference))
    if not ii > 0:
        return m
    s = float(np.vdot(m, interference)) / ii
    return np.maximum(m - s * interference, 0.0)


class TAM(ExplanationMethod):
    """Logit-lens maps of the last block, debiased by ECI and rank-Gaussian filtered (k = 3)."""

    name = "tam"
    default_modules = ()

    def __init__(self, adapter, *, state: str = "trajectory", kernel: int = 3, **options) -> None:
        options.pop("modules", None)
        super().__init__(adapter, modules=(), **options)
        adapter.check_state(state)
        if state not in ("trajectory", "final"):
            raise UnknownNameError(f"unknown state {state!r}")
        if not adapter.has_logit_lens:
            raise ExtractionError(
                f"tam reads image positions through the logit lens (final norm + output head), which the "
                f"{adapter.family} adapter does not expose (a family file names its norm with final_norm)")
        self.state = state
        self.kernel = int(kernel)
        self.layer = len(adapter.blocks()) - 1

    def settings(self):
        return {**super().settings(), "layers": [self.layer], "state": self.state, "kernel": self.kernel}

    def _forwards(self, run: Run, indices: list[int]) -> list[tuple[torch.Tensor, list[int]]]:
        return state_forwards(run, indices, self.state)

    @torch.no_grad()
    def _lens(self, run: Run, sequence: torch.Tensor, members: list[int], context: list[int]):
        """Raw maps (per grid: (K, h, w)), scores (K,) and relevances (K, len(context)) of one forward."""
        adapter = self.adapter
        grids = adapter.image_grids(run.inputs, sequence)
        own = [run.canvas_position(i) for i in members]
        ctx = [run.canvas_position(i) for i in context]
        read = window(own + ctx)
        with ActivationRecorder(adapter.blocks(), [self.layer], adapter.unwrap) as rec:
            logits = adapter.forward_at(run.inputs, sequence[None].to(adapter.device), read)[0].float()
        ids = torch.tensor([run.answer_ids[i] for i in members], device=logits.device)
        per_grid = []
        for grid in grids:
            hidden = rec.get(self.layer, grid.call)[0]
            pos = torch.tensor(grid.positions, device=hidden.device)
            lens = adapter.logit_lens(hidden.index_select(-2, pos)).float()  # (n, V)
            maps = lens[:, ids].clamp(min=0).T.reshape(len(members), *grid.shape)
            per_grid.append(maps.cpu().numpy().astype(np.float64))
        own_rows = torch.tensor(rows_in(read, own), device=logits.device)
        scores = logits[own_rows, ids].cpu().numpy().astype(np.float64)
        ctx_rows = torch.tensor(rows_in(read, ctx), device=logits.device, dtype=torch.long)
        relevance = logits[ctx_rows][:, ids].clamp(min=0).T.cpu().numpy().astype(np.float64)  # (K, len(context))
        return grids, per_grid, scores, relevance

    def compute(self, run: Run, indices: list[int]) -> RawMaps:
        n = len(run.answer_ids)
        everyone = list(range(n))
        # ECI needs the maps of every earlier token, explained or not
        wanted = sorted(set(indices) | set(range(max(indices) + 1 if indices else 0)))
        raw: dict[int, list[np.ndarray]] = {}
        relevance: dict[int, np.ndarray] = {}
        scores: dict[int, float] = {}
        grids = None
        for sequence, members in self._forwards(run, wanted):
            g, maps, sc, rel = self._lens(run, sequence, members, everyone)
            if grids is None:
                grids = g
            elif [x.shape for x in g] != [x.shape for x in grids]:
                raise RuntimeError("image grids changed between denoising steps; the adapter must report stable grids")
            for row, i in enumerate(members):
                raw[i] = [m[row] for m in maps]
                relevance[i] = rel[row]
                scores[i] = float(sc[row])
        out = [np.zeros((len(indices), *grid.shape), dtype=np.float32) for grid in grids]
        degenerate = np.zeros(len(indices), dtype=bool)
        for row, i in enumerate(indices):
            earlier = [j for j in range(i) if run.answer_ids[j] != run.answer_ids[i]]
            positive = False
            for g in range(len(grids)):
                m = raw[i][g]
                if earlier:
                    m = eci(m, np.stack([raw[j][g] for j in earlier]), relevance[i][earlier])
                top = m.max()
                if top > 0:
                    m = rank_gaussian_filter(m / top, self.kernel)
                    positive = True
                else:
                    m = np.zeros_like(m)
                out[g][row] = m.astype(np.float32)
            degenerate[row] = not positive
        return RawMaps(grids, out, degenerate, np.array([scores[i] for i in indices], dtype=np.float64))
