"""Train ``diffusion-gemma-shapes``: a stock ``DiffusionGemmaForBlockDiffusion`` on the Shapes world.

    diffusion-cam train-shapes --arch diffusion-gemma --out DIR [--steps N --batch-images B --seed S --threads T]

The model is the transformers class as it is; only the training loop is ours.

Objective (DiffusionGemma's uniform-noise denoising with self-conditioning):
for each (image, prompt, answer) sequence draw ``t`` (stratified over the
batch), replace every canvas position by a uniformly random vocabulary token
with probability ``t`` and minimise the cross-entropy of the clean canvas
(answer, ``<eos>``, padding) at every position.  For half of the sequences the
decoder first runs once without gradient and its logits, divided by a
temperature drawn from the sampler's range, are fed back as the
self-conditioning input of the pass that is trained, as the sampler does at
every step after the first.

The encoder and decoder are called exactly as ``DiffusionGemmaAdapter`` calls
them (the vision-bidirectional mask built explicitly, the decoder reading the
encoder's KV cache), except that each image's vision features are computed
once and shared by the prompts asked about it (``mm_encoder_outputs``): the
same arithmetic as passing the pixels with every prompt.

A dense auxiliary loss trains the vision tower fast: linear heads classify,
per soft token, the colour, the shape and the left-to-right rank of the
object covering it (background otherwise, ambiguous boundary tokens ignored),
once on the vision tower's pooled output and once on the soft tokens the
multimodal embedder hands to the language model.  The second set keeps that
code in the tokens the language model reads: supervised on the tower alone,
the language model ignored the image for the first 225 steps (the
cross-entropy of its answers did not change when the images of a batch were
swapped).  The heads are not part of the model and are not saved with it.

The stock vision tower learns colour and position from those per-token
targets but not shape (about 30 % of tokens after 1,300 steps in every
variant tried, see TRAINING.md).  A third head classifies each object's shape
from the mean of its embedded soft tokens (``object_shape``), and the recipe
runs in two stages: ``vision_steps`` steps of the auxiliary heads alone, with
the language model untouched, then ``steps`` steps of the full objective.

Lookup heads (``lookup_layer``, ``caption_lookup``; on in the recipe) read, off the
prompt's last word at one encoder block, what the answer needs: a question's
answer word, or every object's colour and shape by left-to-right rank.  The
decoder reads the encoder only through its cache, so a question's lookup has
to happen there; without the head the language model had not learned it
after 3,000 steps.

Seeds: a stage-2 step's scenes and noise come from
``numpy.random.default_rng([seed, 1, step])`` /
``torch.Generator().manual_seed(seed * 1_000_003 + step)``, a stage-1 step's
scenes from ``default_rng([seed, 2, step])``, so a killed run resumes exactly
from its last checkpoint.  The in-training
evaluation uses ``EVAL_SEED`` scenes, which training never draws.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...datasets import shapes as sw
from ..shapes_tiny.train import patch_targets
from . import build

EVAL_SEED = 7_100_019
KINDS = ("describe", "color", "shape", "count")
GRID = 16
_RANKS = len(sw.COUNT_WORDS)  # objects per scene, at most
_CKPT = "checkpoint"
_FINAL = "final"
#: transformers' default for DiffusionGemma's entropy-bounded sampler
TRANSFORMERS_ENTROPY_BOUND = 0.1


@dataclass(frozen=True)
class HParams:
    """The shipped recipe's settings are the defaults."""

    steps: int = 3000
    batch_images: int = 8
    captions_per_image: int = 1
    questions_per_image: int = 3  # of the colour / shape / count kinds (all three, or drawn at random)
    canvases_per_prompt: int = 4  # noisy canvases decoded per encoder pass: a decoder pass is ~1 % of an encoder's
    #: noisy canvases decoded per caption prompt's encoder pass; every decoded canvas weighs the same in the loss, so
    #: more of them also give the captions a larger share of it
    caption_canvases: int = 12
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.01
    aux_weight: float = 1.0
    aux_weight_final: float = 0.1
    sc_prob: float = 0.5
    #: encoder block whose image-token outputs the auxiliary heads also classify (-1: none); see the module docstring
    lm_aux_layer: int = -1
    #: encoder block at whose output a head reads a question's answer off the question's last word (-1: none)
    lookup_layer: int = 1
    #: with ``lookup_layer``, heads also read every object's colour and shape, left to right, off the caption prompt's
    #: last word at that block
    caption_lookup: bool = True
    #: also classify each object's shape from the mean of its embedded soft tokens (one label per object)
    object_shape: bool = True
    #: stage 1: steps of the auxiliary heads alone (vision tower + embedder) before the full objective's ``steps``
    vision_steps: int = 2800
    vision_lr: float = 6e-3
    vision_layers: int = 2  # blocks of the vision tower
    seed: int = 0
    #: the sampler's entropy bound written into the checkpoint's generation config (and used by the monitor): the
    #: summed entropy of the slots a denoising step may accept; below every slot's own entropy, one slot a step
    entropy_bound: float = TRANSFORMERS_ENTROPY_BOUND
    threads: int = 1  # one thread: on a shared 2-core machine two threads ran 10x slower per step
    eval_every: int = 100
    eval_per_kind: int = 32
    ckpt_every: int = 25

    def with_options(self, **options: Any) -> "HParams":
        return replace(self, **options)


