"""Vocabulary logits at a few positions only.

A dMLLM's output head turns every position of the sequence into a row of
vocabulary logits: (L, V), about 1.5 GB in float32 for LLaDA-V's ~3,000
positions and 126k words.  An explanation needs the rows of a few answer
positions, and a batched backward over K targets keeps the gradient of the
logits once per target.  :func:`head_rows` cuts the head's input to the rows
asked for, so the projection, the logits and their gradients shrink from L rows
to P.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn


class RowCut:
    """What :func:`head_rows` did: ``cut`` counts the head calls it narrowed."""

    def __init__(self, rows: Sequence[int]):
        self.rows = [int(r) for r in rows]
        self.cut = 0

    def pick(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, P, V) logits at the rows: as they are when the head was narrowed, else indexed."""
        if self.cut:
            return logits
        return logits[:, torch.tensor(self.rows, dtype=torch.long, device=logits.device)]


@contextmanager
def head_rows(head: nn.Module | None, length: int, rows: Sequence[int]) -> Iterator[RowCut]:
    """While active, a call of ``head`` on a (B, ``length``, D) float input sees only ``rows``.

    Any other call passes through unchanged (a tied input embedding looking up
    ids, a prompt pass of another length); when the head never ran on such an
    input (weights tied through ``F.linear``, no head given) the model returns
    every row and :meth:`RowCut.pick` indexes them.  The hook is always removed.
    """
    state = RowCut(rows)
    if head is None:
        yield state
        return
    index = torch.tensor(state.rows, dtype=torch.long)

    def narrow(_module: nn.Module, args: tuple):
        x = args[0] if args else None
        if not (isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() >= 2 and x.shape[-2] == length):
            return None
        state.cut += 1
        return (x.index_select(-2, index.to(x.device)), *args[1:])

    handle = head.register_forward_pre_hook(narrow)
    try:
        yield state
    finally:
        handle.remove()
