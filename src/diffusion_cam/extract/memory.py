"""How many targets one batched backward can take without running out of memory.

:func:`~diffusion_cam.extract.batched_vjp` differentiates K target scores in
one vmapped backward, so every gradient buffer of that backward gets a
leading K axis.  Per target it holds, roughly:

* the gradient of the logits: ``P x V`` in float32, plus its cast back to the
  weights' dtype when they are not float32 (the scores read float32 logits),
  where P is the number of answer positions the forward scores: the output
  head projects only those rows (:meth:`Adapter.forward_at`); an adapter
  without an ``output_head`` projects all ``L`` and pays ``L x V``;
* the gradients of the hidden states on the way down: ``L x D`` per block in
  float32, counted for every block (a conservative bound: autograd frees
  most of them layer by layer, but the hooked layers' gradients are kept).

The forward's saved activations are shared by all targets; about
``16 x L x D`` values per block in the weights' dtype (attention inputs,
projections, MLP intermediates) stay alive for the backward.

Worked example, an 8 B LLaDA-type model (32 blocks, D = 4096,
V = 126 464, bf16 weights, about 16 GB) with L = 2000 (LLaDA-V's ~1300 image
tokens plus prompt and a 64-token answer, all 64 scored in one forward, P = 64)
on an 80 GB GPU::

    per target  = P*V*(4+2)      = 64*126464*6     = 0.05 GB   (logits)
                + L*D*4*32       = 2000*4096*4*32  = 1.05 GB   (hidden grads)
                                                   = 1.10 GB
    forward     = 16*L*D*2*32    = 16*2000*4096*2*32 = 8.4 GB
    free before the forward ~ 80 - 16 - 1 (CUDA context) = 63 GB
    chunk       = (0.9*63 - 8.4) / 1.10 = 44 targets

so 64 answer tokens take 2 batched backwards.  At L = 1000 all 64 fit in
one; at L = 3000 the chunk is 27 (3 backwards).  Projecting every row
instead (P = L) would cost 1.52 GB more per target and cut the chunk at
L = 2000 to 18.  The estimate errs on the safe side; pass ``budget_bytes``
to override the free-memory reading.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..adapters.base import Adapter, ModelInputs

#: activations the forward keeps per block, in hidden-state sizes
FORWARD_FACTOR = 16
#: fraction of the free memory the estimate lets itself use
SAFETY = 0.9


def _config_value(model: Any, *names: str) -> int | None:
    configs = [getattr(model, "config", None)]
    if configs[0] is not None and hasattr(configs[0], "get_text_config"):
        configs.insert(0, configs[0].get_text_config())
    for config in configs:
        for name in names:
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
    return None


def model_sizes(adapter: Adapter) -> tuple[int, int, int, torch.dtype]:
    """(hidden size D, vocabulary V, number of blocks, weights' dtype) of an adapter's model."""
    model = adapter.model
    hidden = _config_value(model, "hidden_size", "d_model", "n_embd")
    vocab = _config_value(model, "vocab_size", "embedding_size")
    if hidden is None or vocab is None:
        # no config: the largest 2-D weight is the embedding or the output head (V x D)
        mats = [p for p in model.parameters() if p.dim() == 2]
        biggest = max(mats, key=lambda p: p.numel())
        vocab = vocab or int(max(biggest.shape))
        hidden = hidden or int(min(biggest.shape))
    dtype = next(model.parameters()).dtype
    return hidden, vocab, len(adapter.blocks()), dtype


def free_bytes(device: torch.device) -> int:
    """Free memory on ``device``: CUDA's own reading, else the host's available memory."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def bytes_per_target(length: int, hidden: int, vocab: int, blocks: int, dtype: torch.dtype,
                     rows: int | None = None) -> int:
    """``rows``: logit rows the forward projects (every position when None)."""
    extra = 0 if dtype == torch.float32 else torch.finfo(dtype).bits // 8
    rows = length if rows is None else rows
    return rows * vocab * (4 + extra) + length * hidden * 4 * blocks


def forward_bytes(length: int, hidden: int, blocks: int, dtype: torch.dtype) -> int:
    return FORWARD_FACTOR * length * hidden * (torch.finfo(dtype).bits // 8) * blocks


def auto_chunk_size(adapter: Adapter, inputs: ModelInputs, n_targets: int, budget_bytes: int | None = None,
                    rows: int | None = None) -> int:
    """Targets per batched backward that fit in ``budget_bytes`` (default: the device's free memory).

    ``rows``: the positions the forward scores (default ``n_targets``); an
    adapter without an ``output_head`` projects every position whatever is asked.
    Always between 1 and ``n_targets``; see the module docstring for the arithmetic.
    """
    n_targets = max(1, int(n_targets))
    hidden, vocab, blocks, dtype = model_sizes(adapter)
    length = int(inputs.input_ids.shape[-1])
    if budget_bytes is None:
        budget = SAFETY * free_bytes(adapter.device) - forward_bytes(length, hidden, blocks, dtype)
    else:
        budget = float(budget_bytes)
    # without an output head to narrow, count every row (adapters whose own forward_at narrows
    # some other way are estimated on the safe side)
    narrowed = adapter.output_head() is not None
    per = bytes_per_target(length, hidden, vocab, blocks, dtype, (rows or n_targets) if narrowed else None)
    return int(min(n_targets, max(1, budget // per)))
