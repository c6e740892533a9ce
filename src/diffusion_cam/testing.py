"""A tiny randomly initialised LLaDA-V-style model behind the adapter protocol.

Used by the test-suite and the benchmarks: vision patches -> MLP projector ->
bidirectional transformer with a mask token, image tokens inside the one
sequence.  Its weights are random, so its answers are meaningless, but every
code path of extraction runs on it exactly as on a real model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .adapters.base import Adapter, GenerationConfig, ImageGrid, ModelInputs
from .errors import PromptError, TargetError
from .models.shapes_tiny.model import Block

SPECIALS = ["<pad>", "<bos>", "<eos>", "<mask>", "<image>", "<sep>"]
WORDS = ["a", "and", "the", "describe", "image", "what", "color", "shape", "is", "how", "many", "objects",
         "red", "green", "blue", "yellow", "purple", "circle", "square", "triangle", "cross", "one", "two", "three"]


@dataclass(frozen=True)
class TinyConfig:
    image_size: int = 48
    patch: int = 8
    dim: int = 32
    heads: int = 2
    layers: int = 4
    vision_layers: int = 1
    seed: int = 0
    #: output vocabulary: the words, or more (unused ids after them) to give the head a real model's size
    vocab_size: int = len(SPECIALS) + len(WORDS)
    #: positions the model can hold
    context: int = 512

    @property
    def grid(self) -> int:
        return self.image_size // self.patch


class TinyDMLLM(nn.Module):
    def __init__(self, config: TinyConfig = TinyConfig()) -> None:
        super().__init__()
        torch.manual_seed(config.seed)
        self.config = config
        c = config
        self.patch_embed = nn.Linear(3 * c.patch * c.patch, c.dim)
        self.vision_pos = nn.Parameter(torch.randn(c.grid * c.grid, c.dim) * 0.02)
        self.vision_blocks = nn.ModuleList(Block(c.dim, c.heads) for _ in range(c.vision_layers))
        self.projector = nn.Sequential(nn.Linear(c.dim, c.dim), nn.GELU(), nn.Linear(c.dim, c.dim))
        self.embed = nn.Embedding(len(SPECIALS) + len(WORDS), c.dim)
        self.pos = nn.Parameter(torch.randn(c.context, c.dim) * 0.02)
        self.blocks = nn.ModuleList(Block(c.dim, c.heads) for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.dim)
        self.head = nn.Linear(c.dim, max(c.vocab_size, len(SPECIALS) + len(WORDS)))
        with torch.no_grad():
            # random weights would often answer <eos> at once; keep answers made of words
            self.head.bias[: len(SPECIALS)] = -10.0
            self.head.bias[len(SPECIALS) + len(WORDS):] = -10.0

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        p = self.config.patch
        patches = F.unfold(pixels, kernel_size=p, stride=p).transpose(1, 2)  # (B, N, 3*p*p), raster order
        x = self.patch_embed(patches) + self.vision_pos
        for block in self.vision_blocks:
            x = block(x)
        return self.projector(x)

    def forward(self, input_ids: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)
        is_image = input_ids == SPECIALS.index("<image>")
        feats = self.encode_image(pixels).to(x.dtype)
        x = x.masked_scatter(is_image[..., None], feats[:, : int(is_image[0].sum())])
        x = x + self.pos[: x.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


class TinyAdapter(Adapter):
    family = "tiny-llada-v"
    batch_expand_safe = True
    name = "tiny-random"

    def __init__(self, model: TinyDMLLM | None = None, gen_length: int = 8) -> None:
        self._model = (model or TinyDMLLM()).eval()
        self.vocab = SPECIALS + WORDS
        self.vocab += [f"<unused{i}>" for i in range(len(self.vocab), self._model.head.out_features)]
        self._gen_length = gen_length

    @property
    def model(self) -> nn.Module:
        return self._model

    def blocks(self) -> nn.ModuleList:
        return self._model.blocks

    @property
    def mask_token_id(self) -> int:
        return SPECIALS.index("<mask>")

    @property
    def stop_token_ids(self) -> frozenset[int]:
        return frozenset({SPECIALS.index("<eos>"), SPECIALS.index("<pad>")})

    @property
    def default_generation(self) -> GenerationConfig:
        return GenerationConfig(gen_length=self._gen_length)

    def prepare(self, images: Sequence[np.ndarray], prompt: str, gen_length: int) -> ModelInputs:
        words = prompt.lower().split()
        if not words:
            raise PromptError("prompt is empty")
        unknown = [w for w in words if w not in WORDS]
        if unknown:
            raise PromptError(f"prompt word(s) {unknown} are not in the tiny model's vocabulary")
        c = self._model.config
        img = torch.from_numpy(np.asarray(images[0], dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        img = F.interpolate(img, size=(c.image_size, c.image_size), mode="bilinear", align_corners=False)
        ids = ([SPECIALS.index("<bos>")] + [SPECIALS.index("<image>")] * (c.grid * c.grid)
               + [self.vocab.index(w) for w in words] + [SPECIALS.index("<sep>")])
        answer_start = len(ids)
        ids += [self.mask_token_id] * gen_length
        context = self._model.pos.shape[0]
        if len(ids) > context:
            raise PromptError(
                f"prompt of {len(words)} words plus {c.grid * c.grid} image tokens and a {gen_length}-token answer "
                f"is {len(ids)} tokens, above the tiny model's context of {context}"
            )
        return ModelInputs(torch.tensor(ids), answer_start, gen_length, list(images), prompt, {"pixels": img})

    def forward(self, inputs: ModelInputs, sequence: torch.Tensor) -> torch.Tensor:
        # pixels follow the weights' dtype (--dtype bfloat16/float16); prepare() makes them float32
        dtype = next(self._model.parameters()).dtype
        pixels = inputs.extras["pixels"].to(self.device, dtype).expand(sequence.shape[0], -1, -1, -1)
        return self._model(sequence, pixels)

    def output_head(self) -> nn.Module:
        return self._model.head

    def image_grids(self, inputs: ModelInputs, sequence: torch.Tensor) -> list[ImageGrid]:
        positions = torch.nonzero(sequence == SPECIALS.index("<image>")).flatten().tolist()
        g = self._model.config.grid
        h, w = inputs.image_size
        return [ImageGrid(tuple(positions), (g, g), (0.0, 0.0, float(w), float(h)))]

    def decode(self, ids: Sequence[int]) -> list[str]:
        return [self.vocab[i] if not self.vocab[i].startswith("<") else "" for i in ids]

    def answer_canvas(self, text: str, min_length: int) -> list[int]:
        words = text.lower().split()
        unknown = [w for w in words if w not in WORDS]
        if not words or unknown:
            raise TargetError(f"answer {text!r} has words outside the tiny model's vocabulary: {unknown}")
        ids = [self.vocab.index(w) for w in words]
        return ids + [SPECIALS.index("<eos>")] * max(1, min_length - len(ids))

    def token_id(self, word: str) -> int:
        if word not in self.vocab:
            raise TargetError(f"word {word!r} is not in the tiny model's vocabulary")
        return self.vocab.index(word)

    def logit_lens(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._model.head(self._model.norm(hidden))


def tiny_adapter(seed: int = 0, gen_length: int = 8, **config) -> TinyAdapter:
    """A fresh tiny adapter with seeded random weights."""
    return TinyAdapter(TinyDMLLM(TinyConfig(seed=seed, **config)), gen_length=gen_length)


def random_image(seed: int = 0, size: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def logits_both_ways(adapter: Adapter, inputs: ModelInputs, sequence: torch.Tensor, positions: Sequence[int]):
    """``(full, part, shapes)``: the full forward's logits, ``forward_at(positions)``'s, and the output
    shapes of every call of the adapter's output head during the two (checks that the head was narrowed)."""
    shapes: list[tuple[int, ...]] = []
    handle = adapter.output_head().register_forward_hook(lambda _m, _a, out: shapes.append(tuple(out.shape)))
    try:
        with torch.no_grad():
            full = adapter.forward(inputs, sequence)
            part = adapter.forward_at(inputs, sequence, positions)
    finally:
        handle.remove()
    return full, part, shapes
