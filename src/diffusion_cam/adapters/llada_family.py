"""LLaDA-family dMLLMs: image-token layouts, forwards and loaders.

The families differ in three places only, each described by their JSON file
under ``families/`` and implemented here:

* **image layout** (where the patches sit and their grid):
  ``anyres`` (LLaDA-V, LaViDa: LLaVA-OneVision base view then the unpadded
  crop grid with a newline column, which is dropped), ``vq_block`` (MMaDA: a
  fixed block of VQ codes), ``vq_rows`` (Lumina-DiMOO: VQ codes row by row,
  a newline token after each row, dropped), ``token_runs`` (Dimple and
  generic families: runs of an image token; grid from ``image_grid_thw`` or
  fixed);
* **forward**: ``ids`` (one plain forward of the token ids), ``embeds``
  (LLaVA: the model splices image features into the embeddings of the
  prompt; answer embeddings are appended), ``prefix`` (LaViDa's Prefix-DLM:
  a cached prompt pass then an answer pass, both with gradients);
* **logits shift**: Dream-based models (Dimple) predict token ``p`` at
  position ``p - 1``; the adapter realigns them.

All the layout arithmetic here is written from the families' published
descriptions and checked against hand-computed layouts in the tests; the
released weights were not available to verify it end to end.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..errors import ExtractionError, ModelLoadError

#: LLaVA's in-sequence image placeholder; the library sequence repeats it once per feature
IMAGE_SLOT = -200


# ---------------------------------------------------------------- anyres
def parse_pinpoints(pinpoints: Any, patch: int) -> list[tuple[int, int]]:
    """Candidate ``(width, height)`` resolutions in pixels.

    Accepts a list of ``[w, h]`` pixel pairs or LLaVA-OneVision's range string
    ``"(1x1),...,(6x6)"`` (in units of ``patch`` pixels, first index outer).
    """
    if isinstance(pinpoints, str):
        pairs = [(int(a), int(b)) for a, b in re.findall(r"\((\d+)x(\d+)\)", pinpoints)]
        if len(pairs) < 2:
            raise ValueError(f"cannot read grid pinpoints {pinpoints!r}")
        (i0, j0), (i1, j1) = pairs[0], pairs[-1]
        return [(i * patch, j * patch) for i in range(i0, i1 + 1) for j in range(j0, j1 + 1)]
    return [(int(w), int(h)) for w, h in pinpoints]


def select_best_resolution(size: tuple[int, int], candidates: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """LLaVA's choice of canvas for an image of ``size = (width, height)``.

    Keeps the candidate that shows the most image pixels after an
    aspect-preserving fit (capped at the original pixel count), then the one
    that wastes the least canvas; the first candidate wins ties.
    """
    width, height = size
    best, best_shown, best_waste = None, 0, math.inf
    for cw, ch in candidates:
        scale = min(cw / width, ch / height)
        shown = min(int(width * scale) * int(height * scale), width * height)
        waste = cw * ch - shown
        if shown > best_shown or (shown == best_shown and waste < best_waste):
            best, best_shown, best_waste = (cw, ch), shown, waste
    if best is None:
        raise ValueError("no candidate resolution")
    return best


def unpad_shape(rows: int, cols: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Rows and columns of a ``rows x cols`` feature grid that hold the image.

    The image was fitted into the canvas keeping its aspect ratio and centred,
    so equal bands of padding sit on two sides.  Returns ``(top, left,
    kept_rows, kept_cols)`` with the same integer rounding as LLaVA's
    ``unpad_image``.
    """
    width, height = size
    if width / height > cols / rows:
        new_rows = int(height * (cols / width))
        pad = (rows - new_rows) // 2
        return pad, 0, rows - 2 * pad, cols
    new_cols = int(width * (rows / height))
    pad = (cols - new_cols) // 2
    return 0, pad, rows, cols - 2 * pad


@dataclass(frozen=True)
class AnyresLayout:
    """Token layout of one image under LLaVA-OneVision any-resolution tiling."""

    base: int  # the base view is base x base tokens, row-major
    rows: int  # the crop grid after unpadding (and any anyres_max resize)
    cols: int
    crops: tuple[int, int]  # (crops across, crops down)
    newline: bool  # one newline token after each crop-grid row

    @property
    def length(self) -> int:
        return self.base * self.base + self.rows * (self.cols + int(self.newline))


