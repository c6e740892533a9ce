"""LLaDA masked-diffusion sampling with a recorded trajectory.

The sampler is written once over the adapter protocol.  It records, for every
denoising step, the exact sequence fed to the model and the answer positions
committed at that step, so that the ``trajectory`` state can replay any step
with gradients enabled and get the same logits generation saw.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import progress
from .errors import DiffusionCamError, GenerationError

if TYPE_CHECKING:  # annotations only: the adapters call this sampler, it does not need them loaded
    from .adapters.base import Adapter, GenerationConfig, ModelInputs


@dataclass
class TrajectoryStep:
    """One denoising step: its input sequence and what it committed."""

    index: int
    sequence: torch.Tensor  # (L,) the forward's input, masks included
    committed: list[int]  # answer-relative positions committed at this step
    committed_ids: list[int]
    #: the model's probability of each committed id when it was committed (its confidence in it)
    probabilities: list[float] = field(default_factory=list)


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


REMASKING = ("low_confidence", "margin", "entropy", "random")
SCHEDULES = ("linear", "timestep", "shift", "cosine", "logit_normal")
_TIMESTEP_EPS = 1e-3  # Dream / Dimple: the masked share runs from 1 down to eps


def _split_evenly(n: int, parts: int) -> list[int]:
    base, extra = divmod(n, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def timestep_count(n_masked: int, n_total: int, step: int, steps: int) -> int:
    """Tokens to commit at ``step`` under the Dream / Dimple timestep schedule.

    The grid is ``linspace(1, eps, steps + 1)``.  With ``t`` the share of the
    canvas still masked, take the first grid point ``s`` below ``t`` (and not
    before ``step + 1``) at which ``int(n_masked * (1 - s / t)) >= 1``; at the
    grid's end everything left is committed.  The count follows the share
    actually left, so it stays right after a confident step committed more
    than the schedule asked.
    """
    if n_masked <= 0:
        return 0
    grid = np.linspace(1.0, _TIMESTEP_EPS, steps + 1)
    t = n_masked / n_total
    below = np.nonzero(grid < t)[0]
    start = max(int(below.min()) if below.size else steps, step + 1)
    for index in range(start, steps + 1):
        if index == steps:
            return n_masked
        count = int(n_masked * (1 - grid[index] / t))
        if count >= 1:
            return count
    return n_masked


def _committed_share(schedule: str, t: torch.Tensor, shift: float) -> torch.Tensor:
    """LaViDa's curves from time ``t`` in [0, 1] to the share of the block committed."""
    if schedule == "shift":
        return shift * t / (1 + (shift - 1) * t)
    if schedule == "cosine":
        return 1 - 0.5 * (1 + torch.cos(torch.pi * t))
    # logit_normal: the standard normal CDF of logit(t); t = 0 and 1 map to 0 and 1
    return 0.5 * (1 + torch.erf(torch.log(t / (1 - t)) / np.sqrt(2.0)))


def curve_counts(n_masked: int, steps: int, schedule: str, shift: float = 3.0) -> list[int]:
    """Per-step token counts of LaViDa's ``shift`` / ``cosine`` / ``logit_normal`` schedules.

    With ``s = min(steps, n_masked)`` steps on the grid ``t = i / s`` (float32,
    as LaViDa computes it), step ``i`` gets ``int(n * share(t_{i+1})) -
    int(n * share(t_i))`` tokens, at least one.  The floor can overshoot
    ``n``; the excess is taken back one token at a time, cycling from the
    first step over the steps that have more than one.  The list is then
    reversed: the curve's last (largest for ``shift``) increments come first
    in LaViDa's order, its first ones last.
    """
    if n_masked <= 0:
        return []
    s = min(steps, n_masked)
    share = _committed_share(schedule, torch.linspace(0, 1, s + 1), shift)
    cumulative = (share * n_masked).to(torch.int64).tolist()
    counts = [max(b - a, 1) for a, b in zip(cumulative[:-1], cumulative[1:])]
    excess, j = sum(counts) - n_masked, 0
    while excess > 0:
        if counts[j % s] > 1:
            counts[j % s] -= 1
            excess -= 1
        j += 1
    return counts[::-1]


def _confidence(logits: torch.Tensor, pred: torch.Tensor, remasking: str, generator) -> torch.Tensor:
    """Per-position confidence (float64) of the predicted tokens; higher commits first."""
    if remasking == "random":
        return torch.rand(logits.shape[0], generator=generator, dtype=torch.float64).to(logits.device)
    probs = torch.softmax(logits, -1)
    if remasking == "low_confidence":
        conf = probs.gather(-1, pred[:, None])[:, 0]
    elif remasking == "margin":
        top = probs.topk(2, dim=-1).values
        conf = top[:, 0] - top[:, 1]
    else:  # entropy: a peaked distribution is a confident one
        conf = (probs * torch.log(probs.clamp_min(1e-30))).sum(-1)
    return conf.double()


