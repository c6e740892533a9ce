"""LLaDA-family adapters: layouts computed by hand, and end-to-end runs on tiny stand-in module trees.

The released checkpoints are not available offline, so each family is
reproduced by a tiny module tree with the family's call signatures, block
path, block output type and sequence layout; the adapters run on them
unchanged through the library's public API.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import diffusion_cam as dc
from diffusion_cam.adapters import llada_family as fam
from diffusion_cam.adapters.base import GenerationConfig
from diffusion_cam.adapters.config_adapter import ConfigAdapter, FamilySpec, builtin_specs
from diffusion_cam.errors import ExtractionError, ModelLoadError, PromptError, TargetError
from diffusion_cam.testing import logits_both_ways

VOCAB = 160
MASK, EOS, BOI, EOI, NEWLINE, SOI, MMU, BOA, EOA, IMG = range(10)
OFFSET = 120  # tiny VQ codes live at 120..135


class WordTokenizer:
    """Deterministic word/special-token tokenizer (ids from 20 up, assigned on first sight)."""

    pattern = re.compile(r"<\|?[^<>\s]*\|?>|[^\s<]+|\n")

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        ids = []
        for piece in self.pattern.findall(text):
            if piece not in self.vocab:
                self.vocab[piece] = 20 + len(self.vocab)
                assert self.vocab[piece] < OFFSET, "tiny vocabulary exhausted"
            ids.append(self.vocab[piece])
        return {"input_ids": ids}

    def decode(self, ids) -> str:
        inverse = {v: k for k, v in self.vocab.items()}
        return " ".join(inverse.get(int(i), f"<{int(i)}>") for i in ids)


class Block(nn.Module):
    """Bidirectional block; returns a tuple like LLaDA's (x, cache); ``past`` prepends cached inputs."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x, past=None):
        kv = self.norm(x if past is None else torch.cat([past, x], 1))
        h = x + self.attn(self.norm(x), kv, kv, need_weights=False)[0]
        return h + self.mlp(h), x