RECIPE = HParams()
#: settings that do not change what is trained, so a run may resume with other values
_FREE = ("threads", "ckpt_every", "entropy_bound")
#: settings stage 1 never reads (its rate is ``vision_lr``, its data drawn by step number, the encoder-block heads
#: get no gradient in it): a run still inside stage 1 is the same run whatever they are, so it may change them
_STAGE_TWO = ("vision_steps", "steps", "captions_per_image", "questions_per_image", "canvases_per_prompt",
              "caption_canvases", "lr",
              "aux_weight", "aux_weight_final", "sc_prob", "lm_aux_layer", "lookup_layer", "caption_lookup",
              "eval_every", "eval_per_kind")

#: what optional settings were before they existed (checkpoints of older runs do not name them)
_BEFORE_IT_EXISTED = {"lm_aux_layer": -1, "lookup_layer": -1, "caption_lookup": False, "object_shape": False}


def _saved_settings(state: dict) -> dict[str, Any]:
    """The settings a checkpoint was written with; one that did not exist yet gets the value that meant."""
    saved = dict(state.get("hparams") or {})
    # before it had its own setting, a caption prompt was decoded from as many canvases as any other prompt
    saved.setdefault("caption_canvases", saved.get("canvases_per_prompt", RECIPE.canvases_per_prompt))
    return {**_BEFORE_IT_EXISTED, **saved}


# ----------------------------------------------------------------------------- data

def prompt_ids(tok, prompt: str, n_soft: int) -> list[int]:
    """Token ids of one image + prompt turn, image placeholder expanded as the adapter expands it."""
    text = tok.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}],
                                   tokenize=False, add_generation_prompt=True)
    before, after = text.split("<|image|>")
    text = before + "<|image>" + "<|image|>" * n_soft + "<image|>" + after
    return list(tok(text, add_special_tokens=False)["input_ids"])


def canvas_ids(tok, answer: str) -> list[int]:
    ids = list(tok(answer, add_special_tokens=False)["input_ids"]) + [build.EOS]
    if len(ids) > build.CANVAS_LENGTH:
        raise ValueError(f"answer {answer!r} does not fit the {build.CANVAS_LENGTH}-token canvas")
    return ids + [build.PAD] * (build.CANVAS_LENGTH - len(ids))


def questions(scene: sw.Scene, rng: np.random.Generator, captions: int, others: int = 3) -> list[tuple[str, str]]:
    """(kind, prompt) pairs asked about one scene: the caption ``captions`` times, then ``others`` questions of
    distinct other kinds (all three in a fixed order when ``others`` is 3, else drawn at random)."""
    obj = scene.objects[int(rng.integers(scene.n_objects))]
    other = scene.objects[int(rng.integers(scene.n_objects))]
    asked = {"color": sw.colour_question(obj.shape), "shape": sw.shape_question(other.colour),
             "count": sw.PROMPT_COUNT}
    kinds = list(asked) if others >= len(asked) else [list(asked)[int(k)] for k in rng.permutation(3)[:others]]
    return [("describe", sw.PROMPT_DESCRIBE)] * captions + [(k, asked[k]) for k in kinds]


