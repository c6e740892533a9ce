"""The adapter protocol: the only place that knows a model family.

An adapter turns ``(image, prompt)`` into model inputs, runs one differentiable
forward of a given token sequence, and tells the extraction code where the
image patches sit in the hooked hidden state.  Everything else in the library
(sampling, hooking, gradients, maps, refinement, metrics) is family-agnostic.

Three layouts fit this protocol:

* single bidirectional sequence (LLaDA-V, MMaDA, Dimple, the built-in model):
  every forward holds the image span, so every denoising step is feasible;
* Prefix-DLM (LaViDa): the prompt pass is cached and answer steps only see the
  cache.  ``forward`` runs prefix and answer passes with gradients in one call;
  the hooked block is then called twice and :attr:`ImageGrid.call` says which
  call holds the image span;
* encoder-decoder (DiffusionGemma): :meth:`Adapter.blocks` returns the encoder
  stack, image positions index the encoder sequence, gradients reach it through
  the decoder's cross/cached attention.

The library reads logits through :meth:`Adapter.forward_at`, at the few answer
positions it scores: an adapter that names its :meth:`Adapter.output_head`
gets the head narrowed to those rows, so a real model's (L, vocabulary)
logits, and their per-target gradients, are never built.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import InfeasibleStateError, LayerError, PromptError
from .head_rows import head_rows

STATES = ("trajectory", "final")


@dataclass(frozen=True)
class ImageGrid:
    """Where one patch grid of one image sits in the hooked hidden state.

    ``positions`` lists the sequence positions of the ``h * w`` patches in
    raster order (row-separator tokens already dropped).  ``region`` is the
    ``(x0, y0, x1, y1)`` box of the original image, in pixels, that the grid
    covers: the whole image for a base view, a sub-box for a crop.
    """

    positions: tuple[int, ...]
    shape: tuple[int, int]
    region: tuple[float, float, float, float]
    image_index: int = 0
    call: int = 0
    name: str = "base"

    def __post_init__(self) -> None:
        h, w = self.shape
        if h <= 0 or w <= 0 or len(self.positions) != h * w:
            raise ValueError(
                f"image grid {self.name!r}: {len(self.positions)} positions do not fill a {h}x{w} grid"
            )


@dataclass
class ModelInputs:
    """One prepared query: the sequence with an all-mask answer canvas plus model extras."""

    input_ids: torch.Tensor  # (L,) long: prompt, image placeholders, answer canvas
    answer_start: int
    gen_length: int
    images: list[np.ndarray]  # original RGB uint8 images, (H, W, 3)
    prompt: str
    extras: dict[str, Any] = field(default_factory=dict)  # pixel values, image sizes, caches...

    @property
    def answer_slice(self) -> slice:
        return slice(self.answer_start, self.answer_start + self.gen_length)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the first image."""
        h, w = self.images[0].shape[:2]
        return int(h), int(w)


@dataclass(frozen=True)
class GenerationConfig:
    """LLaDA masked-diffusion sampling settings (temperature 0 is greedy and deterministic)."""

    gen_length: int = 16
    steps: int | None = None  # None: one token per step (steps = gen_length)
    block_length: int | None = None  # None: a single block (pure diffusion)
    temperature: float = 0.0
    #: confidence that orders the masked positions: low_confidence (the token's
    #: probability), margin (top-1 minus top-2 probability), entropy (minus the
    #: entropy), random (needs a seed)
    remasking: str = "low_confidence"
    seed: int | None = None
    #: confident decoding (Dimple): commit every masked position whose confidence
    #: exceeds it; a step where none does commits the scheduled count
    threshold: float | None = None
    #: tokens per step: linear (LLaDA: a block's masks split evenly over its steps),
    #: timestep (Dream / Dimple: from the share still masked, on a 1 -> 1e-3 grid),
    #: or LaViDa's shift / cosine / logit_normal curves of the committed share
    schedule: str = "linear"
    #: the ``shift`` schedule's factor (LaViDa's default 3: few tokens first, many last)
    schedule_shift: float = 3.0
    #: token ids never proposed at a masked position (LLaDA-V: end-of-text,
    #: start-of-text and the header tokens), so answers cannot fill up with them
    suppress_token_ids: tuple[int, ...] = ()
    #: LLaDA-V: after a stop token is committed, fill only the positions before it and end
    #: there (the answer is cut at the stop either way; the steps that produce it differ)
    stop_early: bool = False

    def __post_init__(self):
        # family files give a JSON list; a tuple keeps the frozen config hashable
        object.__setattr__(self, "suppress_token_ids", tuple(int(i) for i in self.suppress_token_ids))

    def resolved(self) -> "GenerationConfig":
        steps = self.gen_length if self.steps is None else self.steps
        block = self.gen_length if self.block_length is None else self.block_length
        return replace(self, steps=steps, block_length=block)


