"""Train the built-in shapes-world model (LLaDA-style masked-diffusion SFT).

    python -m diffusion_cam.models.shapes_tiny.train --out DIR [--steps N --batch-size B --seed S --threads T]

Objective (LLaDA SFT): for each (image, prompt, answer) sequence draw
``t ~ U(eps, 1)``, replace every answer-canvas position by ``<mask>`` with
probability ``t`` and minimise the cross-entropy on the masked positions,
weighted by ``1/t`` and normalised by the canvas length. The prompt and the
image are never masked.

Variance reduction and speed-ups (none changes what the loss estimates):

* every image in a batch is paired with several prompts (by default the
  caption twice plus one colour, one shape and one count question); the
  vision encoder runs once per image and its tokens are shared;
* the ``t`` values of a batch are stratified over ``(eps, 1)`` and the two
  caption copies of an image use antithetic values ``t`` and ``1 + eps - t``;
* a dense auxiliary loss on the vision-encoder output: each 8 x 8 patch
  classifies the colour, shape and left-to-right rank of the object covering
  it (background otherwise, ambiguous boundary patches ignored). It trains the
  encoder quickly and keeps patch features spatially faithful, which is what
  Grad-CAM-style maps read; its weight decays from ``aux_weight`` to
  ``aux_weight_final`` over the run;
* a pool of scenes is drawn once up front (seeded) and horizontally mirrored
  at random: every shape in the contract is left-right symmetric, so a mirror
  is a valid scene whose caption lists the objects in reverse order.

Seeds: training scenes come from ``numpy.random.default_rng([seed, 0])`` (the
pool) and per-step randomness from ``default_rng([seed, 1, step])``, so a run
is reproducible and a killed run resumes exactly from its last checkpoint.
The periodic and final evaluation use ``EVAL_SEED`` scenes, never seen in
training; ``benchmarks/shapes_accuracy.py`` uses yet another seed.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...datasets import shapes as sw
from .model import ShapesTinyConfig, ShapesTinyModel, load_pretrained, save_pretrained
from .tokenizer import ShapesTokenizer

__all__ = ["train", "greedy_generate", "evaluate", "ScenePool", "EVAL_SEED", "main"]

EVAL_SEED = 7_000_003
_EPS = 1e-3
_CKPT = "checkpoint"
_FINAL = "final"


# --------------------------------------------------------------------------- data

@dataclass
class ScenePool:
    """Scenes stored as arrays: images, objects (left to right) and patch targets."""

    images: np.ndarray  # (N, 96, 96, 3) uint8
    n_obj: np.ndarray  # (N,)
    colour: np.ndarray  # (N, 3) colour index, -1 if absent
    shape: np.ndarray  # (N, 3) shape index, -1 if absent
    patch_obj: np.ndarray  # (N, grid*grid) int8: 0 bg, k object k (left to right), -1 ambiguous

    def __len__(self) -> int:
        return len(self.images)

    @classmethod
    def from_scenes(cls, scenes: Sequence[sw.Scene], grid: int = 12) -> "ScenePool":
        n = len(scenes)
        images = np.stack([s.image for s in scenes])
        n_obj = np.array([s.n_objects for s in scenes], dtype=np.int64)
        colour = np.full((n, 3), -1, dtype=np.int64)
        shape = np.full((n, 3), -1, dtype=np.int64)
        labels = np.zeros((n, sw.CANVAS, sw.CANVAS), dtype=np.uint8)
        for i, s in enumerate(scenes):
            for k, o in enumerate(s.objects):
                colour[i, k] = sw.COLOURS.index(o.colour)
                shape[i, k] = sw.SHAPES.index(o.shape)
                labels[i][o.mask] = k + 1
        return cls(images, n_obj, colour, shape, patch_targets(labels, grid))

    @classmethod
    def generate(cls, seed: int | Sequence[int], count: int, grid: int = 12) -> "ScenePool":
        rng = np.random.default_rng(seed)
        return cls.from_scenes([sw.generate_scene(rng) for _ in range(count)], grid)


def patch_targets(labels: np.ndarray, grid: int = 12) -> np.ndarray:
    """Per-patch object id from label images: majority object, 0 background, -1 ambiguous."""
    n, h, w = labels.shape
    p = h // grid
    blocks = labels.reshape(n, grid, p, grid, p)
    cover = np.stack([(blocks == k).sum(axis=(2, 4)) for k in range(1, 4)], axis=-1)  # (n, g, g, 3)
    best = cover.argmax(-1)
    frac = cover.max(-1) / float(p * p)
    out = np.where(frac >= 0.375, best + 1, 0)
    out = np.where((frac > 0.0625) & (frac < 0.375), -1, out)
    return out.reshape(n, grid * grid).astype(np.int8)


PROMPT_KINDS = ("describe", "color", "shape", "count")
LOSS_WEIGHTINGS = ("inv_t", "masked_mean", "token_mean")
EOS_PADDING_WEIGHT = 0.1


def _canvas(tok: ShapesTokenizer, words: list[str], gen_length: int) -> list[int]:
    return tok.answer_canvas(" ".join(words), gen_length)


def build_sequences(
    tok: ShapesTokenizer,
    pool: ScenePool,
    idx: np.ndarray,
    flip: np.ndarray,
    kinds: Sequence[str],
    rng: np.random.Generator,
    gen_length: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clean sequences for images ``idx`` x prompt ``kinds``.

    Returns ``(ids (S, L), canvas_start (S,), image_row (S,), kind_id (S,))``,
    right-padded with ``<pad>``.
    """
    rows: list[list[int]] = []
    starts: list[int] = []
    img_rows: list[int] = []
    kind_ids: list[int] = []
    for r, (i, fl) in enumerate(zip(idx, flip)):
        n = int(pool.n_obj[i])
        order = list(range(n))[::-1] if fl else list(range(n))
        cols = [sw.COLOURS[pool.colour[i, k]] for k in order]
        shps = [sw.SHAPES[pool.shape[i, k]] for k in order]
        # The questions of one image ask about different objects in turn (a random order): the same
        # image then asks for contrasting answers, which is what teaches the model to find the
        # object a question names rather than name any colour of the scene.
        asked = {"color": rng.permutation(n), "shape": rng.permutation(n)}
        turn = {"color": 0, "shape": 0}
        for kind in kinds:
            if kind == "describe":
                prompt = sw.PROMPT_DESCRIBE
                words = " and ".join(f"a {c} {s}" for c, s in zip(cols, shps)).split()
            elif kind == "count":
                prompt, words = sw.PROMPT_COUNT, [sw.COUNT_WORDS[n - 1]]
            else:
                j = int(asked[kind][turn[kind] % n])
                turn[kind] += 1
                if kind == "color":
                    prompt, words = sw.colour_question(shps[j]), [cols[j]]
                else:
                    prompt, words = sw.shape_question(cols[j]), [shps[j]]
            prefix = tok.build_prefix(prompt)
            rows.append(prefix + _canvas(tok, words, gen_length))
            starts.append(len(prefix))
            img_rows.append(r)
            kind_ids.append(PROMPT_KINDS.index(kind))
    length = max(len(x) for x in rows)
    ids = torch.full((len(rows), length), tok.pad_id, dtype=torch.long)
    for s, row in enumerate(rows):
        ids[s, : len(row)] = torch.tensor(row)
    return ids, torch.tensor(starts), torch.tensor(img_rows), torch.tensor(kind_ids)


