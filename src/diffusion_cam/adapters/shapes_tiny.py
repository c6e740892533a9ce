"""Adapter for the built-in shapes-tiny model (LLaDA-V layout: image tokens inside one sequence)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from torch import nn

from ..errors import ModelLoadError, PromptError, TargetError
from .base import Adapter, GenerationConfig, ImageGrid, ModelInputs
from .registry import ModelEntry, register_model

#: block, map formula, score and AKD border chosen by ``benchmarks/sweep_shapes.py`` on held-out
#: scenes (README, "Choosing the layer, the formula and the score"; docs/benchmarks.md)
DEFAULT_LAYER = 0
DEFAULT_CAM = "layercam"
DEFAULT_SCORE = "logodds"
DEFAULT_AKD_BORDER = "zero"


class ShapesTinyAdapter(Adapter):
    family = "shapes-tiny"
    batch_expand_safe = True
    state_support = {"trajectory": None, "final": None}
    verified_on_real_weights = True
    default_cam = DEFAULT_CAM
    default_score = DEFAULT_SCORE
    default_akd_border = DEFAULT_AKD_BORDER

    def __init__(self, model, name: str = "shapes-tiny") -> None:
        from ..models.shapes_tiny import tokenizer_for

        self._model = model.eval()
        self.tokenizer = tokenizer_for(model)
        self.name = name
        self.weights_id = getattr(model, "weights_sha256", None)

    # ------------------------------------------------------------------ model
    @property
    def model(self) -> nn.Module:
        return self._model

    def blocks(self) -> nn.ModuleList:
        return self._model.blocks

    @property
    def mask_token_id(self) -> int:
        return self.tokenizer.mask_id

    @property
    def stop_token_ids(self) -> frozenset[int]:
        return frozenset({self.tokenizer.eos_id, self.tokenizer.pad_id})

    @property
    def default_layer(self) -> int:
        return DEFAULT_LAYER if DEFAULT_LAYER < len(self.blocks()) else len(self.blocks()) // 2

    @property
    def blocks_without_image_gradient(self) -> dict[int, str]:
        # the head reads each position's own last hidden state, so the last block's output at an
        # image position only feeds that position's logits, never an answer token's
        last = len(self.blocks()) - 1
        return {last: "it is the last block, whose output at a position feeds only that position's own logits"}

    @property
    def default_generation(self) -> GenerationConfig:
        return GenerationConfig(gen_length=self._model.config.gen_length)

    # ----------------------------------------------------------------- inputs
    @staticmethod
    def normalise_prompt(prompt: str) -> str:
        # users type questions with capitals and punctuation; the model knows lower-case words
        return re.sub(r"[?.!,;:]", " ", prompt).lower().strip()

    def prepare(self, images: Sequence[np.ndarray], prompt: str, gen_length: int) -> ModelInputs:
        if len(images) != 1:
            raise PromptError(f"shapes-tiny takes exactly one image, got {len(images)}")
        text = self.normalise_prompt(prompt)
        if not text:
            raise PromptError("prompt is empty: ask e.g. 'describe the image' or 'how many objects'")
        try:
            ids, answer_start = self.tokenizer.build_input_ids(text, gen_length)
        except ValueError as err:
            raise PromptError(f"prompt {prompt!r}: {err}") from None
        self.check_context(len(ids), self.tokenizer.n_image_tokens, image_tokens_vary=False)
        size = self._model.config.image_size
        image = images[0]
        if image.shape[:2] != (size, size):
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        pixels = self._model.preprocess(np.array(image))  # a writable copy: torch will not wrap read-only arrays
        return ModelInputs(ids, answer_start, gen_length, list(images), prompt, {"pixel_values": pixels})

    def forward(self, inputs: ModelInputs, sequence: torch.Tensor) -> torch.Tensor:
        # pixels follow the weights' dtype (--dtype bfloat16/float16); prepare() makes them float32
        pixels = inputs.extras["pixel_values"].to(self.device, self._model.lm_head.weight.dtype)
        pixels = pixels.expand(sequence.shape[0], *pixels.shape[1:])
        return self._model(sequence.to(self.device), pixels)

    # no output_head(): the 30-word head costs nothing over every row, and projecting them all
    # keeps the maps bit for bit those the recorded benchmarks were measured with

    def image_grids(self, inputs: ModelInputs, sequence: torch.Tensor) -> list[ImageGrid]:
        positions = torch.nonzero(sequence == self.tokenizer.image_id).flatten().tolist()
        h, w = inputs.image_size
        return [ImageGrid(tuple(positions), self._model.grid_size, (0.0, 0.0, float(w), float(h)))]

    def out_of_world(self, inputs: ModelInputs, generation: Any = None) -> str | None:
        from .shapes_world import MIN_CONFIDENCE, image_reason

        reason = image_reason(inputs.images[0])
        if reason is not None or generation is None or not generation.steps:
            return reason
        # an image that passes the checks above may still puzzle the model; in-world answers are near-certain
        stops = self.stop_token_ids
        committed = [(q, tid) for step in generation.steps for tid, q in zip(step.committed_ids, step.probabilities)
                     if tid not in stops]
        if committed:
            q, tid = min(committed)
            if q < MIN_CONFIDENCE:
                return (f"the model is unsure of its answer (probability {q:.2f} for {self.decode([tid])[0]!r}, "
                        f"against at least {MIN_CONFIDENCE} on Shapes scenes)")
        return None

    # ------------------------------------------------------------------ text
    def decode(self, ids: Sequence[int]) -> list[str]:
        return [self.tokenizer.vocab[int(i)] if int(i) not in self.tokenizer.special_ids else "" for i in ids]

    def answer_canvas(self, text: str, min_length: int) -> list[int]:
        words = self.normalise_prompt(text)
        if not words:
            raise TargetError(f"the given answer {text!r} is empty")
        try:
            # as in training: the answer, then <eos> to the end of the canvas
            return self.tokenizer.answer_canvas(words, max(min_length, len(words.split()) + 1))
        except ValueError as err:
            raise TargetError(f"answer {text!r}: {err}") from None

    def token_id(self, word: str) -> int:
        tid = self.tokenizer.token_to_id.get(word.strip().lower())
        if tid is None:
            raise TargetError(f"word {word!r} is not in the shapes-tiny vocabulary")
        return tid

    def logit_lens(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._model.lm_head(self._model.norm(hidden))


def load_shapes_tiny(weights_dir: str | Path | None = None, verify: bool = True,
                     trust_remote_code: bool = False, **_: Any) -> ShapesTinyAdapter:
    """Load the shipped weights (or ``weights_dir``), refusing a file whose sha256 does not match."""
    from safetensors import SafetensorError

    from ..models.shapes_tiny import WEIGHTS_DIR, load_pretrained
    from ..safe_load import verify_sha256

    directory = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    weights = directory / "model.safetensors"
    if not weights.is_file() or not (directory / "config.json").is_file():
        raise ModelLoadError(
            f"shapes-tiny weights not found in {directory} (expected model.safetensors and config.json); "
            "reinstall the package or train them with 'diffusion-cam train-shapes'"
        )
    try:
        if verify:
            # ModelLoadError naming the file, both digests and whether it looks truncated
            recorded = json.loads((directory / "config.json").read_text(encoding="utf-8")).get("weights_sha256")
            if recorded:
                verify_sha256(weights, recorded)
        model = load_pretrained(directory, verify=False)
    except ValueError as err:
        raise ModelLoadError(f"cannot load shapes-tiny from {directory}: {err}") from None
    except (SafetensorError, RuntimeError, OSError, KeyError) as err:
        raise ModelLoadError(f"cannot load shapes-tiny weights {weights}: {err}") from None
    return ShapesTinyAdapter(model, name="shapes-tiny" if weights_dir is None else str(directory))


register_model(ModelEntry(
    name="shapes-tiny", loader=load_shapes_tiny, family="shapes-tiny",
    description="built-in LLaDA-V-style masked-diffusion VLM trained on the Shapes world (ships with the package)",
))
