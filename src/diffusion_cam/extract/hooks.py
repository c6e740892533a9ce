"""Forward hooks that capture block outputs, always removed on exit."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import ExtractionError


class ActivationRecorder:
    """Record the hidden-state output of selected blocks during forwards.

    Use as a context manager: hooks are registered on entry and removed on exit,
    also when the body raises.  A block that is called several times in one
    forward (a Prefix-DLM prefix pass then an answer pass) records one tensor
    per call, in call order.
    """

    def __init__(self, blocks: Sequence[nn.Module], layers: Sequence[int], unwrap: Callable[[Any], torch.Tensor],
                 expand: int | None = None):
        self._blocks = blocks
        self.layers = list(layers)
        self._unwrap = unwrap
        # ``expand=K``: the earliest hooked block's output is repeated K times along the
        # batch, so the rest of the model runs K identical copies whose gradients are
        # independent — K per-target backward passes in one ordinary batched backward.
        self._expand = expand
        self._first = min(self.layers) if expand else None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.outputs: dict[int, list[torch.Tensor]] = {}

    def __enter__(self) -> "ActivationRecorder":
        self.outputs = {layer: [] for layer in self.layers}
        try:
            for layer in self.layers:
                self._handles.append(self._blocks[layer].register_forward_hook(self._make_hook(layer)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _make_hook(self, layer: int):
        def hook(_module: nn.Module, _args: Any, output: Any) -> Any:
            hidden = self._unwrap(output)
            if not isinstance(hidden, torch.Tensor):
                raise ExtractionError(f"block {layer} returned {type(hidden).__name__}, not a tensor")
            if layer == self._first and hidden.shape[0] == 1:
                hidden = hidden.expand(self._expand, *hidden.shape[1:])
                self.outputs[layer].append(hidden)
                if isinstance(output, tuple):
                    return (hidden, *output[1:])
                if isinstance(output, list):
                    return [hidden, *output[1:]]
                return hidden
            self.outputs[layer].append(hidden)
            return None

        return hook

    def get(self, layer: int, call: int = 0) -> torch.Tensor:
        calls = self.outputs.get(layer, [])
        if call >= len(calls):
            raise ExtractionError(
                f"block {layer} was called {len(calls)} time(s) in the forward; the adapter asked for call {call}"
            )
        return calls[call]


def count_hooks(module: nn.Module) -> int:
    """Number of forward/backward hooks registered anywhere in ``module`` (leak checks)."""
    total = 0
    for m in module.modules():
        total += len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        total += len(getattr(m, "_backward_pre_hooks", {}))
    return total