def aux_targets(pool: ScenePool, idx: np.ndarray, flip: np.ndarray, grid: int) -> torch.Tensor:
    """(B, grid*grid, 3) targets: colour (0 bg, 1..5), shape (0 bg, 1..4), rank (0 bg, 1..3); -100 ignored."""
    po = pool.patch_obj[idx].astype(np.int64).reshape(-1, grid, grid)
    po = np.where(flip[:, None, None], po[:, :, ::-1], po).reshape(len(idx), -1)
    n = pool.n_obj[idx][:, None]
    k = np.clip(po - 1, 0, 2)
    col = np.take_along_axis(pool.colour[idx], k, axis=1) + 1
    shp = np.take_along_axis(pool.shape[idx], k, axis=1) + 1
    rank = np.where(flip[:, None], n - po, po - 1) + 1
    out = np.stack([col, shp, rank], axis=-1)
    out = np.where((po > 0)[..., None], out, 0)
    out = np.where((po < 0)[..., None], -100, out)
    return torch.from_numpy(out)


def aux_loss(aux_l: list[torch.Tensor], aux_t: torch.Tensor) -> torch.Tensor:
    """Per-patch cross-entropy, object and background patches weighted half each.

    Objects cover ~13 % of the patches; an unweighted mean lets the easy
    background dominate and shape learning crawls.
    """
    obj = (aux_t[..., 0] > 0).float()
    bg = (aux_t[..., 0] == 0).float()
    total = aux_l[0].new_zeros(())
    for j, a in enumerate(aux_l):
        ce = F.cross_entropy(a.reshape(-1, a.shape[-1]), aux_t[..., j].reshape(-1), ignore_index=-100, reduction="none")
        ce = ce.view(obj.shape)
        total = total + 0.5 * (ce * obj).sum() / obj.sum().clamp(min=1) + 0.5 * (ce * bg).sum() / bg.sum().clamp(min=1)
    return total / len(aux_l)


