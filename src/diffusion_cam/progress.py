"""Progress bars over the long loops of one explanation: denoising steps and batched backwards.

The loops sit deep in the generation and gradient code, which knows nothing
of a terminal; they report to the bars of the :func:`reporting` block around
them (a context variable), and do nothing outside one.
"""

from __future__ import annotations

import shutil
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

_ACTIVE: ContextVar["Progress | None"] = ContextVar("diffusion_cam_progress", default=None)


def bar(iterable=None, **options):
    """A tqdm bar on stderr sized from the terminal: a terminal that reports 0 x 0 (a bare pseudo-terminal) gets
    the 80 x 20 fallback, where tqdm's own sizing would write the counts without a bar."""
    from tqdm import tqdm

    size = shutil.get_terminal_size((80, 20))
    return tqdm(iterable, file=sys.stderr, ncols=size.columns, nrows=size.lines, **options)


class Progress:
    """One tqdm bar per stage (``denoising``, ``backward``), opened when the stage first expects work."""

    def __init__(self) -> None:
        self.bars: dict = {}

    def expect(self, stage: str, n: int) -> None:
        opened = self.bars.get(stage)
        if opened is None:
            unit = "step" if stage == "denoising" else "chunk"
            self.bars[stage] = bar(total=n, desc=stage, unit=unit, leave=False, position=len(self.bars),
                                   mininterval=0.2)
        else:
            opened.total += n  # the trajectory replays one forward per step: its chunks add up
            opened.refresh()

    def advance(self, stage: str, n: int = 1) -> None:
        opened = self.bars.get(stage)
        if opened is not None:
            opened.update(n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


@contextmanager
def reporting(enabled: bool) -> Iterator[None]:
    """Show bars for the loops run inside the block (nothing when ``enabled`` is false)."""
    if not enabled:
        yield
        return
    progress = Progress()
    token = _ACTIVE.set(progress)
    try:
        yield
    finally:
        _ACTIVE.reset(token)
        progress.close()


def expect(stage: str, n: int) -> None:
    """``n`` more units of ``stage`` are coming (no-op outside :func:`reporting`)."""
    progress = _ACTIVE.get()
    if progress is not None:
        progress.expect(stage, n)


def advance(stage: str, n: int = 1) -> None:
    progress = _ACTIVE.get()
    if progress is not None:
        progress.advance(stage, n)
