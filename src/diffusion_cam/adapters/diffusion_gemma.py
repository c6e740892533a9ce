"""DiffusionGemma (transformers 5.x ``DiffusionGemmaForBlockDiffusion``).

Layout.  The prompt, with each image's soft tokens between BOI and EOI, runs
through the **encoder**, which fills a KV cache; the answer canvas is denoised
by the **decoder**, which reads that cache.  Image tokens therefore live only
in the encoder sequence: :meth:`DiffusionGemmaAdapter.blocks` is the encoder's
language-model stack and gradients of decoder logits reach it through the
cache.  The library's sequence for this family is::

    [prompt ids (encoder) | canvas 0 | canvas 1 | ... | step tag]

``answer_start`` is the prompt length and the canvases together are the
answer (``gen_length`` is rounded up to whole canvases).  The last slot is not
a token: it names the denoising step whose self-conditioning input the forward
replays (``>= 0``: a recorded step; :data:`FINAL`: the generated answer;
:data:`FRESH`: a prepared, not yet generated sequence).  The decoder of
canvas ``c`` reads the encoder cache of the prompt and canvases ``< c``.

Denoising is uniform-noise with self-conditioning, not mask-token: there is
no mask id, the canvas starts as random vocabulary tokens and tokens that are
not accepted are re-noised.  :meth:`DiffusionGemmaAdapter.generate` runs the
model's entropy-bounded sampler itself (seeded, so runs repeat) and records
every step's canvas and self-conditioning input, so the ``trajectory`` state
replays exactly the forward that produced each token.

Two transformers details are handled here:

* the encoder's plain forward computes the vision-bidirectional attention
  mask and discards it (5.23), running image tokens causally; the adapter
  builds the mask dict itself with ``create_masks_for_generate`` and passes it;
* the last encoder layer feeds nothing the decoder reads, so it gets no
  gradient: layer indices default to a middle layer.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .. import progress
from ..errors import ExtractionError, InfeasibleStateError, ModelLoadError, PromptError, TargetError
from .base import Adapter, GenerationConfig, ImageGrid, ModelInputs
from .head_rows import head_rows

#: step tag of the generated answer (final state)
FINAL = -1
#: step tag of a prepared sequence that has not been denoised yet
FRESH = -2

# the model's sampler defaults (transformers DiffusionGemmaGenerationConfig)
_SAMPLER_DEFAULTS = {"max_denoising_steps": 48, "t_min": 0.4, "t_max": 0.8, "entropy_bound": 0.1,
                     "stability_threshold": 1, "confidence_threshold": 0.005}


def image_grid_shape(position_ids: torch.Tensor, pooling: int) -> tuple[int, int]:
    """Soft-token grid ``(h, w)`` of one image from its patch ``(x, y)`` positions.

    The vision pooler averages ``pooling x pooling`` patches into one soft
    token, indexed ``x // k + (width // k) * (y // k)``: row-major over the
    patch grid divided by ``k``.  Padding patches are ``(-1, -1)``.
    """
    valid = (position_ids >= 0).all(-1)
    if not bool(valid.any()):
        raise ExtractionError("image_position_ids holds no valid patch: the image processor produced no patches")
    xy = position_ids[valid]
    width = int(xy[:, 0].max()) + 1
    height = int(xy[:, 1].max()) + 1
    return height // pooling, width // pooling


def image_spans(input_ids: Sequence[int], image_token_id: int) -> list[tuple[int, int]]:
    """``(start, length)`` of every contiguous run of image tokens, in order."""
    spans: list[tuple[int, int]] = []
    start = None
    for i, tid in enumerate(list(input_ids) + [None]):
        if tid == image_token_id and start is None:
            start = i
        elif tid != image_token_id and start is not None:
            spans.append((start, i - start))
            start = None
    return spans


class DiffusionGemmaAdapter(Adapter):
    family = "diffusion-gemma"
    state_support = {"trajectory": None, "final": None}
    verified_on_real_weights = False

    def __init__(self, model: nn.Module, tokenizer: Any, image_processor: Any, *, chat_template: str | None = None,
                 name: str = "diffusion-gemma", seed: int = 0, **sampler: Any) -> None:
        unknown = set(sampler) - set(_SAMPLER_DEFAULTS)
        if unknown:
            raise TypeError(f"unknown DiffusionGemma sampler option(s): {', '.join(sorted(unknown))}")
        self._model = model.eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.chat_template = chat_template
        self.name = name
        self.seed = seed
        cfg = model.config
        self.canvas_length = int(cfg.canvas_length)
        self.image_token_id = int(cfg.image_token_id)
        self.vocab_size = int(cfg.text_config.vocab_size)
        self.pooling = int(cfg.vision_config.pooling_kernel_size)
        gen = getattr(model, "generation_config", None)
        self.sampler = {}
        for key, default in _SAMPLER_DEFAULTS.items():
            value = sampler.get(key)
            if value is None and key == "entropy_bound":
                sc = getattr(gen, "sampler_config", None)
                value = getattr(sc, "entropy_bound", None) if sc is not None else None
            if value is None:
                value = getattr(gen, key, None)
            self.sampler[key] = default if value is None else value

    # ------------------------------------------------------------------ model
    @property
    def model(self) -> nn.Module:
        return self._model

    def blocks(self) -> nn.ModuleList:
        return self._model.model.encoder.language_model.layers

    @property
    def mask_token_id(self) -> None:
        return None

    @property
    def stop_token_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        for source in (self._model.config.text_config, getattr(self._model, "generation_config", None)):
            for attr in ("eos_token_id", "pad_token_id"):
                value = getattr(source, attr, None)
                if value is None:
                    continue
                ids.update(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
        return frozenset(ids)

    @property
    def default_layer(self) -> int:
        # the last encoder layer gets no gradient (nothing downstream reads its output)
        n = len(self.blocks())
        return max(0, min(n // 2, n - 2))

    @property
    def default_generation(self) -> GenerationConfig:
        return GenerationConfig(gen_length=self.canvas_length, steps=int(self.sampler["max_denoising_steps"]))

    @property
    def _pad_id(self) -> int:
        pad = self._model.config.text_config.pad_token_id
        return 0 if pad is None else int(pad)

    # ---------------------------------------------------------------- inputs
    def _render(self, n_images: int, prompt: str) -> str:
        content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": prompt}]
        messages = [{"role": "user", "content": content}]
        kwargs = {"chat_template": self.chat_template} if self.chat_template else {}
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
        except ValueError as err:  # no chat template on the tokenizer
            raise PromptError(f"cannot build the DiffusionGemma prompt: {err}") from None

    def prepare(self, images: Sequence[np.ndarray], prompt: str, gen_length: int) -> ModelInputs:
        from PIL import Image

        if not prompt or not prompt.strip():
            raise PromptError("prompt is empty")
        if not images:
            raise PromptError("DiffusionGemma explanations need at least one image")
        text = self._render(len(images), prompt)
        image_token = self.tokenizer.convert_ids_to_tokens(self.image_token_id)
        pieces = text.split(image_token)
        if len(pieces) - 1 != len(images):
            raise PromptError(
                f"the chat template placed {len(pieces) - 1} image token(s) {image_token!r} for {len(images)} image(s)"
            )
        feats = self.image_processor(images=[Image.fromarray(np.asarray(im)) for im in images], return_tensors="pt")
        counts = [int(n) for n in feats["num_soft_tokens_per_image"]]
        # expand each placeholder as Gemma4Processor.replace_image_token does: BOI, n soft tokens, EOI
        boi = self.tokenizer.convert_ids_to_tokens(int(self._model.config.boi_token_id))
        eoi = self.tokenizer.convert_ids_to_tokens(int(self._model.config.eoi_token_id))
        expanded = pieces[0]
        for n, rest in zip(counts, pieces[1:]):
            expanded += boi + image_token * n + eoi + rest
        ids = list(self.tokenizer(expanded, add_special_tokens=False)["input_ids"])
        spans = image_spans(ids, self.image_token_id)
        if [length for _, length in spans] != counts:
            raise PromptError(
                f"image token runs {[length for _, length in spans]} do not match the image processor's soft token "
                f"counts {counts}: the prompt text must not contain image tokens itself"
            )
        grids = []
        for i, ((start, length), pos) in enumerate(zip(spans, feats["image_position_ids"])):
            h, w = image_grid_shape(pos, self.pooling)
            if h * w != length:
                raise ExtractionError(f"image {i}: a {h}x{w} soft-token grid does not fill its {length} tokens")
            height, width = np.asarray(images[i]).shape[:2]
            grids.append(ImageGrid(tuple(range(start, start + length)), (h, w), (0.0, 0.0, float(width), float(height)),
                                   image_index=i, name=f"image{i}"))
        # the encoder positions prompt and image; the answer canvases are the decoder's own
        self.check_context(len(ids), sum(counts))
        n_canvases = max(1, math.ceil(int(gen_length) / self.canvas_length))
        length = n_canvases * self.canvas_length
        answer_start = len(ids)
        sequence = ids + [self._pad_id] * length + [FRESH]
        extras = {"pixel_values": feats["pixel_values"], "image_position_ids": feats["image_position_ids"],
                  "grids": grids, "states": {}}
        return ModelInputs(torch.tensor(sequence, dtype=torch.long), answer_start, length, list(images), prompt, extras)

    def image_grids(self, inputs: ModelInputs, sequence: torch.Tensor) -> list[ImageGrid]:
        return list(inputs.extras["grids"])

    # --------------------------------------------------------------- forward
    def _encode(self, inputs: ModelInputs, prefix: torch.Tensor):
        """Encoder pass over ``prefix`` (B, n) with the vision-bidirectional mask; returns the KV cache."""
        from transformers import DynamicCache

        model = self._model
        encoder = model.model.encoder
        batch, length = prefix.shape
        device = prefix.device
        cache = DynamicCache(config=model.config.get_text_config(decoder=True))
        mm = (prefix == self.image_token_id).long()
        positions = torch.arange(length, device=device)[None].expand(batch, -1)
        # transformers 5.23's encoder forward drops the mask it builds; build and pass it explicitly
        dummy = torch.empty((batch, length, 0), dtype=next(model.parameters()).dtype, device=device)
        masks = encoder.create_masks_for_generate(
            config=model.config, inputs_embeds=dummy, attention_mask=torch.ones_like(prefix, dtype=torch.bool),
            past_key_values=cache, position_ids=positions, mm_token_type_ids=mm,
        )
        pixels = inputs.extras["pixel_values"].to(device)
        encoder(
            input_ids=prefix, pixel_values=pixels.to(dummy.dtype),
            image_position_ids=inputs.extras["image_position_ids"].to(device),
            attention_mask=masks, past_key_values=cache, position_ids=positions, mm_token_type_ids=mm,
        )
        return cache

    def _decode(self, cache, canvas: torch.Tensor, start: int, soft: torch.Tensor | None = None,
                sc_logits: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Decoder pass over ``canvas`` (B, C) reading ``cache``.

        ``soft`` replaces the self-conditioning soft embeddings (replay);
        ``sc_logits`` lets the decoder compute them from logits (sampling).
        Returns the logits and the soft embeddings the decoder used.
        """
        decoder = self._model.model.decoder
        seen: dict[str, torch.Tensor] = {}

        def swap(_module, args):
            if soft is not None:
                args = (args[0], soft.to(device=args[1].device, dtype=args[1].dtype).expand_as(args[1]))
            seen["soft"] = args[1]
            return args

        positions = torch.arange(start, start + canvas.shape[1], device=canvas.device)[None]
        handle = decoder.self_conditioning.register_forward_pre_hook(swap)
        try:
            out = self._model(past_key_values=cache, decoder_input_ids=canvas, decoder_position_ids=positions,
                              self_conditioning_logits=sc_logits)
        finally:
            handle.remove()
        used = seen["soft"] if (soft is not None or sc_logits is not None) else None
        return out.logits, used

    def forward(self, inputs: ModelInputs, sequence: torch.Tensor) -> torch.Tensor:
        start, logits = self._canvas_logits(inputs, sequence)
        batch, length = sequence.shape
        before = logits.new_zeros((batch, start, logits.shape[-1]))
        after = logits.new_zeros((batch, length - start - logits.shape[1], logits.shape[-1]))
        return torch.cat([before, logits, after], dim=1)

    def forward_at(self, inputs: ModelInputs, sequence: torch.Tensor, positions: Sequence[int]) -> torch.Tensor:
        start, picked = self._canvas_logits(inputs, sequence, [int(p) for p in positions])
        rows = torch.tensor([int(p) - start for p in positions], dtype=torch.long, device=picked.device)
        inside = (rows >= 0) & (rows < self.canvas_length)
        # outside the replayed canvas the decoder scores nothing: zeros, as forward() gives
        return torch.where(inside[None, :, None], picked, torch.zeros_like(picked))

    def output_head(self) -> nn.Module:
        return self._model.lm_head

    def _canvas_logits(self, inputs: ModelInputs, sequence: torch.Tensor,
                       positions: list[int] | None = None) -> tuple[int, torch.Tensor]:
        """(start, logits) of the replayed canvas for a sequence tagged with its denoising step: every canvas
        row (B, C, V), or with ``positions`` one row per position (the canvas's nearest row outside it)."""
        tags = sequence[:, -1].unique().tolist()
        if len(tags) != 1:
            raise ExtractionError(f"a DiffusionGemma batch must replay one denoising step, got steps {tags}")
        tag = int(tags[0])
        n_canvases = inputs.gen_length // self.canvas_length
        state = inputs.extras["states"].get(tag)
        if tag == FRESH or state is None:
            if tag not in (FRESH, FINAL):
                raise ExtractionError(f"denoising step {tag} was not recorded for these inputs")
            canvas_index, soft = 0, None
        else:
            canvas_index, soft = state
        if tag == FINAL and n_canvases > 1:
            raise InfeasibleStateError(
                f"the answer spans {n_canvases} DiffusionGemma canvases and one decoder forward sees one canvas: "
                "use the trajectory state"
            )
        start = inputs.answer_start + canvas_index * self.canvas_length
        stop = start + self.canvas_length
        cache = self._encode(inputs, sequence[:, :start])
        rows = None if positions is None else [min(max(p - start, 0), self.canvas_length - 1) for p in positions]
        with head_rows(None if rows is None else self.output_head(), self.canvas_length, rows or []) as cut:
            logits, _ = self._decode(cache, sequence[:, start:stop], start, soft=soft)
        return start, (logits if rows is None else cut.pick(logits))

    # ------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(self, inputs: ModelInputs, config: GenerationConfig):
        """The model's entropy-bounded uniform-noise sampler, seeded and recorded step by step.

        Per canvas: random start canvas; at each step the decoder (fed the
        previous step's logits as self-conditioning) proposes tokens (argmax
        when ``temperature == 0``, else sampled at the model's linear
        temperature schedule times ``temperature``); the lowest-entropy
        proposals whose summed entropy minus the largest stays within the
        bound are accepted, the rest re-noised; it stops when the argmax canvas
        is stable and confident.  The canvas is the last argmax.  A token's
        commit step is the first step from which the argmax at its position
        stayed the final token.
        """
        from ..generation import GenerationResult, TrajectoryStep

        s = self.sampler
        steps = int(config.steps or s["max_denoising_steps"])
        if steps <= 0:
            from ..errors import GenerationError

            raise GenerationError(f"DiffusionGemma needs a positive number of denoising steps, got {steps}")
        seed = self.seed if config.seed is None else int(config.seed)
        rng = torch.Generator(device="cpu").manual_seed(seed)
        device = self.device
        x = inputs.input_ids.clone().to(device)
        a0, size = inputs.answer_start, self.canvas_length
        states: dict[int, tuple[int, torch.Tensor | None]] = inputs.extras["states"]
        states.clear()
        stops = torch.tensor(sorted(self.stop_token_ids - {self._pad_id}) or [-1], device=device)
        record: list[TrajectoryStep] = []
        commit_step = [-1] * inputs.gen_length
        last_logits = None
        n_canvases = inputs.gen_length // size
        progress.expect("denoising", n_canvases * steps)  # an upper bound: a stable canvas stops early
        for c in range(n_canvases):
            start = a0 + c * size
            cache = self._encode(inputs, x[None, :start])
            canvas = torch.randint(0, self.vocab_size, (size,), generator=rng).to(device)
            sc_logits = None
            argmaxes: list[torch.Tensor] = []
            confidences: list[torch.Tensor] = []  # per step, the untempered probability of each slot's argmax
            first = len(record)
            for i in range(steps):
                progress.advance("denoising")
                remaining = steps - i  # the schedule counts remaining steps, N..1
                tag = len(record)
                seq = x.clone()
                seq[start : start + size] = canvas
                seq[-1] = tag
                logits, soft = self._decode(cache, canvas[None], start, sc_logits=sc_logits)
                logits = logits[0].float()
                states[tag] = (c, None if soft is None else soft.detach().clone())
                temperature = s["t_min"] + (s["t_max"] - s["t_min"]) * remaining / steps
                processed = logits / temperature
                argmax = processed.argmax(-1)
                if config.temperature > 0:
                    probs = torch.softmax(processed / config.temperature, -1).cpu()
                    proposal = torch.multinomial(probs, 1, generator=rng)[:, 0].to(device)
                else:
                    proposal = argmax
                entropy = torch.distributions.Categorical(logits=processed).entropy()
                order = torch.sort(entropy, stable=True)
                keep_sorted = order.values.cumsum(0) - order.values <= s["entropy_bound"]
                accepted = torch.zeros_like(keep_sorted).scatter(0, order.indices, keep_sorted)
                noise = torch.randint(0, self.vocab_size, (size,), generator=rng).to(device)
                record.append(TrajectoryStep(index=tag, sequence=seq.cpu(), committed=[], committed_ids=[]))
                argmaxes.append(argmax)
                confidences.append(torch.softmax(logits, -1).gather(1, argmax[:, None])[:, 0].cpu())
                window = int(s["stability_threshold"])
                stable = len(argmaxes) > window and all(bool((a == argmax).all()) for a in argmaxes[-1 - window : -1])
                confident = float(entropy.mean()) < s["confidence_threshold"]
                sc_logits = processed[None].to(self._model.model.decoder.embed_tokens.weight.dtype)
                last_logits = sc_logits
                if stable and confident:
                    break
                canvas = torch.where(accepted, proposal, noise)
            final = argmaxes[-1]
            x[start : start + size] = final
            for j in range(size):
                step = len(argmaxes) - 1
                while step > 0 and int(argmaxes[step - 1][j]) == int(final[j]):
                    step -= 1
                commit_step[c * size + j] = first + step
                record[first + step].committed.append(c * size + j)
                record[first + step].committed_ids.append(int(final[j]))
                # a slot is committed at the first step from which its argmax no longer changed
                record[first + step].probabilities.append(float(confidences[step][j]))
            hit = torch.isin(final, stops).nonzero()
            if len(hit):
                # as the model's generate: everything after the first end token is padding, no further canvas
                x[start + int(hit[0]) + 1 : a0 + inputs.gen_length] = self._pad_id
                for j in range(c * size + int(hit[0]) + 1, inputs.gen_length):
                    if commit_step[j] < 0:
                        commit_step[j] = len(record) - 1
                break
        for step in record:
            rows = sorted(zip(step.committed, step.committed_ids, step.probabilities))
            step.committed = [p for p, _, _ in rows]
            step.committed_ids = [t for _, t, _ in rows]
            step.probabilities = [q for _, _, q in rows]
        # final state: the generated canvas with the last step's logits as self-conditioning
        if last_logits is not None:
            decoder = self._model.model.decoder
            weight = decoder.embed_tokens.weight
            soft_final = torch.matmul(last_logits.softmax(-1, dtype=torch.float32).to(weight.dtype), weight)
            soft_final = soft_final * decoder.embed_tokens.embed_scale.to(weight.dtype)
            states[FINAL] = (n_canvases - 1, soft_final.detach())
        x[-1] = FINAL
        answer = [int(t) for t in x[a0 : a0 + inputs.gen_length].tolist()]
        cfg = GenerationConfig(gen_length=inputs.gen_length, steps=steps, block_length=size,
                               temperature=config.temperature, remasking="entropy_bound", seed=seed)
        return GenerationResult(sequence=x.cpu(), answer_ids=answer, steps=record, config=cfg, commit_step=commit_step)

    # ------------------------------------------------------------------ text
    def decode(self, ids: Sequence[int]) -> list[str]:
        return [self.tokenizer.decode([int(i)]) for i in ids]

    def join(self, texts: Sequence[str]) -> str:
        # SentencePiece pieces carry their own spaces
        return "".join(texts).strip()

    def token_id(self, word: str) -> int:
        ids = self.tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise TargetError(f"word {word!r} is {len(ids)} tokens for {self.name}; pass a single-token word or an id")
        return int(ids[0])

    def logit_lens(self, hidden: torch.Tensor) -> torch.Tensor:
        model = self._model
        logits = model.lm_head(model.model.decoder.norm(hidden)).float()
        cap = model.config.text_config.final_logit_softcapping
        return torch.tanh(logits / cap) * cap if cap else logits