@torch.no_grad()
def llada_generate(adapter: Adapter, inputs: ModelInputs, config: GenerationConfig) -> GenerationResult:
    """Block-wise remasking (LLaDA), greedy unless ``temperature > 0``.

    Each forward commits the masked positions of the current block with the
    highest confidence: ``linear`` splits a block's masks evenly over its
    steps (LLaDA), ``timestep`` follows the Dream / Dimple schedule, and a
    ``threshold`` commits every position above it (Dimple's confident
    decoding) whenever one is.  Confident steps can end a block early; the
    last step of a block commits whatever is left.  With ``stop_early``
    (LLaDA-V), once a stop token is committed only the masked positions
    before it are filled, and generation ends when none is left; positions
    after the stop stay masked.
    """
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
    if cfg.remasking not in REMASKING:
        raise GenerationError(f"unknown remasking {cfg.remasking!r}; choose one of {', '.join(REMASKING)}")
    if cfg.schedule not in SCHEDULES:
        raise GenerationError(f"unknown schedule {cfg.schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if cfg.threshold is not None:
        if cfg.remasking not in ("low_confidence", "margin"):
            raise GenerationError(f"a confidence threshold needs a probability confidence (low_confidence or margin), "
                                  f"not {cfg.remasking!r}")
        if not 0 <= cfg.threshold < 1:
            raise GenerationError(f"threshold {cfg.threshold} must lie in [0, 1)")
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
    stops = sorted(adapter.stop_token_ids) if cfg.stop_early else []
    stop = None  # with stop_early: absolute position of the earliest committed stop token
    progress.expect("denoising", steps)
    for b in range(n_blocks):
        if stop is not None:
            break  # every position before the stop is committed
        lo, hi = a0 + b * block_len, a0 + (b + 1) * block_len
        n_block = int((x[lo:hi] == mask_id).sum())
        if cfg.schedule == "linear":
            planned = _split_evenly(n_block, steps_per_block)
        elif cfg.schedule == "timestep":
            planned = []  # counted at each step from the share still masked
        else:
            planned = curve_counts(n_block, steps_per_block, cfg.schedule, cfg.schedule_shift)
        for step in range(steps_per_block):
            # once a stop token is committed only the positions before it are filled (LLaDA-V)
            open_lo, open_hi = (a0, stop) if stop is not None else (lo, hi)
            n_left = int((x[open_lo:open_hi] == mask_id).sum())
            if n_left == 0:
                break  # confident steps can finish a block early
            if cfg.schedule == "timestep":
                k = timestep_count(n_left, n_block, step, steps_per_block)
            else:
                k = min(planned[step] if step < len(planned) else n_left, n_left)
            if step == steps_per_block - 1:
                k = n_left
            before = x.clone()
            progress.advance("denoising")
            # only the open positions can be committed: a real model's (L, vocab) logits are
            # gigabytes in float32, so the forward projects and everything below reads that window only
            logits = adapter.forward_at(inputs, x[None], range(open_lo, open_hi))[0].float()
            is_masked = x[open_lo:open_hi] == mask_id
            if cfg.suppress_token_ids:
                logits[is_masked.nonzero()[:, 0][:, None], list(cfg.suppress_token_ids)] = -np.inf
            if cfg.temperature > 0:
                # Gumbel-max in float64, as LLaDA does, from a seeded generator
                u = torch.rand(logits.shape, generator=generator, dtype=torch.float64).to(device)
                gumbel = logits.double().exp() / (-torch.log(u)) ** cfg.temperature
                pred = gumbel.argmax(-1)
            else:
                pred = logits.argmax(-1)
            conf = _confidence(logits, pred, cfg.remasking, generator)
            conf = torch.where(is_masked, conf, torch.full_like(conf, -np.inf))
            if cfg.threshold is not None and k < n_left:
                # confident decoding: everything above the threshold, else the scheduled count
                sure = int((conf > cfg.threshold).sum())
                if sure:
                    k = sure
            if k == 0:
                # only after confident steps committed fewer than the linear split asked
                k = 1
            # stable sort: ties commit the leftmost position, so runs are reproducible
            order = torch.sort(conf, descending=True, stable=True).indices[:k]
            x[open_lo + order] = pred[order]
            positions = sorted(int(p) + open_lo - a0 for p in order)
            for p in positions:
                commit_step[p] = len(record)
            if stops:
                found = torch.isin(x[a0 : a0 + gen_len], torch.tensor(stops, device=x.device)).nonzero()
                if len(found):
                    stop = a0 + int(found[0])
            rows = torch.tensor([p + a0 - open_lo for p in positions], device=logits.device)
            chosen = x[open_lo + rows]
            probabilities = torch.softmax(logits[rows], -1).gather(1, chosen[:, None])[:, 0]
            record.append(
                TrajectoryStep(
                    index=len(record),
                    sequence=before.cpu(),
                    committed=positions,
                    committed_ids=[int(x[a0 + p]) for p in positions],
                    probabilities=[float(q) for q in probabilities],
                )
            )
    answer = [int(t) for t in x[a0 : a0 + gen_len].tolist()]
    return GenerationResult(sequence=x.cpu(), answer_ids=answer, steps=record, config=cfg, commit_step=commit_step)