def _batch_images(model: ShapesTinyModel, pool: ScenePool, idx: np.ndarray, flip: np.ndarray) -> torch.Tensor:
    imgs = torch.from_numpy(pool.images[idx])
    imgs = torch.where(torch.from_numpy(flip)[:, None, None, None], imgs.flip(2), imgs)
    return model.preprocess(imgs)


# --------------------------------------------------------------------------- sampling / eval

@torch.no_grad()
def greedy_generate(
    model: ShapesTinyModel,
    tok: ShapesTokenizer,
    images: np.ndarray,
    prompts: Sequence[str],
    gen_length: int | None = None,
    batch_size: int = 256,
) -> list[str]:
    """LLaDA low-confidence remasking, temperature 0, one token per step, one block.

    Prompts of equal token length are batched together so that no padding is
    needed (the same sequences the library's generic sampler builds).
    """
    model.eval()
    gen_length = gen_length or model.config.gen_length
    out: list[str] = [""] * len(prompts)
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(tok.encode(p)), []).append(i)
    for members in by_len.values():
        for c0 in range(0, len(members), batch_size):
            sel = members[c0 : c0 + batch_size]
            rows = [tok.build_input_ids(prompts[i], gen_length) for i in sel]
            ids = torch.stack([r[0] for r in rows]).to(model.device)
            start = rows[0][1]
            emb = model.image_embeds(model.preprocess(images[sel]))
            for _ in range(gen_length):
                logits = model.forward_embeds(ids, emb)[:, start:].float()
                probs = logits.softmax(-1)
                conf, pred = probs.max(-1)
                masked = ids[:, start:] == tok.mask_id
                conf = conf.masked_fill(~masked, -1.0)
                pos = conf.argmax(-1)
                ar = torch.arange(len(sel), device=ids.device)
                ids[ar, start + pos] = pred[ar, pos]
            for j, i in enumerate(sel):
                out[i] = tok.decode(ids[j, start:].tolist())
    return out


def eval_items(seed: int, per_kind: int) -> tuple[np.ndarray, list[str], list[str], list[str]]:
    """``per_kind`` fresh scenes for each prompt type: images, prompts, answers, kinds."""
    rng = np.random.default_rng(seed)
    images, prompts, answers, kinds = [], [], [], []
    for kind in PROMPT_KINDS:
        for _ in range(per_kind):
            s = sw.generate_scene(rng)
            if kind == "describe":
                p = sw.PROMPT_DESCRIBE
            elif kind == "count":
                p = sw.PROMPT_COUNT
            elif kind == "color":
                p = sw.colour_question(s.objects[int(rng.integers(s.n_objects))].shape)
            else:
                p = sw.shape_question(s.objects[int(rng.integers(s.n_objects))].colour)
            images.append(s.image)
            prompts.append(p)
            answers.append(sw.answer(s, p))
            kinds.append(kind)
    return np.stack(images), prompts, answers, kinds


def evaluate(model: ShapesTinyModel, tok: ShapesTokenizer, seed: int = EVAL_SEED, per_kind: int = 500) -> dict[str, float]:
    """Exact-match accuracy per prompt type under greedy LLaDA decoding."""
    images, prompts, answers, kinds = eval_items(seed, per_kind)
    preds = greedy_generate(model, tok, images, prompts)
    res: dict[str, float] = {}
    for kind in PROMPT_KINDS:
        hits = [p == a for p, a, k in zip(preds, answers, kinds) if k == kind]
        res[kind] = float(np.mean(hits))
    return res


# --------------------------------------------------------------------------- training

def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    prog = (step - warmup) / max(1, steps - warmup)
    return lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, prog))))


