"""One differentiable forward: activations and per-target gradients on the image grids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .. import progress
from ..adapters.base import Adapter, ImageGrid, ModelInputs
from ..errors import ExtractionError, InfeasibleStateError
from .gradients import batched_vjp
from .hooks import ActivationRecorder

ScoreFn = Callable[[torch.Tensor], torch.Tensor]  # logits (P, V) at the forward's positions -> scores (K,)


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


def _hooked(rec: ActivationRecorder, layers: Sequence[int], grids: Sequence[ImageGrid]):
    keys, tensors = [], []
    for layer in layers:
        for call in sorted({g.call for g in grids}):
            hidden = rec.get(layer, call)
            if not hidden.requires_grad:
                raise ExtractionError(
                    f"block {layer} output does not require grad: enable gradients on the model "
                    "parameters or make the input embeddings require grad"
                )
            keys.append((layer, call))
            tensors.append(hidden)
    return keys, tensors


def grid_gradients(adapter: Adapter, inputs: ModelInputs, sequence: torch.Tensor, layers: Sequence[int],
                   score_fn: ScoreFn, chunk_size: int = 16, strategy: str | None = None,
                   n_targets: int | None = None, positions: Sequence[int] | None = None) -> GridGradients:
    """Run one forward of ``sequence`` with hooks on ``layers`` and differentiate ``score_fn``.

    ``score_fn`` reads the logits at ``positions`` (row i for ``positions[i]``;
    every position when None): the forward projects only those rows
    (:meth:`Adapter.forward_at`), so neither the logits nor their per-target
    gradients are (L, V).

    ``strategy`` says how K target gradients come from one forward:
    ``"expand"`` repeats the hidden state at the earliest hooked block K times
    so that one ordinary batched backward yields all K gradients (fast; for
    adapters whose later blocks broadcast over the batch, see
    :attr:`Adapter.batch_expand_safe`); ``"vmap"`` uses a batched
    vector-Jacobian product on a batch-1 graph.  Default: the adapter's choice.
    ``n_targets`` (the length of ``score_fn``'s output) saves a probing forward.
    """
    blocks = adapter.blocks()
    grids = adapter.image_grids(inputs, sequence)
    if not grids:
        raise InfeasibleStateError(f"{adapter.family} adapter reports no image grid for this forward")
    strategy = strategy or ("expand" if adapter.batch_expand_safe else "vmap")
    seq = sequence[None].to(adapter.device)

    def forward() -> torch.Tensor:
        if positions is None:
            return adapter.forward(inputs, seq)
        return adapter.forward_at(inputs, seq, positions)

    if strategy == "expand":
        return _expanded(forward, layers, score_fn, chunk_size, blocks, grids, n_targets, adapter)
    if strategy != "vmap":
        raise ValueError(f"unknown gradient strategy {strategy!r}; choose expand or vmap")
    with torch.enable_grad(), ActivationRecorder(blocks, layers, adapter.unwrap) as rec:
        scores = score_fn(forward()[0])
        keys, wrt = _hooked(rec, layers, grids)
        grads = batched_vjp(scores, wrt, chunk_size=chunk_size)
    by_key = {key: (h.detach(), g) for key, h, g in zip(keys, wrt, grads)}
    return _cut_all(layers, grids, by_key, scores)


def _expanded(forward, layers, score_fn, chunk_size, blocks, grids, k, adapter) -> GridGradients:
    if k is None:
        with torch.no_grad():
            k = int(score_fn(forward()[0]).shape[0])
    chunk_size = max(1, int(chunk_size))
    parts: dict[tuple[int, int], list[torch.Tensor]] = {}
    hidden_of: dict[tuple[int, int], torch.Tensor] = {}
    scores_all = []
    progress.expect("backward", -(-k // chunk_size))
    for start in range(0, k, chunk_size):
        n = min(chunk_size, k - start)
        with torch.enable_grad(), ActivationRecorder(blocks, layers, adapter.unwrap, expand=n) as rec:
            logits = forward()
            if logits.shape[0] != n:
                raise ExtractionError(
                    f"{adapter.family} adapter: expanding the hooked hidden state to {n} copies gave logits of "
                    f"batch {logits.shape[0]}; set batch_expand_safe = False for this adapter"
                )
            # copy j carries target start + j: its score depends on nothing in the other copies
            scores = torch.stack([score_fn(logits[j])[start + j] for j in range(n)])
            keys, wrt = _hooked(rec, layers, grids)
            grads = torch.autograd.grad(scores.sum(), wrt, allow_unused=True)
        for key, h, g in zip(keys, wrt, grads):
            parts.setdefault(key, []).append(torch.zeros_like(h) if g is None else g[:, None])
            hidden_of.setdefault(key, h[:1].detach())
        scores_all.append(scores.detach())
        progress.advance("backward")
    by_key = {key: (hidden_of[key], torch.cat(parts[key])) for key in parts}
    return _cut_all(layers, grids, by_key, torch.cat(scores_all))


def _cut_all(layers, grids, by_key, scores) -> GridGradients:
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
    return GridGradients(list(layers), list(grids), acts_out, grads_out, scores.detach())
