"""One differentiable forward: activations and per-target gradients on the image grids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..adapters.base import Adapter, ImageGrid, ModelInputs
from ..errors import ExtractionError, InfeasibleStateError
from .gradients import batched_vjp
from .hooks import ActivationRecorder

ScoreFn = Callable[[torch.Tensor], torch.Tensor]  # logits (L, V) -> scores (K,)


@dataclass
class GridGradients:
    """Activations and gradients of one forward, cut to each image grid.

    ``acts[l][g]`` is (h, w, D) and ``grads[l][g]`` is (K, h, w, D), float32,
    for layer ``layers[l]`` and grid ``grids[g]``.
    """

    layers: list[int]
    grids: list[ImageGrid]
    acts: list[list[torch.Tensor]]
    grads: list[list[torch.Tensor]]
    scores: torch.Tensor  # (K,)
    logits: torch.Tensor  # (L, V), detached


def _cut(hidden: torch.Tensor, grid: ImageGrid, layer: int) -> torch.Tensor:
    """(..., L, D) hidden state -> (..., h, w, D) at the grid's positions."""
    length = hidden.shape[-2]
    if max(grid.positions) >= length:
        raise InfeasibleStateError(
            f"block {layer} output holds {length} positions but the image grid {grid.name!r} spans "
            f"{min(grid.positions)}..{max(grid.positions)}: this state does not hold the whole image span"
        )
    idx = torch.tensor(grid.positions, device=hidden.device)
    h, w = grid.shape
    return hidden.index_select(-2, idx).reshape(*hidden.shape[:-2], h, w, hidden.shape[-1])


def grid_gradients(adapter: Adapter, inputs: ModelInputs, sequence: torch.Tensor, layers: Sequence[int],
                   score_fn: ScoreFn, chunk_size: int = 16) -> GridGradients:
    """Run one forward of ``sequence`` with hooks on ``layers`` and differentiate ``score_fn``."""
    blocks = adapter.blocks()
    grids = adapter.image_grids(inputs, sequence)
    if not grids:
        raise InfeasibleStateError(f"{adapter.family} adapter reports no image grid for this forward")
    with torch.enable_grad(), ActivationRecorder(blocks, layers, adapter.unwrap) as rec:
        logits = adapter.forward(inputs, sequence[None].to(adapter.device))[0]
        scores = score_fn(logits)
        wrt: list[torch.Tensor] = []
        keys: list[tuple[int, int]] = []
        for layer in layers:
            for call in sorted({g.call for g in grids}):
                hidden = rec.get(layer, call)
                if not hidden.requires_grad:
                    raise ExtractionError(
                        f"block {layer} output does not require grad: enable gradients on the model "
                        "parameters or make the input embeddings require grad"
                    )
                wrt.append(hidden)
                keys.append((layer, call))
        grads = batched_vjp(scores, wrt, chunk_size=chunk_size)
    by_key = {key: (h.detach(), g) for key, h, g in zip(keys, wrt, grads)}
    acts_out, grads_out = [], []
    for layer in layers:
        layer_acts, layer_grads = [], []
        for grid in grids:
            hidden, grad = by_key[(layer, grid.call)]
            # batch dim 0 of the hidden state is the single sequence
            layer_acts.append(_cut(hidden[0], grid, layer).float())
            layer_grads.append(_cut(grad[:, 0], grid, layer).float())
        acts_out.append(layer_acts)
        grads_out.append(layer_grads)
    return GridGradients(list(layers), grids, acts_out, grads_out, scores.detach(), logits.detach())