def _parse_mix(mix: str) -> list[str]:
    kinds: list[str] = []
    for part in mix.split(","):
        name, _, times = part.partition(":")
        if name not in PROMPT_KINDS:
            raise ValueError(f"unknown prompt kind {name!r} in mix (choose from {PROMPT_KINDS})")
        kinds += [name] * int(times or 1)
    return kinds


def _parse_curriculum(spec: str) -> list[tuple[int, int]]:
    """``"300:1,700:2"`` -> scenes with at most 1 object before LM step 300, at most 2 before 700."""
    stages = []
    for part in filter(None, spec.split(",")):
        until, _, n = part.partition(":")
        stages.append((int(until), int(n)))
    return sorted(stages)


def train(
    out_dir: str | Path,
    steps: int = 1800,
    batch_size: int = 16,
    seed: int = 0,
    threads: int = 2,
    lr: float = 2e-3,
    warmup: int = 80,
    pool_size: int = 40_000,
    mix: str = "describe:2,color:2,shape:2,count:1",
    aux_weight: float = 1.0,
    aux_weight_final: float = 0.2,
    vision_warmup: int = 200,
    vision_batch_size: int = 64,
    loss_weighting: str = "token_mean",
    curriculum: str = "250:1,600:2",
    focus_start: int = 800,
    focus_steps: int = 120,
    focus_batch_size: int = 48,
    focus_shapes: str = "",
    init_from: str | Path | None = None,
    ckpt_every: int = 200,
    eval_every: int = 250,
    eval_per_kind: int = 100,
    final_eval_per_kind: int = 500,
    config: ShapesTinyConfig | None = None,
    progress: bool = True,
    time_limit_s: float | None = None,
    stop_at: int | None = None,
) -> dict:
    """Train (or resume) into ``out_dir``; returns the final evaluation.

    ``out_dir/checkpoint`` holds the latest training checkpoint (weights,
    optimizer, step); ``out_dir/final`` the finished model in the shipped
    format. Re-running the same command resumes from the checkpoint.
    """
    from tqdm.auto import tqdm

    torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = ShapesTokenizer()
    cfg = config or ShapesTinyConfig(word_grounding=True)
    cfg.vocab_size = tok.vocab_size
    cfg.tokenizer = tok.to_dict()
    model = ShapesTinyModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    kinds = _parse_mix(mix)
    grid = cfg.grid
    gen = cfg.gen_length
    hparams = dict(steps=steps, batch_size=batch_size, seed=seed, lr=lr, warmup=warmup, pool_size=pool_size,
                   mix=mix, aux_weight=aux_weight, aux_weight_final=aux_weight_final,
                   vision_warmup=vision_warmup, vision_batch_size=vision_batch_size, loss_weighting=loss_weighting,
                   curriculum=curriculum, focus_start=focus_start, focus_steps=focus_steps,
                   focus_batch_size=focus_batch_size, init_from=str(init_from) if init_from else None)
    if focus_shapes:  # recorded only when used, so checkpoints of runs without it still resume
        unknown = sorted(set(focus_shapes.split(",")) - set(sw.SHAPES))
        if unknown:
            raise ValueError(f"unknown focus shape(s) {', '.join(unknown)}; choose from {', '.join(sw.SHAPES)}")
        hparams["focus_shapes"] = focus_shapes
    if loss_weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"loss_weighting must be one of {LOSS_WEIGHTINGS}")
    if init_from:
        # Weights from a run without the projector heads or the grounding gain start them fresh.
        missing, unexpected = model.load_state_dict(_load_state(init_from), strict=False)
        if unexpected or any(not k.startswith(("proj_aux_head.", "ground_gain")) for k in missing):
            raise ValueError(f"{init_from} does not fit this configuration (missing {missing}, unexpected {unexpected})")

    step0, elapsed0 = 0, 0.0
    ck = out / _CKPT
    if (ck / "train_state.pt").is_file():
        state = torch.load(ck / "train_state.pt", weights_only=True)
        # Settings introduced after a checkpoint was written (absent from it)
        # must leave the steps it already took unchanged; all others must match.
        if any(state["hparams"].get(k, v) != v for k, v in hparams.items()) or set(state["hparams"]) - set(hparams):
            raise ValueError(f"{ck} was written with other settings {state['hparams']}; use a fresh --out")
        model = load_pretrained(ck, verify=True)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
        opt.load_state_dict(state["optimizer"])
        step0, elapsed0 = int(state["step"]), float(state["elapsed_s"])
        print(f"resuming from {ck} at step {step0}", flush=True)

    t_pool = time.time()
    pool = ScenePool.generate([seed, 0], pool_size, grid)
    print(f"scene pool: {len(pool)} scenes in {time.time() - t_pool:.1f}s", flush=True)
    by_max_n = {n: np.flatnonzero(pool.n_obj <= n) for n in (1, 2, 3)}
    focus_pool = None
    if focus_shapes:
        wanted = [sw.SHAPES.index(x) for x in focus_shapes.split(",")]
        focus_pool = np.flatnonzero(np.all([(pool.shape == w).any(axis=1) for w in wanted], axis=0))
    stages = _parse_curriculum(curriculum)
    t_start = time.time() - elapsed0
    log = open(out / "train_log.jsonl", "a")
    model.train()
    ema_loss = ema_acc = ema_aux = None
    total = vision_warmup + steps
    bar = tqdm(range(step0, total), initial=step0, total=total, disable=not progress, mininterval=2.0)
    for step in bar:
        rng = np.random.default_rng([seed, 1, step])
        done = step + 1
        if step < vision_warmup:
            # Phase 1: the vision encoder alone on the dense patch task (cheap,
            # and the language model cannot learn to read patches that do not
            # yet know their shape).
            idx = rng.integers(0, len(pool), size=vision_batch_size)
            flip = rng.random(vision_batch_size) < 0.5
            feats = model.encode_vision(_batch_images(model, pool, idx, flip))
            aux_t = aux_targets(pool, idx, flip, grid)
            aux_l = model.aux_logits(feats)
            loss_aux = aux_loss(aux_l, aux_t)
            _step(opt, loss_aux, model, lr * min(1.0, (step + 1) / 30))
            aux_acc = _patch_acc(aux_l, aux_t)
            ema_aux = aux_acc if ema_aux is None else 0.9 * ema_aux + 0.1 * aux_acc
            bar.set_postfix(phase="vision", aux=f"{loss_aux.item():.3f}", patch_acc=f"{ema_aux:.3f}", refresh=False)
            rec = {"step": done, "phase": "vision", "aux": round(loss_aux.item(), 5), "patch_acc": round(aux_acc, 4),
                   "elapsed_s": round(time.time() - t_start, 1)}
            log.write(json.dumps(rec) + "\n")
            log.flush()
            if done % ckpt_every == 0 or done == vision_warmup:
                _save_checkpoint(model, opt, ck, done, time.time() - t_start, hparams)
            continue

        s2 = step - vision_warmup
        gen_t = torch.Generator().manual_seed(int(rng.integers(2**62)))
        max_n = next((n for until, n in stages if s2 < until), 3)
        candidates, step_kinds, step_batch = by_max_n[max_n], kinds, batch_size
        if focus_start <= s2 < focus_start + focus_steps:
            step_batch = focus_batch_size
            if focus_pool is None:
                # Only one-word colour/shape answers about lone objects. Mixed batches leave
                # the model reading shape but blind to colour for hundreds of steps; a short
                # focused stretch breaks that plateau.
                candidates, step_kinds = by_max_n[1], ["color", "shape"]
            else:
                # Scenes holding all of --focus-shapes, each image asked the colour of each of
                # its objects in turn (three questions cover up to three objects): a confusable
                # pair is then most of the loss, not a few % of it.
                candidates, step_kinds = focus_pool, ["color"] * 3
        idx = candidates[rng.integers(0, len(candidates), size=step_batch)]
        flip = rng.random(step_batch) < 0.5
        ids, starts, img_rows, _ = build_sequences(tok, pool, idx, flip, step_kinds, rng, gen)
        n_seq = ids.shape[0]
        # Stratified t over the batch; the two caption copies of an image get antithetic t.
        strata = (torch.randperm(n_seq, generator=gen_t) + torch.rand(n_seq, generator=gen_t)) / n_seq
        t = _EPS + (1 - _EPS) * strata
        if step_kinds.count("describe") == 2:
            di = [i for i, k in enumerate(step_kinds) if k == "describe"]
            k = len(step_kinds)
            t.view(-1, k)[:, di[1]] = 1.0 + _EPS - t.view(-1, k)[:, di[0]]
        pos = torch.arange(gen)[None, :] + starts[:, None]
        canvas_clean = ids.gather(1, pos)
        m = torch.rand(n_seq, gen, generator=gen_t) < t[:, None]
        none = ~m.any(1)
        if none.any():
            m[none, torch.randint(0, gen, (int(none.sum()),), generator=gen_t)] = True
        noisy = ids.clone()
        noisy.scatter_(1, pos, torch.where(m, torch.full_like(canvas_clean, tok.mask_id), canvas_clean))

        pix = _batch_images(model, pool, idx, flip)
        feats = model.encode_vision(pix)
        img_tokens = model.project(feats)
        emb = img_tokens[img_rows]
        logits = model.forward_embeds(noisy, emb)
        canvas_logits = logits.gather(1, pos[..., None].expand(-1, -1, logits.shape[-1]))
        ce = F.cross_entropy(canvas_logits.reshape(-1, logits.shape[-1]), canvas_clean.reshape(-1), reduction="none")
        ce = ce.view(n_seq, gen)
        if loss_weighting == "inv_t":
            loss_diff = ((ce * m).sum(1) / t / gen).mean()
        elif loss_weighting == "masked_mean":
            loss_diff = ((ce * m).sum(1) / m.sum(1)).mean()
        else:
            # Per masked token over the batch, the <eos> padding after the first
            # <eos> down-weighted: averaged per sequence, a one-word answer's
            # word drowns among eleven trivial <eos> slots and the question
            # prompts barely trained (their answers stayed at chance).
            is_eos = canvas_clean == tok.eos_id
            padding = is_eos & (is_eos.cumsum(1) > 1)
            w = m * torch.where(padding, EOS_PADDING_WEIGHT, 1.0)
            loss_diff = (ce * w).sum() / w.sum()

        aux_t = aux_targets(pool, idx, flip, grid)
        aux_w = aux_weight_final + (aux_weight - aux_weight_final) * 0.5 * (1 + math.cos(math.pi * s2 / steps))
        aux_l = model.aux_logits(feats)
        loss_aux = aux_loss(aux_l, aux_t)
        proj_l = model.projected_aux_logits(img_tokens)
        if proj_l:
            loss_aux = loss_aux + aux_loss(proj_l, aux_t)
            aux_l = proj_l  # the running patch accuracy reports what the language model receives
        _step(opt, loss_diff + aux_w * loss_aux, model, _lr_at(s2, steps, lr, warmup))

        with torch.no_grad():
            acc = ((canvas_logits.argmax(-1) == canvas_clean) | ~m).all(1).float().mean().item()
        aux_acc = _patch_acc(aux_l, aux_t)
        beta = 0.95 if step > max(step0, vision_warmup) + 20 else 0.5
        ema_loss = loss_diff.item() if ema_loss is None else beta * ema_loss + (1 - beta) * loss_diff.item()
        ema_acc = acc if ema_acc is None else beta * ema_acc + (1 - beta) * acc
        ema_aux = aux_acc if ema_aux is None else beta * ema_aux + (1 - beta) * aux_acc
        bar.set_postfix(loss=f"{ema_loss:.3f}", seq_acc=f"{ema_acc:.3f}", patch_acc=f"{ema_aux:.3f}", refresh=False)
        rec = {"step": done, "loss": round(loss_diff.item(), 5), "aux": round(loss_aux.item(), 5),
               "seq_acc": round(acc, 4), "patch_acc": round(aux_acc, 4), "elapsed_s": round(time.time() - t_start, 1)}
        if eval_every and (done - vision_warmup) % eval_every == 0 and done < total:
            rec["eval"] = evaluate(model, tok, EVAL_SEED, eval_per_kind)
            model.train()
            bar.write(f"step {done}: eval {rec['eval']}")
        log.write(json.dumps(rec) + "\n")
        log.flush()
        if done % ckpt_every == 0 or done == total:
            _save_checkpoint(model, opt, ck, done, time.time() - t_start, hparams)
        if stop_at is not None and done >= stop_at:
            _save_checkpoint(model, opt, ck, done, time.time() - t_start, hparams)
            bar.write(f"stopping at step {done} as asked (--stop-at)")
            break
        if time_limit_s is not None and time.time() - t_start > time_limit_s:
            _save_checkpoint(model, opt, ck, done, time.time() - t_start, hparams)
            bar.write(f"time limit reached at step {done}")
            break
    bar.close()
    wall = time.time() - t_start
    model.eval()
    res = evaluate(model, tok, EVAL_SEED, final_eval_per_kind)
    final_step = int(json.loads((ck / "config.json").read_text())["train_step"]) if (ck / "config.json").is_file() else steps
    summary = {"steps": final_step, "train_wall_s": round(wall, 1), "eval_seed": EVAL_SEED,
               "eval_per_kind": final_eval_per_kind, "exact_match": res, "hparams": hparams}
    save_pretrained(model, out / _FINAL, extra={"training": summary})
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for kind in PROMPT_KINDS:
        print(f"exact-match {kind:>8}: {100 * res[kind]:.1f}%", flush=True)
    print(f"train wall time {wall / 60:.1f} min, {final_step} steps; model in {out / _FINAL}", flush=True)
    return summary


