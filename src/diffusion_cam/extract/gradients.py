"""Target scores and their gradients, many targets per backward."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from .. import progress

SCORES = ("logit", "logprob", "logodds", "contrastive", "vocab_sum")


@dataclass(frozen=True)
class Target:
    """One answer token to explain within one forward."""

    position: int  # absolute position in the sequence / logits
    token_id: int
    distractor_id: int | None = None  # used by the contrastive score


def window(items: Iterable[Target | int]) -> list[int]:
    """The positions read (targets' or plain positions), each once, in order: what to pass to
    :meth:`Adapter.forward_at`."""
    return sorted({int(t.position) if isinstance(t, Target) else int(t) for t in items})


def rows_in(window: Sequence[int], positions: Iterable[int]) -> list[int]:
    """The row of each position in logits computed at ``window``."""
    row_of = {int(p): i for i, p in enumerate(window)}
    return [row_of[int(p)] for p in positions]


def target_scores(logits: torch.Tensor, targets: Sequence[Target], score: str = "logit",
                  positions: Sequence[int] | None = None) -> torch.Tensor:
    """Scalar score of every target, shape (K,), from logits (P, V) whose row i is position
    ``positions[i]`` (:func:`window` of the targets, or every position when None)."""
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; choose one of {', '.join(SCORES)}")
    wanted = [t.position for t in targets]
    pos = torch.tensor(wanted if positions is None else rows_in(positions, wanted), device=logits.device)
    ids = torch.tensor([t.token_id for t in targets], device=logits.device)
    rows = logits[pos].float()
    if score == "vocab_sum":
        # class-agnostic: kept only to reproduce the reference implementation
        return rows.sum(-1)
    if score == "logprob":
        rows = torch.log_softmax(rows, -1)
    picked = rows.gather(1, ids[:, None])[:, 0]
    if score == "logodds":
        # log p - log(1 - p), from the logits: logprob's gradient is (1 - p) times
        # this one, which vanishes (or underflows in half precision) for a
        # confident token although the direction -- all a map uses -- is fine
        others = rows.scatter(1, ids[:, None], float("-inf"))
        return picked - torch.logsumexp(others, -1)
    if score == "contrastive":
        if any(t.distractor_id is None for t in targets):
            raise ValueError("the contrastive score needs a distractor token for every target")
        other = torch.tensor([t.distractor_id for t in targets], device=logits.device)
        picked = picked - rows.gather(1, other[:, None])[:, 0]
    return picked


_vmap_failed = False


def batched_vjp(scores: torch.Tensor, inputs: Sequence[torch.Tensor], chunk_size: int = 16) -> list[torch.Tensor]:
    """Gradients of each of the K scores w.r.t. each input: a list of (K, *input.shape).

    One vector-Jacobian product per chunk of targets (``is_grads_batched``),
    so K targets cost about one backward instead of K; ``chunk_size`` bounds
    the memory of the batched backward.  Models whose backward cannot be
    vmapped fall back to one backward per target (same numbers, slower).
    """
    global _vmap_failed
    k = scores.shape[0]
    chunk_size = max(1, int(chunk_size))
    eye = torch.eye(k, dtype=scores.dtype, device=scores.device)
    parts: list[list[torch.Tensor]] = [[] for _ in inputs]
    progress.expect("backward", -(-k // chunk_size))
    for start in range(0, k, chunk_size):
        rows = eye[start : start + chunk_size]
        grads = None
        if not _vmap_failed and rows.shape[0] > 1:
            try:
                grads = torch.autograd.grad(
                    scores, list(inputs), grad_outputs=rows, is_grads_batched=True,
                    retain_graph=True, allow_unused=True,
                )
            except (RuntimeError, NotImplementedError) as err:
                _vmap_failed = True
                warnings.warn(f"batched backward unavailable for this model ({err}); using one backward per token")
        if grads is None:
            per_row = [
                torch.autograd.grad(scores, list(inputs), grad_outputs=row, retain_graph=True, allow_unused=True)
                for row in rows
            ]
            grads = [
                torch.stack([g if g is not None else torch.zeros_like(x) for g in column])
                for column, x in zip(zip(*per_row), inputs)
            ]
        for i, (g, x) in enumerate(zip(grads, inputs)):
            parts[i].append(g if g is not None else torch.zeros((rows.shape[0], *x.shape), dtype=x.dtype, device=x.device))
        progress.advance("backward")
    return [torch.cat(p) for p in parts]