class Adapter(ABC):
    """Base class of model adapters.  Subclasses implement the abstract members."""

    #: short family name shown in results and ``diffusion-cam models``
    family: str = "unknown"
    #: identifier of the loaded checkpoint (name or path)
    name: str = "unknown"
    #: fingerprint of the loaded weights where one is known (e.g. a recorded sha256), else None;
    #: a resumed bench refuses a run made with other weights under the same name
    weights_id: str | None = None
    #: which states this family supports and, if not, why
    state_support: Mapping[str, str | None] = {"trajectory": None, "final": None}
    #: whether the adapter was checked against real released weights
    verified_on_real_weights: bool = False
    #: True when the blocks after any hooked block treat the batch dimension
    #: independently and broadcast batch-1 side inputs (masks, caches), so the
    #: hooked hidden state may be repeated K times to get K gradients in one
    #: batched backward.  False falls back to a vmapped vector-Jacobian product.
    batch_expand_safe: bool = False
    #: Defaults of the explanation methods when none is given: the method spec's
    #: map formula and score and the reference's AKD border; an adapter whose model
    #: was measured (the built-in one) names its own choices.
    default_cam: str = "poscam"
    default_score: str = "logit"
    default_akd_border: str = "reflect101"

    # ------------------------------------------------------------------ model
    @property
    @abstractmethod
    def model(self) -> nn.Module:
        """The underlying torch module (for device/dtype moves and eval())."""

    @abstractmethod
    def blocks(self) -> nn.ModuleList | Sequence[nn.Module]:
        """The transformer blocks whose outputs can be hooked (image-side stack)."""

    @property
    @abstractmethod
    def mask_token_id(self) -> int | None:
        """Id of the mask token of the answer canvas (None for uniform-noise models)."""

    @property
    def stop_token_ids(self) -> frozenset[int]:
        """Ids that end the answer (EOS, end-of-turn, padding); never explained."""
        return frozenset()

    @property
    def default_layer(self) -> int:
        """A middle block; built-in adapters override with a measured choice."""
        return len(self.blocks()) // 2

    @property
    def blocks_without_image_gradient(self) -> Mapping[int, str]:
        """Blocks (non-negative indices) whose output at the image positions cannot reach the answer's
        scores, each with the reason: gradient methods refuse to hook them.  Empty when none is known."""
        return {}

    @property
    def context_length(self) -> int | None:
        """The model's maximum sequence length from its config (None when it declares none)."""
        config = getattr(self.model, "config", None)
        for part in (config, getattr(config, "text_config", None), getattr(config, "llm_config", None)):
            for name in ("max_position_embeddings", "max_sequence_length", "n_positions", "max_seq_len"):
                value = getattr(part, name, None)
                if isinstance(value, int) and value > 0:
                    return value
        return None

    def check_context(self, n_tokens: int, image_tokens: int, image_tokens_vary: bool = True) -> None:
        """Refuse a sequence the model cannot position, before any forward fails obscurely on it.

        ``image_tokens_vary``: whether a smaller image means fewer image tokens (not for fixed-grid models).
        """
        limit = self.context_length
        if limit is not None and n_tokens > limit:
            hint = "shorten the prompt or --gen-length" + (", or use a smaller image" if image_tokens_vary else "")
            raise PromptError(
                f"the input of {n_tokens} tokens ({image_tokens} of them image tokens) is above {self.family}'s "
                f"context of {limit}; {hint}")

    @property
    def default_generation(self) -> GenerationConfig:
        return GenerationConfig()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> "Adapter":
        """Move the model; CAM arithmetic stays float32 whatever the weights' dtype."""
        if isinstance(dtype, str):
            try:
                dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
            except KeyError:
                from ..errors import UnknownNameError

                raise UnknownNameError(f"unknown dtype {dtype!r}; choose float32, bfloat16 or float16") from None
        if device is not None:
            try:
                device = torch.device(device)
                self.model.to(device)
            except (RuntimeError, AssertionError) as err:
                from ..errors import ModelLoadError

                raise ModelLoadError(f"cannot use device {str(device)!r}: {err}") from None
        if dtype is not None:
            self.model.to(dtype)
        return self

    # ---------------------------------------------------------------- inputs
    @abstractmethod
    def prepare(self, images: Sequence[np.ndarray], prompt: str, gen_length: int) -> ModelInputs:
        """Build the sequence for ``prompt`` and ``images`` with an all-mask canvas of ``gen_length``."""

    @abstractmethod
    def forward(self, inputs: ModelInputs, sequence: torch.Tensor) -> torch.Tensor:
        """One differentiable forward of ``sequence`` (B, L): logits (B, L, V).

        Logits must be aligned so that ``logits[:, p]`` scores the token at
        position ``p`` (families with shifted logits shift them here).
        """

    def output_head(self) -> nn.Module | None:
        """The module that maps the final hidden states (B, L, D), row p for position p, to
        vocabulary logits; lets :meth:`forward_at` project only the rows it needs."""
        return None

    def forward_at(self, inputs: ModelInputs, sequence: torch.Tensor, positions: Sequence[int]) -> torch.Tensor:
        """Logits (B, P, V) of one differentiable forward at ``positions`` (row i scores position ``positions[i]``).

        What the library calls: a real model's (L, V) logits are gigabytes, and a
        batched backward over K targets would keep their gradient K times.  With an
        :meth:`output_head` only P rows are projected; without one the full
        :meth:`forward` is indexed.  Adapters whose logits are not one head over
        the sequence (shifted, prefix passes) override this.
        """
        with head_rows(self.output_head(), int(sequence.shape[1]), positions) as rows:
            logits = self.forward(inputs, sequence)
        return rows.pick(logits)

    @abstractmethod
    def image_grids(self, inputs: ModelInputs, sequence: torch.Tensor) -> list[ImageGrid]:
        """Patch positions and grids of the hooked hidden state for this forward."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> list[str]:
        """Text of each id (one entry per id)."""

    def answer_canvas(self, text: str, min_length: int) -> list[int]:
        """The answer canvas the model would hold after answering ``text``: its ids, then the
        end-of-answer and filler tokens up to at least ``min_length`` (``explain(..., answer=text)``)."""
        from ..errors import TargetError

        raise TargetError(f"{self.family} adapter cannot encode a given answer; explain a generated one")

    def token_id(self, word: str) -> int:
        """Id of a single-token ``word`` (contrastive distractors); adapters with a tokenizer override."""
        from ..errors import TargetError

        raise TargetError(f"{self.family} adapter cannot look up the word {word!r}; pass a token id")

    def logit_lens(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of hidden states through the final norm and output head (TAM)."""
        from ..errors import ExtractionError

        raise ExtractionError(f"{self.family} adapter does not expose its final norm and output head (the logit lens)")

    @property
    def has_logit_lens(self) -> bool:
        """Whether :meth:`logit_lens` is available (TAM needs it)."""
        return type(self).logit_lens is not Adapter.logit_lens

    def join(self, texts: Sequence[str]) -> str:
        """Join token texts into the answer string (word-level by default)."""
        return " ".join(t for t in texts if t)

    def unwrap(self, output: Any) -> torch.Tensor:
        """The hidden state of a block's output (first element of a tuple)."""
        if isinstance(output, (tuple, list)):
            output = output[0]
        if hasattr(output, "last_hidden_state"):
            output = output.last_hidden_state
        return output

    def out_of_world(self, inputs: ModelInputs, generation: Any = None) -> str | None:
        """Why ``inputs`` (and the answer ``generation`` gave, when there is one) are unlike what the model
        was trained on, so that its answer is likely meaningless; None when they look ordinary or when the
        adapter cannot tell (the default: a general model has no narrow world to leave)."""
        return None

    # ------------------------------------------------------------- generation
    def generate(self, inputs: ModelInputs, config: GenerationConfig):
        """Generate an answer and record its denoising trajectory.

        Mask-token families use the library's LLaDA sampler; families with
        their own noise process override this.
        """
        from ..generation import llada_generate

        return llada_generate(self, inputs, config)

    # ------------------------------------------------------------ validation
    def resolve_layers(self, layer: int | Sequence[int] | None) -> list[int]:
        n = len(self.blocks())
        if layer is None:
            layers = [self.default_layer]
        elif isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
            layers = [int(layer)]
        else:
            given = list(layer) if isinstance(layer, (list, tuple, range, np.ndarray)) else None
            if given is None or any(not isinstance(x, (int, np.integer)) or isinstance(x, bool) for x in given):
                raise LayerError(f"layer {layer!r} is not a block index or a list of block indices")
            layers = [int(x) for x in given]
            if not layers:
                raise LayerError("no layer given: pass an index or a non-empty list of indices")
        resolved = []
        for idx in layers:
            if not -n <= idx < n:
                raise LayerError(
                    f"layer {idx} is out of range: {self.family} model {self.name!r} has {n} blocks "
                    f"(valid indices {-n}..{n - 1})"
                )
            reason = self.blocks_without_image_gradient.get(idx % n)
            if reason is not None:
                # every map from it would be empty: refused before the model runs, not after
                usable = [i for i in range(n) if i not in self.blocks_without_image_gradient]
                raise LayerError(f"layer {idx} gets no gradient at the image positions of {self.family} model "
                                 f"{self.name!r}: {reason}; use one of {', '.join(map(str, usable))}")
            resolved.append(idx % n)
        return resolved

    def check_state(self, state: str) -> None:
        from ..errors import UnknownNameError

        if state not in STATES:
            raise UnknownNameError(f"unknown state {state!r}; choose one of {', '.join(STATES)}")
        reason = self.state_support.get(state, "not declared by the adapter")
        if reason is not None:
            raise InfeasibleStateError(
                f"state {state!r} is infeasible for {self.family} model {self.name!r}: {reason}"
            )