# --------------------------------------------------------------------------- the shipped recipe

# Settings shared by stages 3-9: no vision warm-up or curriculum, a fixed small auxiliary weight.
_LATE = dict(vision_warmup=0, curriculum="", focus_start=100_000, aux_weight=0.2, aux_weight_final=0.2)
_QUESTIONS = "describe:1,color:3,shape:3,count:1"
_COLOUR = "describe:1,color:4,shape:1,count:1"

#: The nine stages of the shipped model (TRAINING.md): per stage, the architecture switches and
#: the :func:`train` settings; every stage starts from the previous stage's weights.
RECIPE: tuple[tuple[dict[str, bool], dict[str, Any]], ...] = (
    (dict(projector_aux=False, word_grounding=False), dict(loss_weighting="masked_mean", stop_at=800)),
    (dict(word_grounding=False), dict(loss_weighting="masked_mean", vision_warmup=0, steps=1300,
                                      curriculum="100:1,300:2", focus_start=300)),
    (dict(), dict(_LATE, steps=900, lr=1e-3, warmup=30, loss_weighting="masked_mean", stop_at=300)),
    (dict(), dict(_LATE, steps=700, lr=1e-3, warmup=20, stop_at=100)),
    (dict(), dict(_LATE, steps=700, lr=1e-3, warmup=20, mix=_QUESTIONS, stop_at=400)),
    (dict(), dict(_LATE, steps=2000, lr=1e-3, warmup=10, mix=_QUESTIONS)),
    (dict(), dict(_LATE, steps=600, lr=5e-4, warmup=10, mix=_COLOUR)),
    (dict(text_grounding=True), dict(_LATE, steps=600, lr=1e-3, warmup=10, mix=_COLOUR)),
    (dict(text_grounding=True), dict(_LATE, steps=600, lr=1e-3, warmup=10, mix=_COLOUR, focus_start=0,
                                     focus_steps=300, focus_batch_size=32, focus_shapes="circle,cross")),
)


