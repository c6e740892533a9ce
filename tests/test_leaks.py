"""No leaks: repeated ``explain`` calls leave no hooks, no gradients, no growing memory.

The 100-call figure on the built-in model is ``benchmarks/bench_leaks.py``;
this test runs 30 calls on the tiny model with a generous bound.
"""

from __future__ import annotations

import gc
import os

import pytest
import torch

import diffusion_cam as dc
from diffusion_cam.extract import count_hooks
from diffusion_cam.testing import TinyAdapter, random_image, tiny_adapter

PROMPT = "describe the image"
CALLS = 30
#: RSS may wobble by allocator pools; a real leak (graphs, activations kept per call) grows by MiBs per call
RSS_BOUND_MIB = 24.0


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def live_tensors() -> int:
    # type() rather than isinstance: isinstance on every gc object trips lazy module attributes
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="RSS is read from /proc (Linux)")
def test_repeated_explain_leaks_nothing():
    grad_mode = torch.is_grad_enabled()
    adapter = tiny_adapter(seed=0)
    method = dc.DiffusionCAM(adapter)
    images = [random_image(s) for s in range(3)]
    method.explain(images[0], PROMPT, targets=[0])  # warm-up: lazy imports and allocator pools
    method.explain(images[1], PROMPT)
    gc.collect()
    tensors0, rss0 = live_tensors(), rss_mib()
    for i in range(CALLS):
        exp = method.explain(images[i % 3], PROMPT)
        assert count_hooks(adapter.model) == 0
        assert all(p.grad is None for p in adapter.model.parameters())
        del exp
    gc.collect()
    growth = rss_mib() - rss0
    assert growth < RSS_BOUND_MIB, f"RSS grew by {growth:.1f} MiB over {CALLS} explain calls"
    assert live_tensors() <= tensors0 + 8  # no per-call tensors (graphs, activations) kept alive
    assert torch.is_grad_enabled() == grad_mode  # gradient mode restored


class FailingBackwardAdapter(TinyAdapter):
    """Generation works, but the gradient forward fails after the hooks are registered."""

    def forward(self, inputs, sequence):
        if torch.is_grad_enabled():
            raise RuntimeError("simulated failure inside the hooked forward")
        return super().forward(inputs, sequence)


def test_hooks_are_removed_when_extraction_fails(image):
    adapter = FailingBackwardAdapter()
    method = dc.DiffusionCAM(adapter)
    for _ in range(3):
        with pytest.raises(RuntimeError, match="simulated failure"):
            method.explain(image, PROMPT)
        assert count_hooks(adapter.model) == 0