def load_diffusion_gemma(name: str, *, allow_pickle: bool = False, trust_remote_code: bool = False,
                         torch_dtype: str | torch.dtype | None = None, device_map: str | None = None, seed: int = 0,
                         **sampler: Any) -> DiffusionGemmaAdapter:
    """Load a DiffusionGemma checkpoint (hub id or local folder) into an adapter.

    ``device_map="auto"`` loads the weights straight onto the GPUs (a 26 B
    checkpoint would otherwise pass through ~52 GB of host memory in bf16).
    """
    from .hub import loading_options, require_transformers, resolve_checkpoint

    path = resolve_checkpoint(name, allow_pickle=allow_pickle)
    transformers = require_transformers("DiffusionGemma", "5.13")
    if not hasattr(transformers, "DiffusionGemmaForBlockDiffusion"):
        raise ModelLoadError(
            f"transformers {transformers.__version__} has no DiffusionGemmaForBlockDiffusion: "
            "DiffusionGemma needs transformers>=5.13 (pip install 'diffusion-cam[hf]')"
        )
    kwargs: dict[str, Any] = {"use_safetensors": None if allow_pickle else True,
                              **loading_options(device_map, transformers)}
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    try:
        model = transformers.DiffusionGemmaForBlockDiffusion.from_pretrained(path, **kwargs)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        image_processor = transformers.AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError, KeyError) as err:
        raise ModelLoadError(f"cannot load DiffusionGemma checkpoint {name!r} from {path}: {err}") from None
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        try:
            template = transformers.AutoProcessor.from_pretrained(path).chat_template
        except Exception:  # the full processor also needs video/audio dependencies
            template = None
    return DiffusionGemmaAdapter(model, tokenizer, image_processor, chat_template=template, name=name, seed=seed,
                                 **sampler)