def train_recipe(out_dir: str | Path, stages: int | None = None, **common: Any) -> dict:
    """Run the shipped model's stages into ``out_dir/stage-N``; the result is ``out_dir/stage-9/final``.

    Each stage starts from the previous one's ``final`` weights. Re-running the
    same command skips finished stages and resumes the interrupted one from its
    checkpoint. ``stages`` runs only the first N; ``common`` (seed, threads,
    progress, ...) goes to every :func:`train` call.
    """
    out = Path(out_dir)
    chosen = RECIPE[: stages or len(RECIPE)]
    summary: dict = {}
    init = None
    for n, (switches, settings) in enumerate(chosen, start=1):
        stage = out / f"stage-{n}"
        if (stage / "summary.json").is_file() and (stage / _FINAL).is_dir():
            summary = json.loads((stage / "summary.json").read_text())
        else:
            config = ShapesTinyConfig(word_grounding=True)
            for key, value in switches.items():
                setattr(config, key, value)
            summary = train(stage, config=config, init_from=init, **{**settings, **common})
        init = stage / _FINAL
    return summary


def _step(opt: torch.optim.Optimizer, loss: torch.Tensor, model: torch.nn.Module, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


@torch.no_grad()
def _patch_acc(aux_l: list[torch.Tensor], aux_t: torch.Tensor) -> float:
    """Share of object patches whose colour, shape and rank are all right (background is the easy majority)."""
    hit = torch.stack([(a.argmax(-1) == aux_t[..., j]) for j, a in enumerate(aux_l)], -1)
    on_obj = aux_t[..., 0] > 0
    return (hit.all(-1) & on_obj).sum().item() / max(1, on_obj.sum().item())


def _load_state(weights_dir: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(weights_dir) / "model.safetensors"))