def aux_targets(scenes: Sequence[sw.Scene]) -> torch.Tensor:
    """(N * GRID * GRID, 3) colour / shape / rank class per soft token; 0 background, -100 ambiguous."""
    labels = np.zeros((len(scenes), sw.CANVAS, sw.CANVAS), dtype=np.uint8)
    for i, s in enumerate(scenes):
        for k, o in enumerate(s.objects):
            labels[i][o.mask] = k + 1
    obj = patch_targets(labels, GRID).astype(np.int64)  # 0 bg, k object k, -1 ambiguous
    out = np.full(obj.shape + (3,), -100, dtype=np.int64)
    for i, s in enumerate(scenes):
        lut = np.array([[0, 0, 0]] + [[sw.COLOURS.index(o.colour) + 1, sw.SHAPES.index(o.shape) + 1, k + 1]
                                      for k, o in enumerate(s.objects)])
        ok = obj[i] >= 0
        out[i][ok] = lut[obj[i][ok]]
    return torch.from_numpy(out.reshape(-1, 3))


class Heads(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.colour = nn.Linear(width, len(sw.COLOURS) + 1)
        self.shape = nn.Linear(width, len(sw.SHAPES) + 1)
        self.rank = nn.Linear(width, 4)

    def loss(self, feats: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean cross-entropy of the three heads, and accuracies: over every labelled token (``patch``) and, per
        head, over the tokens of objects (``colour``, ``shape``, ``rank``: background is most tokens)."""
        heads = {"colour": self.colour, "shape": self.shape, "rank": self.rank}
        losses, correct, total, acc = [], 0, 0, {}
        for j, (name, head) in enumerate(heads.items()):
            logits = head(feats)
            losses.append(F.cross_entropy(logits, target[:, j], ignore_index=-100))
            hit = logits.argmax(-1) == target[:, j]
            ok = target[:, j] >= 0
            correct += int(hit[ok].sum())
            total += int(ok.sum())
            obj = target[:, j] > 0
            acc[name] = float(hit[obj].float().mean()) if obj.any() else 0.0
        return sum(losses) / len(heads), {"patch": correct / max(total, 1), **acc}


class CaptionHeads(nn.Module):
    """Colour and shape of the objects by left-to-right rank (class 0: no object at that rank), from one vector."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.colour = nn.Linear(width, _RANKS * (len(sw.COLOURS) + 1))
        self.shape = nn.Linear(width, _RANKS * (len(sw.SHAPES) + 1))

    @staticmethod
    def targets(scenes: Sequence[sw.Scene]) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, ranks) colour and shape classes, 0 past a scene's last object."""
        colours = torch.zeros(len(scenes), _RANKS, dtype=torch.long)
        shapes_ = torch.zeros_like(colours)
        for i, s in enumerate(scenes):
            for k, o in enumerate(s.objects):  # stored left to right
                colours[i, k], shapes_[i, k] = sw.COLOURS.index(o.colour) + 1, sw.SHAPES.index(o.shape) + 1
        return colours, shapes_

    def loss(self, feats: torch.Tensor, scenes: Sequence[sw.Scene]) -> torch.Tensor:
        colours, shapes_ = self.targets(scenes)
        lc = F.cross_entropy(self.colour(feats).reshape(-1, len(sw.COLOURS) + 1), colours.reshape(-1))
        ls = F.cross_entropy(self.shape(feats).reshape(-1, len(sw.SHAPES) + 1), shapes_.reshape(-1))
        return (lc + ls) / 2


class AuxHeads(nn.Module):
    """Colour / shape / rank heads on the vision tower's output, on the embedded soft tokens and, optionally, on
    the image positions of one encoder block's output."""

    def __init__(self, vision_width: int, text_width: int, encoder_block: bool = False,
                 object_shape: bool = False, lookup_vocab: int = 0, caption_lookup: bool = False) -> None:
        super().__init__()
        self.vision = Heads(vision_width)
        self.embedded = Heads(text_width)
        self.objects = nn.Linear(text_width, len(sw.SHAPES)) if object_shape else None
        # made last, so that its parameters come last and the other heads start the same with or without it
        self.encoder = Heads(text_width) if encoder_block else None
        self.lookup = nn.Linear(text_width, lookup_vocab) if lookup_vocab else None
        self.caption = CaptionHeads(text_width) if caption_lookup else None

    def object_loss(self, embedded: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Shape of every object from the mean of its soft tokens: one label per object, where the per-token
        target asks an object's inner tokens, which all look alike, for its outline."""
        tokens = embedded.reshape(-1, GRID * GRID, embedded.shape[-1])
        per_image = target.reshape(len(tokens), GRID * GRID, 3)
        pooled, shapes_ = [], []
        for feats, t in zip(tokens, per_image):
            for rank in t[:, 2].unique().tolist():
                if rank > 0:
                    mine = t[:, 2] == rank
                    pooled.append(feats[mine].mean(0))
                    shapes_.append(int(t[mine, 1][0]) - 1)
        logits = self.objects(torch.stack(pooled))
        wanted = torch.tensor(shapes_)
        return F.cross_entropy(logits, wanted), float((logits.argmax(-1) == wanted).float().mean())

    def loss(self, vision: torch.Tensor, embedded: torch.Tensor, target: torch.Tensor,
             encoded: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """The mean loss, the vision heads' ``patch_acc`` and the object-token accuracies of the heads on what
        the language model reads (``obj_colour``, ``obj_shape``, ``obj_rank``)."""
        lv, acc = self.vision.loss(vision, target)
        le, read = self.embedded.loss(embedded, target)
        stats = {"patch_acc": acc["patch"], **{f"obj_{k}": v for k, v in read.items() if k != "patch"}}
        losses = [lv, le]
        if encoded is not None and self.encoder is not None:
            losses.append(self.encoder.loss(encoded, target)[0])
        if self.objects is not None:
            lo, stats["object_shape"] = self.object_loss(embedded, target)
            losses.append(lo)
        return sum(losses) / len(losses), stats


# ----------------------------------------------------------------------------- forward

class Runner:
    """The model's encoder / decoder calls for batches of one prompt length, as the adapter makes them."""

    def __init__(self, model, tok, processor) -> None:
        self.model, self.tok, self.processor = model, tok, processor

    def vision(self, images: Sequence[np.ndarray]):
        from PIL import Image

        feats = self.processor(images=[Image.fromarray(im) for im in images], return_tensors="pt")
        out = self.model.model.encoder.get_image_features(feats["pixel_values"], feats["image_position_ids"],
                                                          return_dict=True)
        n_soft = int(feats["num_soft_tokens_per_image"][0])
        return out.last_hidden_state, out.pooler_output.reshape(len(images), n_soft, -1), n_soft

    def encode(self, ids: torch.Tensor, soft: torch.Tensor):
        from transformers import DynamicCache
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        model = self.model
        encoder = model.model.encoder
        batch, length = ids.shape
        cache = DynamicCache(config=model.config.get_text_config(decoder=True))
        mm = (ids == build.IMAGE).long()
        positions = torch.arange(length)[None].expand(batch, -1)
        dummy = torch.empty((batch, length, 0), dtype=soft.dtype)
        masks = encoder.create_masks_for_generate(
            config=model.config, inputs_embeds=dummy, attention_mask=torch.ones_like(ids, dtype=torch.bool),
            past_key_values=cache, position_ids=positions, mm_token_type_ids=mm)
        image = BaseModelOutputWithPooling(pooler_output=soft.reshape(-1, soft.shape[-1]))
        encoder(input_ids=ids, attention_mask=masks, past_key_values=cache, position_ids=positions,
                mm_token_type_ids=mm, mm_encoder_outputs={"image": image})
        return cache

    def decode(self, cache, canvas: torch.Tensor, start: int, sc_logits=None, sc_mask=None) -> torch.Tensor:
        positions = torch.arange(start, start + canvas.shape[1])[None].expand(canvas.shape[0], -1)
        return self.model(past_key_values=cache, decoder_input_ids=canvas, decoder_position_ids=positions,
                          self_conditioning_logits=sc_logits, self_conditioning_mask=sc_mask).logits


def step_loss(runner: Runner, heads: AuxHeads, hp: HParams, step: int) -> tuple[torch.Tensor, dict]:
    rng = np.random.default_rng([hp.seed, 1, step])
    gen = torch.Generator().manual_seed(hp.seed * 1_000_003 + step)
    scenes = [sw.generate_scene(rng) for _ in range(hp.batch_images)]
    vis_hidden, soft, n_soft = runner.vision([s.image for s in scenes])
    groups: dict[str, list[tuple[int, str, str]]] = {k: [] for k in KINDS}
    for i, s in enumerate(scenes):
        for kind, prompt in questions(s, rng, hp.captions_per_image, hp.questions_per_image):
            groups[kind].append((i, prompt, sw.answer(s, prompt)))
    vocab = runner.model.config.text_config.vocab_size
    total, stats = 0.0, {}
    canvases = {k: hp.caption_canvases if k == "describe" else hp.canvases_per_prompt for k in KINDS}
    decoded = sum(len(g) * canvases[k] for k, g in groups.items())
    encoded, lookups = None, []
    for kind, items in groups.items():
        if not items:
            continue
        ids = torch.tensor([prompt_ids(runner.tok, p, n_soft) for _, p, _ in items])
        target = torch.tensor([canvas_ids(runner.tok, a) for _, _, a in items])
        block = hp.lm_aux_layer if kind == "describe" and hp.lm_aux_layer >= 0 else None
        if hp.lookup_layer >= 0 and (kind != "describe" or hp.caption_lookup):
            block = hp.lookup_layer
        with _block_output(runner.model, block) as seen:
            cache = runner.encode(ids, soft[[i for i, _, _ in items]])
        if seen and kind != "describe":
            # the question's last word (before ``<turn|>``, ``<|turn>``, ``model``) asked for the answer
            lookups.append(F.cross_entropy(heads.lookup(seen[0][:, -4]), target[:, 0]))
        elif seen and hp.caption_lookup:
            lookups.append(heads.caption.loss(seen[0][:, -4], [scenes[i] for i, _, _ in items]))
        if seen and kind == "describe" and hp.lm_aux_layer >= 0:
            # one caption per image, in image order: the image positions of each caption's encoder pass
            image_rows = seen[0][ids == build.IMAGE].reshape(len(items), n_soft, -1)
            encoded = torch.zeros_like(soft).index_copy(0, torch.tensor([i for i, _, _ in items]), image_rows)
        n, k = len(items), canvases[kind]
        # stratified noise levels keep every batch spread over easy and hard canvases
        t = (torch.arange(n * k) + torch.rand(n * k, generator=gen)) / (n * k)
        t = t[torch.randperm(n * k, generator=gen)].clamp(min=0.02).reshape(k, n)
        for j in range(k):
            noised = torch.rand(target.shape, generator=gen) < t[j, :, None]
            canvas = torch.where(noised, torch.randint(0, vocab, target.shape, generator=gen), target)
            use_sc = torch.rand(n, generator=gen) < hp.sc_prob
            temperature = 0.4 + 0.4 * torch.rand(n, 1, 1, generator=gen)
            with torch.no_grad():
                first = runner.decode(cache, canvas, ids.shape[1])
            logits = runner.decode(cache, canvas, ids.shape[1], sc_logits=first / temperature, sc_mask=use_sc)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
            total = total + loss * (n / decoded)
        with torch.no_grad():
            stats[f"acc_{kind}"] = float((logits.argmax(-1) == target).all(-1).float().mean())
    aux, aux_stats = heads.loss(vis_hidden, soft.reshape(-1, soft.shape[-1]), aux_targets(scenes),
                                None if encoded is None else encoded.reshape(-1, encoded.shape[-1]))
    if lookups:
        lookup = sum(lookups) / len(lookups)
        aux = aux + lookup
        aux_stats["lookup"] = float(lookup.detach())
    weight = hp.aux_weight_final + (hp.aux_weight - hp.aux_weight_final) * max(0.0, 1 - step / max(1, hp.steps))
    stats.update(diffusion=float(total.detach()), aux=float(aux.detach()), **aux_stats)
    return total + weight * aux, stats


def vision_step_loss(runner: Runner, heads: AuxHeads, hp: HParams, step: int) -> tuple[torch.Tensor, dict]:
    """Stage 1: the auxiliary heads alone, on the vision tower and the embedded soft tokens (no language model
    pass, so a step costs about a third of a full one)."""
    rng = np.random.default_rng([hp.seed, 2, step])
    scenes = [sw.generate_scene(rng) for _ in range(hp.batch_images)]
    vis_hidden, soft, _ = runner.vision([s.image for s in scenes])
    aux, stats = heads.loss(vis_hidden, soft.reshape(-1, soft.shape[-1]), aux_targets(scenes))
    return aux, {"aux": float(aux.detach()), **stats}


@contextlib.contextmanager
def _block_output(model, index: int | None) -> Iterator[list[torch.Tensor]]:
    """Collects the output of encoder block ``index`` (nothing when ``index`` is None) during a ``with``."""
    seen: list[torch.Tensor] = []
    if index is None:
        yield seen
        return
    layer = model.model.encoder.language_model.layers[index]
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out[0] if isinstance(out, tuple) else out))
    try:
        yield seen
    finally:
        handle.remove()


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def greedy_answers(runner: Runner, images: Sequence[np.ndarray], prompts: Sequence[str], steps: int = 12,
                   seed: int = 0, entropy_bound: float = TRANSFORMERS_ENTROPY_BOUND) -> list[str]:
    """A batched greedy version of the model's entropy-bounded sampler, for monitoring during training only
    (the reported accuracy comes from the adapter's own sampler, ``benchmarks/shapes_accuracy.py``)."""
    gen = torch.Generator().manual_seed(seed)
    _, soft, n_soft = runner.vision(list(images))
    ids = torch.tensor([prompt_ids(runner.tok, p, n_soft) for p in prompts])
    cache = runner.encode(ids, soft)
    vocab = runner.model.config.text_config.vocab_size
    shape = (len(prompts), build.CANVAS_LENGTH)
    canvas = torch.randint(0, vocab, shape, generator=gen)
    sc = None
    for i in range(steps):
        logits = runner.decode(cache, canvas, ids.shape[1], sc_logits=sc)
        temperature = 0.4 + 0.4 * (steps - i) / steps
        processed = logits / temperature
        argmax = processed.argmax(-1)
        entropy = torch.distributions.Categorical(logits=processed).entropy()
        values, order = entropy.sort(dim=-1, stable=True)
        keep = torch.zeros_like(canvas, dtype=torch.bool).scatter(1, order, values.cumsum(-1) - values <= entropy_bound)
        canvas = torch.where(keep, argmax, torch.randint(0, vocab, shape, generator=gen))
        sc = processed
    out = []
    for row in argmax.tolist():
        row = row[: row.index(build.EOS)] if build.EOS in row else row
        out.append(runner.tok.decode(row).strip())
    return out


def evaluate(runner: Runner, per_kind: int, seed: int = EVAL_SEED,
             entropy_bound: float = TRANSFORMERS_ENTROPY_BOUND) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    res = {}
    for kind in KINDS:
        scenes = [sw.generate_scene(rng) for _ in range(per_kind)]
        prompts = [next(p for k, p in questions(s, rng, 1) if k == kind) for s in scenes]
        got = greedy_answers(runner, [s.image for s in scenes], prompts, entropy_bound=entropy_bound)
        res[kind] = float(np.mean([g == sw.answer(s, p) for g, s, p in zip(got, scenes, prompts)]))
    return res


# ----------------------------------------------------------------------------- loop

def _lr_at(step: int, hp: HParams) -> float:
    """Learning rate at global step ``step``: stage 1 warms up to ``vision_lr`` and stays; stage 2 starts its own
    warm-up and cosine decay."""
    if step < hp.vision_steps:
        return hp.vision_lr * min(1.0, (step + 1) / hp.warmup)
    step -= hp.vision_steps
    if step < hp.warmup:
        return hp.lr * (step + 1) / hp.warmup
    progress = (step - hp.warmup) / max(1, hp.steps - hp.warmup)
    return hp.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def new_model(seed: int, vision_layers: int = 2):
    from transformers import DiffusionGemmaForBlockDiffusion

    torch.manual_seed(seed)
    return DiffusionGemmaForBlockDiffusion(build.make_config(vision={"num_hidden_layers": vision_layers}))


def model_and_heads(hp: HParams):
    """A fresh model for the recipe ``hp`` and the auxiliary heads it trains with."""
    model = new_model(hp.seed, hp.vision_layers)
    heads = AuxHeads(model.config.vision_config.hidden_size, model.config.text_config.hidden_size,
                     encoder_block=hp.lm_aux_layer >= 0, object_shape=hp.object_shape,
                     lookup_vocab=model.config.text_config.vocab_size if hp.lookup_layer >= 0 else 0,
                     caption_lookup=hp.caption_lookup)
    return model, heads


def save_checkpoint_folder(model, folder: Path, entropy_bound: float = TRANSFORMERS_ENTROPY_BOUND) -> None:
    """A standard transformers checkpoint folder (config, safetensors, tokenizer, image processor, chat template,
    the sampler's settings) plus ``SHA256SUMS`` over its files."""
    import hashlib

    from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
        DiffusionGemmaGenerationConfig, EntropyBoundSamplerConfig)

    folder.mkdir(parents=True, exist_ok=True)
    # the transformers defaults but for the entropy bound, written out so that the checkpoint states how it is
    # meant to be sampled
    model.generation_config = DiffusionGemmaGenerationConfig(
        max_new_tokens=build.CANVAS_LENGTH, max_denoising_steps=48, t_min=0.4, t_max=0.8, stability_threshold=1,
        confidence_threshold=0.005, sampler_config=EntropyBoundSamplerConfig(entropy_bound=entropy_bound),
        bos_token_id=build.BOS, eos_token_id=build.EOS, pad_token_id=build.PAD)
    model.save_pretrained(folder, safe_serialization=True)
    build.make_tokenizer().save_pretrained(folder)
    build.make_processor().save_pretrained(folder)
    lines = [f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f.name}"
             for f in sorted(folder.iterdir()) if f.is_file() and f.name not in ("SHA256SUMS", "training.json")]
    (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def train(out_dir: str | Path, hp: HParams, progress: bool = True) -> dict:
    if hp.caption_lookup and (hp.lookup_layer < 0 or hp.lm_aux_layer not in (-1, hp.lookup_layer)):
        raise ValueError("caption_lookup needs lookup_layer, and lm_aux_layer unset or the same block")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(hp.threads)
    model, heads = model_and_heads(hp)
    model.train()
    params = list(model.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay, betas=(0.9, 0.98))
    start, elapsed, threads = 0, 0.0, hp.threads
    ck = out / f"{_CKPT}.pt"
    log = out / "log.jsonl"
    if ck.exists():
        state = torch.load(ck, weights_only=True)
        start, elapsed = int(state["step"]), float(state["elapsed"])
        threads = (state.get("hparams") or {}).get("threads", hp.threads)
        saved = {k: v for k, v in _saved_settings(state).items() if k not in _FREE}
        wanted = {k: v for k, v in asdict(hp).items() if k not in _FREE}
        in_stage_one = start <= min(saved.get("vision_steps", 0), hp.vision_steps)
        if in_stage_one:
            saved.update({k: wanted[k] for k in _STAGE_TWO})
        if saved != wanted:
            raise ValueError(f"{ck} was written with other settings: {saved}; rerun with those to resume")
        model.load_state_dict(state["model"])
        # in stage 1 the encoder-block and lookup heads have not moved from their initial values, which come last
        heads.load_state_dict(state["heads"], strict=not in_stage_one)
        if in_stage_one:
            group = state["opt"]["param_groups"][0]
            group["params"] = list(range(len(params)))
            state["opt"]["state"] = {i: v for i, v in state["opt"]["state"].items() if i < len(params)}
        opt.load_state_dict(state["opt"])
    runner = Runner(model, build.make_tokenizer(), build.make_processor())
    t0 = time.time() - elapsed
    last = hp.vision_steps + hp.steps
    for step in range(start, last):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, hp)
        if step < hp.vision_steps:
            loss, stats = vision_step_loss(runner, heads, hp, step)
        else:  # stage 2 draws the same data as a run without stage 1
            loss, stats = step_loss(runner, heads, hp, step - hp.vision_steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        done = step + 1
        row = {"step": done, "loss": round(float(loss.detach()), 4), "time": round(time.time() - t0, 1),
               **{k: round(v, 4) for k, v in stats.items()}}
        if done > hp.vision_steps and ((done - hp.vision_steps) % hp.eval_every == 0 or done == last):
            model.eval()
            row["eval"] = evaluate(runner, hp.eval_per_kind, entropy_bound=hp.entropy_bound)
            model.train()
        with open(log, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if progress and (done % 10 == 0 or "eval" in row):
            print(json.dumps(row), flush=True)
        if done % hp.ckpt_every == 0 or done == last:
            tmp = ck.with_suffix(".tmp")
            elapsed, threads = time.time() - t0, hp.threads
            torch.save({"model": model.state_dict(), "heads": heads.state_dict(), "opt": opt.state_dict(),
                        "step": done, "elapsed": elapsed, "hparams": asdict(hp)}, tmp)
            tmp.replace(ck)  # a kill mid-write leaves the previous checkpoint intact
    model.eval()
    save_checkpoint_folder(model, out / _FINAL, hp.entropy_bound)
    # the training's own time and threads: a finished run rerun to rewrite its folder (another entropy bound)
    # changes neither
    summary = {"steps": last, "wall_s": round(elapsed, 1), "hparams": {**asdict(hp), "threads": threads}}
    (out / _FINAL / "training.json").write_text(json.dumps(summary, indent=1))
    return summary


@torch.no_grad()
def head_accuracy(checkpoint: str | Path, scenes: int = 16, seed: int = EVAL_SEED) -> dict[str, Any]:
    """Object-token accuracy of a training checkpoint's auxiliary heads on fresh scenes: how well colour, shape and
    left-to-right rank can be read off the vision tower's output, the embedded soft tokens and, when the recipe
    supervises one, an encoder block's image positions; with the lookup heads, how often they name the answer."""
    state = torch.load(checkpoint, weights_only=True)
    hp = HParams(**{**asdict(RECIPE), **_saved_settings(state)})
    model, heads = model_and_heads(hp)
    model.eval().load_state_dict(state["model"])
    heads.load_state_dict(state["heads"])
    runner = Runner(model, build.make_tokenizer(), build.make_processor())
    rng = np.random.default_rng(seed)
    drawn = [sw.generate_scene(rng) for _ in range(scenes)]
    vis_hidden, soft, n_soft = runner.vision([s.image for s in drawn])
    target = aux_targets(drawn)
    features = {"vision": (heads.vision, vis_hidden), "embedded": (heads.embedded, soft.reshape(-1, soft.shape[-1]))}
    if heads.encoder is not None:
        ids = torch.tensor([prompt_ids(runner.tok, sw.PROMPT_DESCRIBE, n_soft)] * scenes)
        with _block_output(model, hp.lm_aux_layer) as seen:
            runner.encode(ids, soft)
        features["encoder block"] = (heads.encoder, seen[0][ids == build.IMAGE])
    out: dict[str, Any] = {"step": int(state["step"])}
    for name, (head, feats) in features.items():
        _, acc = head.loss(feats, target)
        out[name] = {k: round(v, 3) for k, v in acc.items() if k != "patch"}
    if heads.objects is not None:
        out["embedded"]["object_shape"] = round(heads.object_loss(features["embedded"][1], target)[1], 3)
    if heads.lookup is not None:
        out["lookup"] = _lookup_accuracy(runner, heads, hp.lookup_layer, drawn, soft, rng)
    return out


def _lookup_accuracy(runner: Runner, heads: AuxHeads, block: int, scenes: Sequence[sw.Scene], soft: torch.Tensor,
                     rng: np.random.Generator) -> dict[str, float]:
    """Share of questions of each kind whose answer the lookup head names off the question's last word and, with
    the caption heads, share of scenes whose every object they name right by rank (``describe``)."""
    n_soft = soft.shape[1]
    res = {}
    for kind in KINDS:
        if kind == "describe" and heads.caption is None:
            continue
        prompts = [next(p for k, p in questions(s, rng, 1) if k == kind) for s in scenes]
        ids = torch.tensor([prompt_ids(runner.tok, p, n_soft) for p in prompts])
        with _block_output(runner.model, block) as seen:
            runner.encode(ids, soft)
        last = seen[0][:, -4]
        if kind == "describe":
            colour, shape = (h(last).reshape(len(scenes), _RANKS, -1).argmax(-1) for h in
                             (heads.caption.colour, heads.caption.shape))
            colours, shapes_ = heads.caption.targets(scenes)
            hit = (colour == colours) & (shape == shapes_)
            right = [bool(hit[i, : s.n_objects].all()) for i, s in enumerate(scenes)]
        else:
            wanted = [canvas_ids(runner.tok, sw.answer(s, p))[0] for s, p in zip(scenes, prompts)]
            right = (heads.lookup(last).argmax(-1) == torch.tensor(wanted)).tolist()
        res[kind] = round(float(np.mean(right)), 3)
    return res


def add_recipe_options(parser, skip: Sequence[str] = (), given_only: bool = False) -> None:
    """One command-line option per recipe setting (``--name``; ``--name`` / ``--no-name`` for a switch), each
    defaulting to the recipe's value, or to None with ``given_only`` so that the caller sees which were given."""
    for name, value in asdict(RECIPE).items():
        if name in skip:
            continue
        flag, default = f"--{name.replace('_', '-')}", None if given_only else value
        if isinstance(value, bool):  # bool("False") would be True
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            parser.add_argument(flag, type=type(value), default=default)


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description="train diffusion-gemma-shapes (resumable: rerun to continue)")
    p.add_argument("--heads", metavar="CHECKPOINT", default=None,
                   help="only print the object-token accuracy of a training checkpoint's auxiliary heads")
    p.add_argument("--head-scenes", type=int, default=16, help="fresh scenes --heads reads (default 16)")
    p.add_argument("--out", required=False)
    add_recipe_options(p)
    p.add_argument("--no-progress", action="store_true")
    a = vars(p.parse_args(argv))
    out, quiet, checkpoint, head_scenes = a.pop("out"), a.pop("no_progress"), a.pop("heads"), a.pop("head_scenes")
    if checkpoint is not None:
        result = head_accuracy(checkpoint, scenes=head_scenes)
        print(json.dumps(result))
        return result
    if out is None:
        p.error("--out is required")
    return train(out, HParams(**a), progress=not quiet)


if __name__ == "__main__":
    main()
