"""LLaDA masked-diffusion sampling with a recorded trajectory.

The sampler is written once over the adapter protocol.  It records, for every
denoising step, the exact sequence fed to the model and the answer positions
committed at that step, so that the ``trajectory`` state can replay any step
with gradients enabled and get the same logits generation saw.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .adapters.base import Adapter, GenerationConfig, ModelInputs
from .errors import DiffusionCamError, GenerationError


@dataclass
class TrajectoryStep:
    """One denoising step: its input sequence and what it committed."""

    index: int
    sequence: torch.Tensor  # (L,) the forward's input, masks included
    committed: list[int]  # answer-relative positions committed at this step
    committed_ids: list[int]


@dataclass
class GenerationResult:
    """Generated answer ids plus the denoising trajectory that produced them."""

    sequence: torch.Tensor  # (L,) final sequence
    answer_ids: list[int]  # the whole canvas (gen_length ids)
    steps: list[TrajectoryStep]
    config: GenerationConfig
    commit_step: list[int] = field(default_factory=list)  # per canvas position

    def step_of(self, position: int) -> TrajectoryStep:
        return self.steps[self.commit_step[position]]


def _split_evenly(n: int, parts: int) -> list[int]:
    base, extra = divmod(n, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


@torch.no_grad()
def llada_generate(adapter: Adapter, inputs: ModelInputs, config: GenerationConfig) -> GenerationResult:
    """Block-wise low-confidence remasking (LLaDA), greedy unless ``temperature > 0``."""
    cfg = config.resolved()
    mask_id = adapter.mask_token_id
    if mask_id is None:
        raise DiffusionCamError(f"{adapter.family} has no mask token: its adapter must provide generate()")
    gen_len, block_len, steps = cfg.gen_length, cfg.block_length, cfg.steps
    if gen_len <= 0:
        raise GenerationError(f"generation length must be positive, got {gen_len}")
    if gen_len != inputs.gen_length:
        raise GenerationError(f"generation length {gen_len} differs from the prepared canvas ({inputs.gen_length})")
    if block_len <= 0 or gen_len % block_len:
        raise GenerationError(f"block_length {block_len} must divide gen_length {gen_len}")
    n_blocks = gen_len // block_len
    if steps <= 0 or steps % n_blocks:
        raise GenerationError(f"steps {steps} must be a positive multiple of the number of blocks ({n_blocks})")
    if cfg.remasking not in ("low_confidence", "random"):
        raise GenerationError(f"unknown remasking {cfg.remasking!r}; choose low_confidence or random")
    steps_per_block = steps // n_blocks
    generator = None
    if cfg.temperature > 0 or cfg.remasking == "random":
        if cfg.seed is None:
            raise GenerationError(
                f"sampling (temperature {cfg.temperature} > 0 or random remasking) needs an explicit seed; "
                "pass seed=N (CLI: --seed N) or use temperature 0 for greedy decoding"
            )
        generator = torch.Generator(device="cpu").manual_seed(cfg.seed)

    device = adapter.device
    x = inputs.input_ids.clone().to(device)
    a0 = inputs.answer_start
    record: list[TrajectoryStep] = []
    commit_step = [-1] * gen_len
    for b in range(n_blocks):
        lo, hi = a0 + b * block_len, a0 + (b + 1) * block_len
        n_masked = int((x[lo:hi] == mask_id).sum())
        for k in _split_evenly(n_masked, steps_per_block):
            if k == 0:
                continue
            before = x.clone()
            logits = adapter.forward(inputs, x[None])[0].float()
            if cfg.temperature > 0:
                # Gumbel-max in float64, as LLaDA does, from a seeded generator
                u = torch.rand(logits.shape, generator=generator, dtype=torch.float64).to(device)
                gumbel = logits.double().exp() / (-torch.log(u)) ** cfg.temperature
                pred = gumbel.argmax(-1)
            else:
                pred = logits.argmax(-1)
            if cfg.remasking == "low_confidence":
                conf = torch.softmax(logits, -1).gather(-1, pred[:, None])[:, 0].double()
            else:
                conf = torch.rand(logits.shape[0], generator=generator, dtype=torch.float64).to(device)
            is_masked = x == mask_id
            conf[: lo] = -np.inf
            conf[hi:] = -np.inf
            conf = torch.where(is_masked, conf, torch.full_like(conf, -np.inf))
            # stable sort: ties commit the leftmost position, so runs are reproducible
            order = torch.sort(conf, descending=True, stable=True).indices[:k]
            x[order] = pred[order]
            positions = sorted(int(p) - a0 for p in order)
            for p in positions:
                commit_step[p] = len(record)
            record.append(
                TrajectoryStep(
                    index=len(record),
                    sequence=before.cpu(),
                    committed=positions,
                    committed_ids=[int(x[a0 + p]) for p in positions],
                )
            )
    answer = [int(t) for t in x[a0 : a0 + gen_len].tolist()]
    return GenerationResult(sequence=x.cpu(), answer_ids=answer, steps=record, config=cfg, commit_step=commit_step)