def _save_checkpoint(model: ShapesTinyModel, opt: torch.optim.Optimizer, ck: Path, step: int, elapsed: float, hparams: dict) -> None:
    save_pretrained(model, ck, extra={"train_step": step})
    tmp = ck / "train_state.pt.tmp"
    torch.save({"optimizer": opt.state_dict(), "step": step, "elapsed_s": elapsed, "hparams": hparams}, tmp)
    tmp.replace(ck / "train_state.pt")


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="run directory (checkpoints, log, final model)")
    p.add_argument("--steps", type=int, default=1800, help="language-model steps (after the vision warm-up)")
    p.add_argument("--batch-size", type=int, default=16, help="images per step (each paired with several prompts)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=80)
    p.add_argument("--pool-size", type=int, default=40_000)
    p.add_argument("--mix", default="describe:2,color:2,shape:2,count:1")
    p.add_argument("--aux-weight", type=float, default=1.0)
    p.add_argument("--aux-weight-final", type=float, default=0.2)
    p.add_argument("--vision-warmup", type=int, default=200, help="vision-encoder-only steps on the patch task first")
    p.add_argument("--vision-batch-size", type=int, default=64)
    p.add_argument("--loss-weighting", choices=LOSS_WEIGHTINGS, default="token_mean")
    p.add_argument("--curriculum", default="250:1,600:2",
                   help="UNTIL:MAX_OBJECTS,... - language-model steps before UNTIL see scenes with at most MAX_OBJECTS")
    p.add_argument("--focus-start", type=int, default=800, help="language-model step where the focus phase starts")
    p.add_argument("--focus-steps", type=int, default=120)
    p.add_argument("--focus-batch-size", type=int, default=48)
    p.add_argument("--focus-shapes", default="",
                   help="comma-separated shapes: the focus phase asks colour questions on scenes holding all of them")
    p.add_argument("--init-from", default=None, help="start from these weights (experiments only)")
    p.add_argument("--ckpt-every", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-per-kind", type=int, default=100)
    p.add_argument("--final-eval-per-kind", type=int, default=500)
    p.add_argument("--d-model", type=int, default=None)
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--vision-layers", type=int, default=None)
    p.add_argument("--time-limit", type=float, default=None, help="stop (with a checkpoint) after this many seconds")
    p.add_argument("--stop-at", type=int, default=None, help="stop (with a checkpoint) after this total step")
    p.add_argument("--no-projector-aux", action="store_true", help="no auxiliary heads on the projector output")
    p.add_argument("--no-word-grounding", action="store_true",
                   help="no colour/shape word embeddings added to the image tokens (the first shipped design)")
    p.add_argument("--text-grounding", action="store_true",
                   help="add the grounding vector to colour/shape words in the text too (needs word grounding)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    cfg = ShapesTinyConfig()
    if a.d_model:
        cfg.d_model = cfg.vision_dim = a.d_model
    if a.layers:
        cfg.n_layers = a.layers
    if a.vision_layers is not None:
        cfg.vision_layers = a.vision_layers
    if a.no_projector_aux:
        cfg.projector_aux = False
    cfg.word_grounding = not a.no_word_grounding
    cfg.text_grounding = a.text_grounding
    return train(a.out, steps=a.steps, batch_size=a.batch_size, seed=a.seed, threads=a.threads, lr=a.lr,
                 warmup=a.warmup, pool_size=a.pool_size, mix=a.mix, aux_weight=a.aux_weight,
                 aux_weight_final=a.aux_weight_final, vision_warmup=a.vision_warmup,
                 vision_batch_size=a.vision_batch_size, loss_weighting=a.loss_weighting, curriculum=a.curriculum, focus_start=a.focus_start,
                 focus_steps=a.focus_steps, focus_batch_size=a.focus_batch_size, focus_shapes=a.focus_shapes,
                 init_from=a.init_from,
                 ckpt_every=a.ckpt_every, eval_every=a.eval_every,
                 eval_per_kind=a.eval_per_kind, final_eval_per_kind=a.final_eval_per_kind, config=cfg,
                 progress=not a.no_progress, time_limit_s=a.time_limit, stop_at=a.stop_at)


if __name__ == "__main__":
    main()