class Core(nn.Module):
    def __init__(self, d: int, n: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(VOCAB, d)
        self.pos = nn.Parameter(torch.randn(4096, d) * 0.02)
        self.blocks = nn.ModuleList(Block(d) for _ in range(n))
        self.ln_f = nn.LayerNorm(d)
        self.ff_out = nn.Linear(d, VOCAB)

    def run(self, x, past=None, offset=0):
        x = x + self.pos[offset : offset + x.shape[1]]
        cache = []
        for i, block in enumerate(self.blocks):
            x, inp = block(x, None if past is None else past[i])
            cache.append(inp if past is None else torch.cat([past[i], inp], 1))
        return self.ff_out(self.ln_f(x)), cache


class Out:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class IdsModel(nn.Module):
    """MMaDA / Lumina-DiMOO stand-in: ``model(ids)`` with blocks at ``model.model.transformer.blocks``."""

    def __init__(self, d=16, n=3, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.model = nn.Module()
        self.model.transformer = Core(d, n)
        self.calls = []

    def forward(self, ids, infer=False):
        self.calls.append(infer)
        logits, _ = self.model.transformer.run(self.model.transformer.wte(ids))
        return Out(logits=logits)

    def get_output_embeddings(self):
        return self.model.transformer.ff_out


class TiedIdsModel(IdsModel):
    """LLaDA with ``weight_tying``: the head is ``F.linear`` with the input embedding, which
    ``get_output_embeddings`` returns (the module itself only ever looks up ids)."""

    def forward(self, ids, infer=False):
        core = self.model.transformer
        x = core.wte(ids) + core.pos[: ids.shape[1]]
        for block in core.blocks:
            x = block(x)[0]
        return Out(logits=F.linear(core.ln_f(x), core.wte.weight))

    def get_output_embeddings(self):
        return self.model.transformer.wte


class LlavaMeta(nn.Module):
    """The LLaVA side: a patch projector and ``prepare_inputs_labels_for_multimodal`` expanding -200."""

    def __init__(self, d, view_tokens, patch, pinpoints, max_patches):
        super().__init__()
        self.proj = nn.Linear(3, d)
        self.image_newline = nn.Parameter(torch.randn(d))
        self.layout = dict(view_tokens=view_tokens, patch=patch, pinpoints=pinpoints, max_patches=max_patches)

    def features(self, image: torch.Tensor, size) -> torch.Tensor:
        lay = fam.anyres_layout(size, **self.layout)
        base = F.adaptive_avg_pool2d(image, lay.base)[0].permute(1, 2, 0).reshape(-1, 3)
        grid = F.adaptive_avg_pool2d(image, (lay.rows, lay.cols))[0].permute(1, 2, 0)
        grid = self.proj(grid)
        grid = torch.cat([grid, self.image_newline.expand(lay.rows, 1, -1)], 1).reshape(-1, grid.shape[-1])
        return torch.cat([self.proj(base), grid])

    def splice(self, embed, ids, images, image_sizes):
        rows = []
        for b in range(ids.shape[0]):
            parts, k = [], 0
            for t in ids[b].tolist():
                if t == fam.IMAGE_SLOT:
                    parts.append(self.features(images[k : k + 1], image_sizes[k]))
                    k += 1
                else:
                    parts.append(embed(torch.tensor([t])))
            rows.append(torch.cat(parts))
        return torch.stack(rows)


class LladaVModel(nn.Module):
    """LLaDA-V stand-in: ``model.model.layers`` return ``(hidden,)``; ``model.model(inputs_embeds=...)``."""

    def __init__(self, d=16, n=3, seed=0, **layout):
        super().__init__()
        torch.manual_seed(seed)
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(VOCAB, d)
        self.core = Core(d, n)
        self.model.layers = self.core.blocks
        self.model.norm = self.core.ln_f
        self.model.forward = self._inner
        self.lm_head = self.core.ff_out
        self.meta = LlavaMeta(d, **layout)

    def _inner(self, inputs_embeds):
        x = inputs_embeds + self.core.pos[: inputs_embeds.shape[1]]
        for block in self.model.layers:
            x = block(x)[0]
        return Out(last_hidden_state=self.core.ln_f(x))

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def get_output_embeddings(self):
        return self.lm_head

    def prepare_inputs_labels_for_multimodal(self, ids, pos, mask, pkv, labels, images, modalities, image_sizes=None):
        return None, None, None, None, self.meta.splice(self.model.embed_tokens, ids, images, image_sizes), None


class LavidaModel(nn.Module):
    """LaViDa stand-in: ``model.model.transformer.blocks``; Prefix-DLM cache; checkpointing on by default."""

    def __init__(self, d=16, n=3, seed=0, **layout):
        super().__init__()
        torch.manual_seed(seed)
        self.model = nn.Module()
        self.model.transformer = Core(d, n)
        self.model.checkpointing = "whole_layer"
        self.model.set_activation_checkpointing = lambda strategy: setattr(self.model, "checkpointing", strategy)
        self.model.forward = self._inner
        self.meta = LlavaMeta(d, **layout)

    def _inner(self, input_ids, input_embeddings=None, past_key_values=None, use_cache=False):
        core = self.model.transformer
        offset = 0 if past_key_values is None else past_key_values[0].shape[1]
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.model.checkpointing is None):
            logits, cache = core.run(input_embeddings, past_key_values, offset)
        return Out(logits=logits, attn_key_values=cache if use_cache else None)

    def get_input_embeddings(self):
        return self.model.transformer.wte

    def get_output_embeddings(self):
        return self.model.transformer.ff_out

    def prepare_inputs_labels_for_multimodal(self, ids, pos, mask, pkv, labels, images, modalities, image_sizes=None):
        return None, None, None, None, self.meta.splice(self.get_input_embeddings(), ids, images, image_sizes), None


class DimpleModel(nn.Module):
    """Dimple stand-in: ``model.model.layers``; image features replace image-pad tokens; M-RoPE hook."""

    def __init__(self, d=16, n=3, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.model = nn.Module()
        self.core = Core(d, n)
        self.model.layers = self.core.blocks
        self.model.norm = self.core.ln_f
        self.proj = nn.Linear(3 * 8 * 8, d)
        self.rope_calls = 0

    def get_rope_index(self, ids, thw, video_thw, mask):
        self.rope_calls += 1
        return torch.arange(ids.shape[1])[None].expand(ids.shape[0], -1), None

    def forward(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None, position_ids=None):
        x = self.core.wte(input_ids)
        feats = self.proj(pixel_values)  # one merged 8x8 patch per image token
        x = x.masked_scatter((input_ids == IMG)[..., None], feats[None].expand(x.shape[0], -1, -1))
        logits, _ = self.core.run(x)
        return Out(logits=logits)

    def get_output_embeddings(self):
        return self.core.ff_out


class DimpleProcessor:
    """Qwen2-VL-like processor: 4-px patches merged 2x2 (8 px per token), image pad expanded in place."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, text, images, return_tensors="pt"):
        grids, pixels = [], []
        for im in images:
            w, h = im.size
            gw, gh = max(2, round(w / 8) * 2), max(2, round(h / 8) * 2)  # patches, multiples of the merge
            arr = torch.from_numpy(np.asarray(im.resize((gw * 4, gh * 4)), dtype=np.float32) / 255)
            tokens = arr.reshape(gh // 2, 8, gw // 2, 8, 3).permute(0, 2, 1, 3, 4).reshape(-1, 8 * 8 * 3)
            pixels.append(tokens)
            grids.append((1, gh, gw))
        out = text[0]
        for t, gh, gw in grids:
            out = out.replace("<|image_pad|>", "<|placeholder|>" * (gh * gw // 4), 1)
        out = out.replace("<|placeholder|>", "<|image_pad|> ")
        ids = self.tokenizer(out)["input_ids"]
        ids = [IMG if t == self.tokenizer.vocab["<|image_pad|>"] else t for t in ids]
        return {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids)),
                "pixel_values": torch.cat(pixels), "image_grid_thw": torch.tensor(grids)}


def spec_of(name: str, **changes) -> FamilySpec:
    spec = next(s for s in builtin_specs() if s.name == name)
    return dataclasses.replace(spec, **changes)


def image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def anyres_image_fn(side=48):
    def fn(images):
        tensors = [torch.from_numpy(np.asarray(im.resize((side, side)), dtype=np.float32) / 255).permute(2, 0, 1)
                   for im in images]
        return {"images": torch.stack(tensors), "image_sizes": [im.size for im in images]}
    return fn


def fake_vq(shape):
    def codes(arr):
        small = F.adaptive_avg_pool2d(torch.from_numpy(arr.astype(np.float32)).permute(2, 0, 1)[None], shape)
        return (small[0].mean(0) / 256 * 16).long().clamp(0, 15)
    return codes


TINY_GEN = dc.GenerationConfig(gen_length=4)

# ------------------------------------------------------------------ hand-computed layouts


def test_lavida_layout_of_640x480_by_hand():
    # pinpoints (w, h): (384,768) shows 384x288; (768,384) 512x384; (768,768) all 640x480 -> 2x2 crops.
    # 2x2 crops of 14x14 pooled tokens -> 28x28; unpad for 640x480: 28/640*480 = 21 rows -> padding
    # (28-21)//2 = 3 on top and bottom -> 22 rows x 28 cols, plus a newline column; base view 14x14.
    spec = spec_of("lavida")
    img = spec.image
    lay = fam.anyres_layout((640, 480), view_tokens=img["view_tokens"], patch=img["patch"],
                            pinpoints=img["pinpoints"], max_patches=img["max_patches"])
    assert lay.crops == (2, 2)
    assert (lay.base, lay.rows, lay.cols) == (14, 22, 28)
    assert lay.length == 196 + 22 * 29 == 834
    base, grid = fam.anyres_grid_positions(100, lay)
    assert base[0] == 100 and base[-1] == 100 + 195
    assert grid[:2] == [296, 297] and grid[27] == 296 + 27
    assert grid[28] == 296 + 29  # the newline slot 296 + 28 is skipped
    assert grid[-1] == 296 + 21 * 29 + 27


def test_llada_v_layout_of_640x480_and_a_wide_image_by_hand():
    spec = spec_of("llada-v")
    img = spec.image
    kw = dict(view_tokens=27, patch=384, pinpoints=img["pinpoints"], max_patches=4)
    # 640x480: the smallest canvas showing the whole image is 768x768 (2x2) -> 54x54;
    # 54/640*480 = 40.5 -> 40 rows, padding 7 -> 40x54; sqrt(40*54/(4*729)) = 0.86 <= 1.1: no resize
    lay = fam.anyres_layout((640, 480), **kw)
    assert lay.crops == (2, 2) and (lay.rows, lay.cols) == (40, 54)
    assert lay.length == 729 + 40 * 55
    # 2000x500: canvas 2304x768 (6x2 crops) -> 54x162; 54 rows hold 162/2000*500 = 40.5 -> 40 rows, pad 7
    # -> 40x162; times = sqrt(40*162/2916) = 1.4907 > 1.1 -> (int(40 // t), int(162 // t)) = (26, 108)
    lay = fam.anyres_layout((2000, 500), **kw)
    assert lay.crops == (6, 2) and (lay.rows, lay.cols) == (26, 108)


def test_pinpoint_range_and_best_resolution():
    cands = fam.parse_pinpoints("(1x1),...,(2x3)", 10)
    assert cands == [(10, 10), (10, 20), (10, 30), (20, 10), (20, 20), (20, 30)]
    # a 30x10 image: (20,10) shows 20x6=120... (20,20) shows the same 120 px with more waste; (20,10) wins
    assert fam.select_best_resolution((30, 10), cands) == (20, 10)


def test_unpad_tall_image():
    # 300x600 (w x h) in a 28x28 grid: 28/600*300 = 14 cols, padding 7 left and right
    assert fam.unpad_shape(28, 28, (300, 600)) == (0, 7, 28, 14)


def test_vq_rows_layout_drops_newlines():
    codes = torch.arange(6).reshape(2, 3)
    ids = fam.vq_rows_ids(codes, 100, newline=7, boi=5, eoi=6)
    assert ids == [5, 100, 101, 102, 7, 103, 104, 105, 7, 6]
    assert fam.vq_rows_positions(11, (2, 3), newline=True) == [11, 12, 13, 15, 16, 17]


def test_logits_shift():
    logits = torch.arange(12.0).reshape(1, 4, 3)
    shifted = fam.shift_logits(logits, 1)
    assert torch.equal(shifted[0, 1:], logits[0, :-1]) and torch.equal(shifted[0, 0], logits[0, 0])
    assert fam.shift_logits(logits, 0) is logits


def test_thw_grid():
    assert fam.thw_grid((1, 34, 46), 2) == (17, 23)
    with pytest.raises(ExtractionError):
        fam.thw_grid((2, 34, 46), 2)


# ------------------------------------------------------------------ real ids, prompt construction


def test_mmada_prompt_puts_codes_at_positions_2_to_1025():
    tok = WordTokenizer()
    adapter = ConfigAdapter(spec_of("mmada"), {"model": IdsModel(), "tokenizer": tok, "vq_fn": fake_vq((32, 32))})
    inputs = adapter.prepare([image(64, 64)], "what is this", 8)
    ids = inputs.input_ids.tolist()
    assert ids[:2] == [126089, 126084] and ids[1026] == 126085
    (grid,) = adapter.image_grids(inputs, inputs.input_ids)
    assert grid.positions == tuple(range(2, 1026)) and grid.shape == (32, 32)
    assert all(126464 <= ids[p] < 126464 + 16 for p in grid.positions)
    text = tok.decode(ids[1027 : inputs.answer_start])
    assert text.startswith("<|startoftext|> <|start_header_id|> user <|end_header_id|>")
    assert "what is this <|eot_id|>" in text and text.endswith("assistant <|end_header_id|> \n \n")
    assert ids[inputs.answer_start :] == [126336] * 8


def test_lumina_prompt_places_image_before_the_last_prompt_token():
    tok = WordTokenizer()
    adapter = ConfigAdapter(spec_of("lumina-dimoo"), {"model": IdsModel(), "tokenizer": tok, "vq_fn": fake_vq((3, 5))})
    inputs = adapter.prepare([image(48, 80)], "describe", 4)
    ids = inputs.input_ids.tolist()
    s = ids.index(126349)
    assert ids[s + 1 + 3 * 6 - 1] == 126084 and ids[s + 1 + 3 * 6] == 126350  # newline after each row, then EOI
    assert ids[s + 3 * 6 + 2] == tok.vocab["</user>"]
    assert ids[inputs.answer_start - 1] == 126354 and ids[inputs.answer_start : inputs.answer_start + 4] == [126336] * 4
    assert ids[-1] == 126355
    (grid,) = adapter.image_grids(inputs, inputs.input_ids)
    assert grid.shape == (3, 5)
    assert all(ids[p] != 126084 for p in grid.positions)
    assert grid.positions[5] == s + 1 + 6  # second row starts after the first row's newline


def test_llava_prompt_has_one_slot_per_feature():
    tok = WordTokenizer()
    spec = spec_of("llada-v")
    model = LladaVModel(view_tokens=2, patch=16, pinpoints=[[16, 32], [32, 16], [32, 32]], max_patches=None)
    spec = dataclasses.replace(spec, image={**spec.image, "view_tokens": 2, "patch": 16,
                                            "pinpoints": [[16, 32], [32, 16], [32, 32]], "max_patches": None})
    adapter = ConfigAdapter(spec, {"model": model, "tokenizer": tok, "image_fn": anyres_image_fn()})
    inputs = adapter.prepare([image(30, 40)], "what is this", 4)
    ids = inputs.input_ids.tolist()
    lay = fam.anyres_layout((40, 30), view_tokens=2, patch=16, pinpoints=[[16, 32], [32, 16], [32, 32]])
    assert ids.count(fam.IMAGE_SLOT) == lay.length
    start = ids.index(fam.IMAGE_SLOT)
    # the system prompt of LLaDA-V's llava_llada conversation template comes first
    assert tok.decode(ids[:start]) == (
        "<|startoftext|> <|start_header_id|> system <|end_header_id|> \n \n You are a helpful language and vision "
        "assistant. You are able to understand the visual content that the user provides, and assist the user "
        "with a variety of tasks using natural language. <|eot_id|> <|start_header_id|> user <|end_header_id|> \n \n")
    base, crops = adapter.image_grids(inputs, inputs.input_ids)
    assert base.shape == (2, 2) and crops.shape == (lay.rows, lay.cols) and base.region == (0.0, 0.0, 40.0, 30.0)


def test_too_many_images_is_a_prompt_error():
    adapter = ConfigAdapter(spec_of("mmada"), {"model": IdsModel(), "tokenizer": WordTokenizer(), "vq_fn": fake_vq((32, 32))})
    with pytest.raises(PromptError, match="1 image"):
        adapter.prepare([image(8, 8), image(8, 8)], "what", 4)


# ------------------------------------------------------------------ end-to-end on stand-in trees

TINY_ANYRES = {"view_tokens": 2, "patch": 16, "pinpoints": [[16, 32], [32, 16], [32, 32]], "max_patches": None}


def tiny_spec(name, **changes):
    base = dict(mask_token_id=MASK, stop_token_ids=[EOS], generation={"gen_length": 4})
    return spec_of(name, **{**base, **changes})


def explain_twice(adapter, img, prompt="what is this", **kw):
    a = dc.DiffusionCAM(adapter, layer=1, **kw).explain(img, prompt, gen_length=4)
    b = dc.DiffusionCAM(adapter, layer=1, **kw).explain(img, prompt, gen_length=4)
    assert np.array_equal(a.maps, b.maps) and a.answer == b.answer
    assert a.maps.shape[1:] == img.shape[:2] and np.isfinite(a.maps).all()
    return a


def test_llada_v_end_to_end():
    model = LladaVModel(**TINY_ANYRES)
    spec = tiny_spec("llada-v", image={**spec_of("llada-v").image, **TINY_ANYRES})
    adapter = ConfigAdapter(spec, {"model": model, "tokenizer": WordTokenizer(), "image_fn": anyres_image_fn()})
    assert adapter.blocks() is model.model.layers
    exp = explain_twice(adapter, image(30, 40))
    assert exp.raw_grid_maps.shape[1:] == (2, 2)  # the first grid is the base view
    assert dc.GradientCAM(adapter, layer=0, state="final", modules=[]).explain(image(30, 40), "what is this", gen_length=4).maps.any()


def test_a_given_answer_sits_on_the_canvas_as_the_family_file_says():
    model = LladaVModel(**TINY_ANYRES)
    shipped = spec_of("llada-v").prompt
    assert (shipped["answer_end"], shipped["answer_fill"]) == ([126348], 126081)  # <|eot_id|>, then <|endoftext|>
    spec = tiny_spec("llada-v", image={**spec_of("llada-v").image, **TINY_ANYRES}, stop_token_ids=[EOS, EOA],
                     prompt={**shipped, "answer_end": [EOA], "answer_fill": EOS})
    tok = WordTokenizer()
    adapter = ConfigAdapter(spec, {"model": model, "tokenizer": tok, "image_fn": anyres_image_fn()})
    cat, sat = tok("cat sat")["input_ids"]
    assert adapter.answer_canvas("cat sat", 5) == [cat, sat, EOA, EOS, EOS]
    assert adapter.answer_canvas("cat sat", 2) == [cat, sat, EOA]  # longer than asked when it must be
    exp = dc.GradientCAM(adapter, layer=0, state="final", modules=[]).explain(image(30, 40), "what is this",
                                                                          answer="cat sat", gen_length=4)
    assert exp.tokens == ["cat", "sat"] and exp.steps == [-1, -1] and exp.trajectory == []
    assert np.isfinite(exp.maps).all()
    # a family file that does not describe the end of an answer says so
    silent = ConfigAdapter(dataclasses.replace(spec, prompt={"template": shipped["template"]}),
                           {"model": LladaVModel(**TINY_ANYRES), "tokenizer": tok, "image_fn": anyres_image_fn()})
    with pytest.raises(TargetError, match="does not say how a finished answer ends"):
        silent.answer_canvas("cat", 4)
    # the tokens that end an answer must end it when reading one back
    fields = {k: v for k, v in dataclasses.asdict(spec).items() if k != "source"}
    with pytest.raises(ModelLoadError, match=r"answer_end / answer_fill ids \[8\] are not stop tokens"):
        FamilySpec.from_dict({**fields, "stop_token_ids": [EOS]})


def test_lavida_two_pass_needs_checkpointing_off():
    spec = tiny_spec("lavida", image={**spec_of("lavida").image, **TINY_ANYRES})
    model = LavidaModel(**TINY_ANYRES)
    adapter = ConfigAdapter(spec, {"model": model, "tokenizer": WordTokenizer(), "image_fn": anyres_image_fn()})
    assert model.model.checkpointing is None  # the adapter switched LaViDa's forced checkpointing off
    exp = explain_twice(adapter, image(40, 30))
    assert len(exp.token_indices) >= 1
    # with checkpointing forced on, block outputs carry no gradient: a clear error, not a silent zero map
    on = ConfigAdapter(dataclasses.replace(spec, disable_checkpointing=False),
                       {"model": LavidaModel(**TINY_ANYRES), "tokenizer": WordTokenizer(), "image_fn": anyres_image_fn()})
    with pytest.raises(ExtractionError, match="require grad"):
        dc.GradientCAM(on, layer=0).explain(image(40, 30), "what is this", gen_length=4)


def test_lavida_prefix_forward_separates_prompt_from_answer():
    spec = tiny_spec("lavida", image={**spec_of("lavida").image, **TINY_ANYRES})
    adapter = ConfigAdapter(spec, {"model": LavidaModel(**TINY_ANYRES), "tokenizer": WordTokenizer(), "image_fn": anyres_image_fn()})
    inputs = adapter.prepare([image(40, 30)], "what is this", 4)
    seq = inputs.input_ids[None]
    seen = []
    handle = adapter.blocks()[0].register_forward_hook(lambda m, a, out: seen.append(out[0].shape[1]))
    try:
        logits = adapter.forward(inputs, seq)
    finally:
        handle.remove()
    assert seen == [inputs.answer_start, 4]  # call 0: prompt with the image; call 1: the answer
    assert logits.shape[1] == seq.shape[1] and not logits[0, : inputs.answer_start].any()


def test_mmada_end_to_end():
    spec = tiny_spec("mmada", image={"rule": "vq_block", "shape": [4, 4], "offset": OFFSET, "before": [MMU, SOI], "after": [EOI]})
    adapter = ConfigAdapter(spec, {"model": IdsModel(), "tokenizer": WordTokenizer(), "vq_fn": fake_vq((4, 4))})
    exp = explain_twice(adapter, image(32, 32))
    assert exp.raw_grid_maps.shape[1:] == (4, 4)


def test_lumina_end_to_end_calls_the_model_in_infer_mode():
    spec = tiny_spec("lumina-dimoo", image={"rule": "vq_rows", "offset": OFFSET, "newline": NEWLINE, "boi": BOI, "eoi": EOI},
                     prompt={**spec_of("lumina-dimoo").prompt, "answer_prefix": [BOA], "answer_suffix": [EOA]})
    model = IdsModel()
    adapter = ConfigAdapter(spec, {"model": model, "tokenizer": WordTokenizer(), "vq_fn": fake_vq((3, 5))})
    exp = explain_twice(adapter, image(30, 50))
    assert exp.raw_grid_maps.shape[1:] == (3, 5)
    assert model.calls and all(model.calls)


def test_dimple_end_to_end_with_shifted_logits():
    tok = WordTokenizer()
    spec = tiny_spec("dimple", image={**spec_of("dimple").image, "image_token_id": IMG})
    model = DimpleModel()
    adapter = ConfigAdapter(spec, {"model": model, "tokenizer": tok, "processor": DimpleProcessor(tok)})
    inputs = adapter.prepare([image(24, 40)], "what is this", 4)
    (grid,) = adapter.image_grids(inputs, inputs.input_ids)
    assert grid.shape == (3, 5)  # 24x40 px -> 6x10 patches of 4 px -> merged 2x2 -> 3x5
    with torch.no_grad():
        aligned = adapter.forward(inputs, inputs.input_ids[None])
        raw = model(inputs.input_ids[None], pixel_values=inputs.extras["pixel_values"]).logits
    assert torch.equal(aligned[0, 1:], raw[0, :-1])  # token p is read from position p - 1
    assert model.rope_calls >= 1
    exp = explain_twice(adapter, image(24, 40))
    assert exp.raw_grid_maps.shape[1:] == (3, 5)


def test_dimple_samples_with_its_confident_decoding():
    shipped = spec_of("dimple").generation
    assert shipped["schedule"] == "timestep" and shipped["threshold"] == 0.95
    tok = WordTokenizer()
    spec = tiny_spec("dimple", image={**spec_of("dimple").image, "image_token_id": IMG},
                     generation={**shipped, "gen_length": 4, "block_length": 4, "steps": 4})
    adapter = ConfigAdapter(spec, {"model": DimpleModel(), "tokenizer": tok, "processor": DimpleProcessor(tok)})
    config = adapter.default_generation
    assert (config.schedule, config.threshold) == ("timestep", 0.95)
    exp = explain_twice(adapter, image(24, 40))
    committed = sorted(p for step in exp.trajectory for p in step["committed"])
    assert committed == list(range(len(committed))) and exp.raw_grid_maps.shape[1:] == (3, 5)


def test_llada_v_and_lavida_sample_as_released():
    # LLaDA-V's demo: 128 tokens, one block, one token per step, four special tokens barred at masks
    llada_v = spec_of("llada-v")
    config = GenerationConfig(**llada_v.generation)  # what the adapter's default_generation builds
    assert (config.gen_length, config.block_length, config.steps) == (128, 128, 128)
    assert config.suppress_token_ids == (126081, 126080, 126346, 126347) and config.stop_early
    # LaViDa's demo: 64 tokens at step_ratio 0.5 on the shift schedule
    config = GenerationConfig(**spec_of("lavida").generation)
    assert (config.gen_length, config.steps, config.schedule, config.schedule_shift) == (64, 32, "shift", 3)
    assert llada_v.prompt["template"].split("{image}")[0] == spec_of("lavida").prompt["template"].split("{image}")[0]


def test_bfloat16_weights_keep_float32_maps():
    spec = tiny_spec("mmada", image={"rule": "vq_block", "shape": [4, 4], "offset": OFFSET, "before": [MMU, SOI], "after": [EOI]})
    adapter = ConfigAdapter(spec, {"model": IdsModel(), "tokenizer": WordTokenizer(), "vq_fn": fake_vq((4, 4))})
    adapter.to(dtype="bfloat16")
    exp = dc.GradientCAM(adapter, layer=1).explain(image(32, 32), "what is this", gen_length=4)
    assert exp.maps.dtype == np.float32 and np.isfinite(exp.maps).all()


def test_sequence_longer_than_the_models_context_is_a_clear_error():
    model = IdsModel()
    model.config = Out(max_position_embeddings=1040)  # MMaDA's 1024 codes + framing fit, a long answer does not
    adapter = ConfigAdapter(spec_of("mmada"), {"model": model, "tokenizer": WordTokenizer(), "vq_fn": fake_vq((32, 32))})
    assert adapter.context_length == 1040
    with pytest.raises(PromptError, match=r"above mmada's context of 1040.*--gen-length"):
        adapter.prepare([image(64, 64)], "what is this", 64)
    model.config = Out(text_config=Out(max_position_embeddings=4096))
    assert adapter.context_length == 4096
    assert adapter.prepare([image(64, 64)], "what is this", 64).input_ids.shape[0] < 4096


def test_a_package_the_family_code_needs_is_named_when_missing(tmp_path, monkeypatch):
    import types

    def needs_accelerate(*args, **kwargs):
        raise ImportError("Using `low_cpu_mem_usage=True` or a `device_map` requires Accelerate")

    # LLaDA-V's own loader always loads with low_cpu_mem_usage, which needs accelerate
    monkeypatch.setitem(sys.modules, "llava.model.builder", types.SimpleNamespace(load_pretrained_model=needs_accelerate))
    monkeypatch.setitem(sys.modules, "llava.mm_utils", types.SimpleNamespace())
    (tmp_path / "config.json").write_text('{"model_type": "llava_llada"}')
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="needs a package that is not installed.*requires Accelerate"):
        fam.load_components(spec_of("llada-v"), str(tmp_path))


# ------------------------------------------------------------------ logits at a few positions
def _family_adapters():
    tok = WordTokenizer()
    anyres = {"tokenizer": tok, "image_fn": anyres_image_fn()}
    vq = {"image": {"rule": "vq_block", "shape": [4, 4], "offset": OFFSET, "before": [MMU, SOI], "after": [EOI]}}
    return {
        "llada-v": (ConfigAdapter(tiny_spec("llada-v", image={**spec_of("llada-v").image, **TINY_ANYRES}),
                                  {"model": LladaVModel(**TINY_ANYRES), **anyres}), image(30, 40)),
        "lavida": (ConfigAdapter(tiny_spec("lavida", image={**spec_of("lavida").image, **TINY_ANYRES}),
                                 {"model": LavidaModel(**TINY_ANYRES), **anyres}), image(40, 30)),
        "mmada": (ConfigAdapter(tiny_spec("mmada", **vq), {"model": IdsModel(), "tokenizer": tok, "vq_fn": fake_vq((4, 4))}),
                  image(32, 32)),
        "mmada-tied": (ConfigAdapter(tiny_spec("mmada", **vq),
                                     {"model": TiedIdsModel(), "tokenizer": tok, "vq_fn": fake_vq((4, 4))}), image(32, 32)),
        "dimple": (ConfigAdapter(tiny_spec("dimple", image={**spec_of("dimple").image, "image_token_id": IMG}),
                                 {"model": DimpleModel(), "tokenizer": tok, "processor": DimpleProcessor(tok)}), image(24, 40)),
    }


@pytest.mark.parametrize("family", ["llada-v", "lavida", "mmada", "mmada-tied", "dimple"])
def test_the_head_projects_only_the_positions_asked_for(family):
    adapter, img = _family_adapters()[family]
    inputs = adapter.prepare([img], "what is this", 4)
    seq = inputs.input_ids[None]
    a0, length = inputs.answer_start, seq.shape[1]
    positions = [a0 + 3, a0, a0 + 1]  # any order
    if family == "dimple":
        positions.append(0)  # the first token has no row before it: read from its own (as forward does)
    assert adapter.output_head() is adapter.model.get_output_embeddings()
    full, part, shapes = logits_both_ways(adapter, inputs, seq, positions)
    rows_seen = [s[:-1] for s in shapes]
    assert part.shape == (1, len(positions), VOCAB)
    torch.testing.assert_close(part, full[:, positions], rtol=1e-5, atol=1e-6)
    n_forward = len(rows_seen) // 2
    if family == "mmada-tied":
        # the tied embedding only looks up ids (untouched); the model's full logits are indexed
        assert rows_seen[n_forward:] == rows_seen[:n_forward]
    else:
        # the last head call of forward_at (the answer pass for LaViDa) projected len(positions) rows
        assert rows_seen[-1] == (1, len(positions))
        assert rows_seen[n_forward - 1][-1] == (length - a0 if family == "lavida" else length)


@pytest.mark.parametrize("family", ["llada-v", "lavida", "dimple"])
def test_maps_from_the_narrowed_head_equal_the_full_forward(family):
    from diffusion_cam.extract import Target, grid_gradients, target_scores, window

    adapter, img = _family_adapters()[family]
    inputs = adapter.prepare([img], "what is this", 4)
    seq = inputs.input_ids.clone()
    a0 = inputs.answer_start
    seq[a0:a0 + 2] = torch.tensor(WordTokenizer()("cat sat")["input_ids"])
    targets = [Target(a0 + 1, int(seq[a0 + 1])), Target(a0, int(seq[a0])), Target(a0 + 1, int(seq[a0 + 1]))]
    rows = window(targets)
    assert rows == [a0, a0 + 1]
    full = grid_gradients(adapter, inputs, seq, [0, 1], lambda lg: target_scores(lg, targets, "logodds"))
    part = grid_gradients(adapter, inputs, seq, [0, 1], lambda lg: target_scores(lg, targets, "logodds", rows),
                          positions=rows)
    torch.testing.assert_close(part.scores, full.scores)
    for a, b in zip(full.grads, part.grads):
        for ga, gb in zip(a, b):
            torch.testing.assert_close(gb, ga, rtol=1e-5, atol=1e-7)
            assert ga.abs().max() > 0


@pytest.mark.parametrize("family", ["llada-v", "lavida", "mmada", "mmada-tied", "dimple"])
def test_the_logit_lens_of_the_last_block_gives_the_models_own_logits(family):
    from diffusion_cam.extract import ActivationRecorder

    adapter, img = _family_adapters()[family]
    assert adapter.has_logit_lens
    inputs = adapter.prepare([img], "what is this", 4)
    seq, a0 = inputs.input_ids[None], inputs.answer_start
    last = len(adapter.blocks()) - 1
    with torch.no_grad(), ActivationRecorder(adapter.blocks(), [last], adapter.unwrap) as rec:
        logits = adapter.forward(inputs, seq)
        lens = adapter.logit_lens(rec.get(last, len(rec.outputs[last]) - 1))  # LaViDa: the answer pass
    if family == "lavida":
        torch.testing.assert_close(lens, logits[:, a0:])
    elif family == "dimple":
        torch.testing.assert_close(lens[:, :-1], logits[:, 1:])  # position p is read from row p - 1
    else:
        torch.testing.assert_close(lens, logits)
    # a given answer: random weights (the tied model's above all) may well answer nothing
    adapter.spec = dataclasses.replace(adapter.spec, prompt={**adapter.spec.prompt, "answer_end": [EOS], "answer_fill": EOS})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exp = dc.get_method("tam", adapter, state="final").explain(img, "what is this", answer="cat sat", gen_length=4)
    # (with random weights a word's lens logit may be negative at every image position: a flagged zero map,
    # with one warning naming it)
    assert exp.tokens == ["cat", "sat"] and np.isfinite(exp.maps).all()
    assert all(bool(m.any()) != flag for m, flag in zip(exp.maps, exp.degenerate))
    flagged = [str(w.message) for w in caught if issubclass(w.category, dc.errors.DegenerateMapWarning)]
    assert len(caught) == len(flagged) == sum(exp.degenerate)  # one warning per flagged map, nothing else
    assert all(any(f"({t!r})" in m for m in flagged) for t, bad in zip(exp.tokens, exp.degenerate) if bad)


def test_tam_without_a_final_norm_says_which_key_is_missing():
    spec = dataclasses.replace(tiny_spec("mmada", image={"rule": "vq_block", "shape": [4, 4], "offset": OFFSET,
                                                         "before": [MMU, SOI], "after": [EOI]}), final_norm="")
    adapter = ConfigAdapter(spec, {"model": IdsModel(), "tokenizer": WordTokenizer(), "vq_fn": fake_vq((4, 4))})
    assert not adapter.has_logit_lens
    with pytest.raises(ExtractionError, match="final_norm"):
        dc.get_method("tam", adapter)
    with pytest.raises(ModelLoadError, match="final_norm path 'model.model.nope'"):
        ConfigAdapter(dataclasses.replace(spec, final_norm="model.model.nope"),
                      {"model": IdsModel(), "tokenizer": WordTokenizer(), "vq_fn": fake_vq((4, 4))})