def anyres_layout(size: tuple[int, int], *, view_tokens: int, patch: int, pinpoints: Any,
                  max_patches: int | None = None, newline: bool = True) -> AnyresLayout:
    """Layout of an image of ``size = (width, height)``.

    ``view_tokens`` is the side of one view's token grid after any pooling
    (27 for SigLIP-384/14, 14 after LaViDa's 2x bilinear pooling), ``patch``
    the crop size in pixels, ``max_patches`` the N of ``anyres_max_N``.
    """
    cw, ch = select_best_resolution(size, parse_pinpoints(pinpoints, patch))
    across, down = cw // patch, ch // patch
    _, _, rows, cols = unpad_shape(down * view_tokens, across * view_tokens, size)
    if max_patches:
        times = math.sqrt(rows * cols / (max_patches * view_tokens**2))
        if times > 1.1:  # LLaVA-OneVision shrinks big grids bilinearly
            rows, cols = int(rows // times), int(cols // times)
    return AnyresLayout(view_tokens, rows, cols, (across, down), newline)


def anyres_grid_positions(start: int, layout: AnyresLayout) -> tuple[list[int], list[int]]:
    """Sequence positions of the base view and of the crop grid (newline column dropped)."""
    base = list(range(start, start + layout.base**2))
    first = start + layout.base**2
    stride = layout.cols + int(layout.newline)
    grid = [first + r * stride + c for r in range(layout.rows) for c in range(layout.cols)]
    return base, grid


# ------------------------------------------------------------------ VQ codes
def vq_rows_ids(codes: torch.Tensor, offset: int, newline: int | None, boi: int | None, eoi: int | None) -> list[int]:
    """Token ids of an ``(h, w)`` code map: row by row, optionally a newline after each row, wrapped."""
    ids: list[int] = [] if boi is None else [boi]
    for row in codes.tolist():
        ids.extend(int(c) + offset for c in row)
        if newline is not None:
            ids.append(newline)
    return ids + ([] if eoi is None else [eoi])


def vq_rows_positions(start: int, shape: tuple[int, int], newline: bool) -> list[int]:
    """Positions of an ``(h, w)`` code map whose first code is at ``start``; newline slots skipped."""
    h, w = shape
    stride = w + int(newline)
    return [start + r * stride + c for r in range(h) for c in range(w)]


def runs_of(ids: Sequence[int], token: int) -> list[tuple[int, int]]:
    """``(start, length)`` of each contiguous run of ``token``."""
    runs, start = [], None
    for i, t in enumerate(list(ids) + [None]):
        if t == token and start is None:
            start = i
        elif t != token and start is not None:
            runs.append((start, i - start))
            start = None
    return runs


def thw_grid(thw: Sequence[int], merge: int) -> tuple[int, int]:
    """Qwen2-VL LLM grid of one image from its ``(t, h, w)`` patch grid and spatial merge."""
    t, h, w = (int(v) for v in thw)
    if t != 1 or h % merge or w % merge:
        raise ExtractionError(f"image_grid_thw {tuple(thw)} is not a single image divisible by merge {merge}")
    return h // merge, w // merge


# ------------------------------------------------------------------ forwards
def logits_of(output: Any) -> torch.Tensor:
    """Logits from whatever a model returns (tensor, ModelOutput, tuple)."""
    if isinstance(output, torch.Tensor):
        return output
    if getattr(output, "logits", None) is not None:
        return output.logits
    if isinstance(output, (tuple, list)):
        return output[0]
    raise ExtractionError(f"cannot find logits in a {type(output).__name__} model output")


def hidden_of(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if getattr(output, "last_hidden_state", None) is not None:
        return output.last_hidden_state
    if isinstance(output, (tuple, list)):
        return output[0]
    raise ExtractionError(f"cannot find hidden states in a {type(output).__name__} model output")


def collapse_slots(prompt: torch.Tensor) -> torch.Tensor:
    """(B, n) ids with runs of IMAGE_SLOT -> one IMAGE_SLOT per run (what LLaVA's splicer expects)."""
    rows = []
    for row in prompt.tolist():
        out = [t for i, t in enumerate(row) if not (t == IMAGE_SLOT and i > 0 and row[i - 1] == IMAGE_SLOT)]
        rows.append(out)
    if len({len(r) for r in rows}) != 1:
        raise ExtractionError("a batch of LLaVA prompts must hold the same image placement")
    return torch.tensor(rows, dtype=prompt.dtype, device=prompt.device)


def llava_prompt_embeds(model: Any, prompt: torch.Tensor, images: Any, image_sizes: Any) -> torch.Tensor:
    """Prompt embeddings with image features spliced in by the model's own LLaVA code."""
    ids = collapse_slots(prompt)
    out = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, images, ["image"] * ids.shape[0],
                                                     image_sizes=image_sizes)
    embeds = out[4]
    if embeds.shape[1] != prompt.shape[1]:
        raise ExtractionError(
            f"the model spliced {embeds.shape[1]} prompt embeddings but the adapter's image layout predicts "
            f"{prompt.shape[1]}: the family description's anyres settings differ from the checkpoint's config"
        )
    return embeds


def forward_embeds(model: Any, prompt: torch.Tensor, answer: torch.Tensor, images: Any, image_sizes: Any) -> torch.Tensor:
    """LLaDA-V: one bidirectional pass over [prompt (with image features) + answer embeddings]."""
    embeds = llava_prompt_embeds(model, prompt, images, image_sizes)
    answer_embeds = model.get_input_embeddings()(answer).to(embeds.dtype)
    out = model.model(inputs_embeds=torch.cat([embeds, answer_embeds], dim=1))
    if getattr(out, "logits", None) is not None:
        return out.logits
    return model.lm_head(hidden_of(out))


def forward_prefix(model: Any, prompt: torch.Tensor, answer: torch.Tensor, images: Any, image_sizes: Any) -> torch.Tensor:
    """LaViDa Prefix-DLM: a cached prompt pass, then the answer attending to the cache; gradients flow through both.

    Returns answer logits only; the hooked block runs twice (call 0 holds the image).
    """
    embeds = llava_prompt_embeds(model, prompt, images, image_sizes)
    first = model.model(None, input_embeddings=embeds, use_cache=True)
    cache = getattr(first, "attn_key_values", None)
    if cache is None:
        cache = getattr(first, "past_key_values", None)
    answer_embeds = model.get_input_embeddings()(answer).to(embeds.dtype)
    second = model.model(None, input_embeddings=answer_embeds, past_key_values=cache)
    return logits_of(second)


def shift_logits(logits: torch.Tensor, shift: int) -> torch.Tensor:
    """Realign logits so that position p scores token p (Dream convention: p is predicted at p - 1)."""
    if shift == 0:
        return logits
    if shift != 1:
        raise ValueError(f"logits_shift must be 0 or 1, got {shift}")
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


# ------------------------------------------------------------------ loaders
def _import(module: str, family: str, where: str):
    import importlib

    from .recipes import missing_hint

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ModelLoadError(
            f"{family} needs the `{module}` package from {where} on the Python path ({err.msg}); "
            f"install that repository's code, then retry. {missing_hint(family)}"
        ) from None


def load_components(spec: Any, name: str, *, allow_pickle: bool = False, torch_dtype: Any = None,
                    device_map: str | None = None) -> dict[str, Any]:
    """Load model, tokenizer and image encoder of a family; returns the adapter's components."""
    from .hub import loading_options, require_transformers, resolve_checkpoint

    path = resolve_checkpoint(name, allow_pickle=allow_pickle)
    transformers = require_transformers(spec.family)
    placement = loading_options(device_map, transformers)
    weights = {"use_safetensors": None if allow_pickle else True, **placement}
    if torch_dtype is not None:
        weights["torch_dtype"] = torch_dtype
    kind = spec.loader
    try:
        if kind == "llava":
            builder = _import("llava.model.builder", spec.family, "the family's repository (its `llava` folder)")
            mm_utils = _import("llava.mm_utils", spec.family, "the family's repository")
            # the LLaVA builder knows only float16 (its default, as in LLaDA-V's demo) and bfloat16;
            # other dtypes load as bfloat16 and load_model() converts them afterwards
            asked = None if torch_dtype is None else str(torch_dtype).removeprefix("torch.")
            dtype = {} if asked is None else {"torch_dtype": "float16" if asked == "float16" else "bfloat16"}
            # the LLaVA builder always loads with low_cpu_mem_usage and takes a device_map of its own
            where = {"device_map": placement["device_map"]} if "device_map" in placement else {}
            tokenizer, model, image_processor, _ = builder.load_pretrained_model(
                path, None, "llava_llada", attn_implementation="sdpa", **dtype, **where, **spec.loader_kwargs)

            def image_fn(images):
                pixels = mm_utils.process_images(images, image_processor, model.config)
                return {"images": pixels, "image_sizes": [im.size for im in images]}

            return {"model": model, "tokenizer": tokenizer, "image_fn": image_fn, "config": model.config}
        if kind == "mmada":
            models = _import("models", spec.family, "the MMaDA repository")
            model = models.MMadaModelLM.from_pretrained(path, trust_remote_code=True, **weights)
            tokenizer = transformers.AutoTokenizer.from_pretrained(path, padding_side="left")
            vq_name = spec.loader_kwargs.get("vq_model", "showlab/magvitv2")
            vq = models.MAGVITv2.from_pretrained(resolve_checkpoint(vq_name, allow_pickle=allow_pickle)).eval()
            return {"model": model, "tokenizer": tokenizer, "vq_fn": _magvit_codes(vq, spec), "config": model.config}
        if kind == "lumina":
            lumina = _import("model", spec.family, "the Lumina-DiMOO repository")
            diffusers = _import("diffusers", spec.family, "PyPI (pip install diffusers)")
            model = lumina.LLaDAForMultiModalGeneration.from_pretrained(path, **weights)
            tokenizer = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=True)
            vq = diffusers.VQModel.from_pretrained(path, subfolder="vqvae").eval()
            return {"model": model, "tokenizer": tokenizer, "vq_fn": _vqvae_codes(vq, spec), "config": model.config}
        if kind == "auto":
            model = transformers.AutoModel.from_pretrained(path, trust_remote_code=spec.trust_remote_code, **weights)
            processor = transformers.AutoProcessor.from_pretrained(path, trust_remote_code=spec.trust_remote_code)
            tokenizer = getattr(processor, "tokenizer", processor)
            return {"model": model, "tokenizer": tokenizer, "processor": processor, "config": model.config}
    except ModelLoadError:
        raise
    except ImportError as err:
        # e.g. LLaDA-V's loader always loads with low_cpu_mem_usage, which needs accelerate
        from .recipes import missing_hint

        raise ModelLoadError(f"cannot load {spec.family} checkpoint {name!r}: the family's code needs a package that "
                             f"is not installed ({err}). {missing_hint(spec.family)}") from None
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as err:
        raise ModelLoadError(f"cannot load {spec.family} checkpoint {name!r} from {path}: {err}") from None
    raise ModelLoadError(f"family {spec.name!r} names an unknown loader {kind!r}")


def _pixels(image, size: tuple[int, int]) -> torch.Tensor:
    """Resize and centre-crop to ``size = (width, height)``, as a (1, 3, H, W) tensor in [-1, 1]."""
    import numpy as np
    from PIL import Image

    im = Image.fromarray(np.asarray(image))
    w, h = size
    scale = max(w / im.width, h / im.height)
    im = im.resize((max(w, round(im.width * scale)), max(h, round(im.height * scale))), Image.BICUBIC)
    left, top = (im.width - w) // 2, (im.height - h) // 2
    im = im.crop((left, top, left + w, top + h))
    arr = torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1.0)
    return arr.permute(2, 0, 1)[None]


def _magvit_codes(vq, spec):
    side = int(spec.image.get("resolution", 512))

    @torch.no_grad()
    def codes(image):
        ids = vq.get_code(_pixels(image, (side, side)).to(next(vq.parameters()).device))
        h, w = spec.image["shape"]
        return ids.reshape(h, w).cpu()

    return codes


def _vqvae_codes(vq, spec):
    side = int(spec.image.get("resolution", 1024))
    factor = int(spec.image.get("downsample", 16))

    @torch.no_grad()
    def codes(image):
        # keep the aspect ratio at about side^2 pixels, sides multiples of 32 (Lumina's centre-crop rule)
        h0, w0 = image.shape[:2]
        scale = math.sqrt(side * side / (h0 * w0))
        h, w = max(32, int(h0 * scale) // 32 * 32), max(32, int(w0 * scale) // 32 * 32)
        x = (_pixels(image, (w, h)) + 1) / 2  # VaeImageProcessor without normalisation: [0, 1]
        latent = vq.encode(x.to(next(vq.parameters()).device)).latents
        _, _, (_, _, idx) = vq.quantize(latent)
        return idx.reshape(h // factor, w // factor).cpu()

    return codes
