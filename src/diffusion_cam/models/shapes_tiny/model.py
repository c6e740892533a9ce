"""A small LLaDA-V-style masked-diffusion vision-language model.

Vision encoder (normalised conv stem down to a 12 x 12 patch grid, then
transformer layers) -> two-layer GELU MLP projector -> bidirectional
transformer language model over one sequence that holds the image tokens,
the prompt and a masked answer canvas. No causal mask anywhere: every answer
position sees the whole image, the prompt and the other canvas positions,
which is what a masked-diffusion denoiser needs.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .tokenizer import ShapesTokenizer

__all__ = ["ShapesTinyConfig", "ShapesTinyModel", "Block", "load_pretrained", "save_pretrained"]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
GROUND_GAIN_INIT = 20.0


@dataclass
class ShapesTinyConfig:
    image_size: int = 96
    grid: int = 12
    stem_channels: tuple[int, ...] = (32, 64, 128)
    # Residual conv blocks after each stride-2 stage: they widen each patch's
    # receptive field past a whole object (~60 px), which is what lets a patch
    # in the flat interior of a shape know whether it belongs to a disc or a square.
    stem_blocks: tuple[int, ...] = (1, 1, 2)
    vision_dim: int = 128
    vision_layers: int = 2
    vision_heads: int = 4
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: int = 4
    vocab_size: int = 29
    max_seq_len: int = 176
    gen_length: int = 12
    # Dense auxiliary heads on the vision output (per-patch colour, shape and
    # left-to-right rank of the covering object, class 0 = background). Used
    # only as a training signal; kept in the checkpoint so training resumes.
    aux_classes: tuple[int, ...] = (6, 5, 4)
    # Feed the projector the patch's class probabilities from the auxiliary
    # heads next to its features: a clean, low-dimensional colour/shape/rank
    # code the language model learns to read in a few hundred steps (from the
    # raw features alone it picked up shape quickly but colour not at all).
    semantic_inputs: bool = True
    # A learned embedding of the offset from <sep> added on the answer canvas:
    # the canvas starts at a prompt-dependent absolute position, so absolute
    # positions alone make "first answer word" a different slot per prompt.
    answer_positions: bool = True
    # The same dense colour/shape/rank heads on the projector output. Without
    # them the projector, trained only through the language model, discards
    # colour early on (decodable from the vision features, not from the image
    # tokens) and colour questions stay at chance.
    projector_aux: bool = True
    # Add to each image token the language model's own embeddings of the colour
    # and shape words, weighted by the patch's class probabilities. A question
    # word ("circle") and the patches it names then share a vector, so the
    # answer can find its object by attention; without it the model saw which
    # colours were present but bound a question to its object only at chance.
    word_grounding: bool = False
    # The other half of that pairing: a colour or shape word in the text gets
    # the same vector (its unit-norm embedding times the same gain) added to
    # its embedding. Without it a prompt word (norm < 1) sits in a residual
    # stream that the first block fills with image content (norm ~60), and two
    # question words ("circle", "cross") ended up indistinguishable there.
    text_grounding: bool = False
    pixel_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    pixel_std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    tokenizer: dict[str, Any] = field(default_factory=dict)

    @property
    def n_image_tokens(self) -> int:
        return self.grid * self.grid

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ShapesTinyConfig":
        known = {f.name for f in fields(cls)}
        kw = {}
        for k, v in d.items():
            if k not in known:
                continue
            kw[k] = tuple(v) if isinstance(v, list) else v
        return cls(**kw)


class Block(nn.Module):
    """Pre-norm bidirectional transformer block: ``x -> x'`` of the same shape."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError("dim must be divisible by heads")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))
        # Set per call by the owner model (a key-padding mask or None); keeping
        # it off the signature lets hooks and explainers call ``block(x)``.
        self.attn_mask: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=self.attn_mask)
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    groups = 8 if cout % 8 == 0 else 1
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.GroupNorm(groups, cout), nn.GELU())


class _ResBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        groups = 8 if ch % 8 == 0 else 1
        self.body = nn.Sequential(
            nn.Conv2d(ch, ch, 3, 1, 1, bias=False), nn.GroupNorm(groups, ch), nn.GELU(),
            nn.Conv2d(ch, ch, 3, 1, 1, bias=False), nn.GroupNorm(groups, ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x + self.body(x))


class ShapesTinyModel(nn.Module):
    def __init__(self, config: ShapesTinyConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        n_down = int(round(math.log2(c.image_size // c.grid)))
        if c.grid * 2**n_down != c.image_size:
            raise ValueError("image_size must be grid * a power of two")
        if len(c.stem_channels) != n_down or len(c.stem_blocks) != n_down:
            raise ValueError(f"stem_channels and stem_blocks need {n_down} entries (one per stride-2 stage)")
        layers: list[nn.Module] = []
        cin = 3
        for i, (co, nb) in enumerate(zip(c.stem_channels, c.stem_blocks)):
            co = c.vision_dim if i == n_down - 1 else co
            layers.append(_conv(cin, co, 2))
            layers += [_ResBlock(co) for _ in range(nb)]
            cin = co
        self.stem = nn.Sequential(*layers)
        self.vision_pos = nn.Parameter(torch.zeros(1, c.n_image_tokens, c.vision_dim))
        self.vision_blocks = nn.ModuleList(Block(c.vision_dim, c.vision_heads, c.mlp_ratio) for _ in range(c.vision_layers))
        self.vision_norm = nn.LayerNorm(c.vision_dim)
        self.aux_head = nn.Linear(c.vision_dim, sum(c.aux_classes))
        proj_in = c.vision_dim + (sum(c.aux_classes) if c.semantic_inputs else 0)
        self.projector = nn.Sequential(nn.Linear(proj_in, c.d_model), nn.GELU(), nn.Linear(c.d_model, c.d_model))
        self.proj_aux_head = nn.Linear(c.d_model, sum(c.aux_classes)) if c.projector_aux else None
        # Image tokens are ~50x the norm of word embeddings; the grounding words
        # enter at unit norm times a learned gain so they are not lost in them.
        if c.text_grounding and not c.word_grounding:
            raise ValueError("text_grounding adds the image side's grounding vectors to the text: it needs word_grounding")
        self.ground_gain = nn.Parameter(torch.tensor(GROUND_GAIN_INIT)) if c.word_grounding else None

        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.pos = nn.Parameter(torch.zeros(1, c.max_seq_len, c.d_model))
        self.answer_pos = nn.Parameter(torch.zeros(1, c.gen_length, c.d_model)) if c.answer_positions else None
        self.blocks = nn.ModuleList(Block(c.d_model, c.n_heads, c.mlp_ratio) for _ in range(c.n_layers))
        self.norm = nn.LayerNorm(c.d_model)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size)

        tok = ShapesTokenizer.from_dict(c.tokenizer) if c.tokenizer else ShapesTokenizer(n_image_tokens=c.n_image_tokens)
        self.image_token_id = tok.image_id
        self.pad_token_id = tok.pad_id
        self.mask_token_id = tok.mask_id
        self.sep_token_id = tok.sep_id
        from ...datasets.shapes import COLOURS, SHAPES

        # aux classes are (background, then the contract's order): rows 1.. of the heads
        self.register_buffer("colour_word_ids", torch.tensor([tok.token_to_id[w] for w in COLOURS]), persistent=False)
        self.register_buffer("shape_word_ids", torch.tensor([tok.token_to_id[w] for w in SHAPES]), persistent=False)
        self.register_buffer("grounded_word_ids", torch.cat([self.colour_word_ids, self.shape_word_ids]), persistent=False)
        self.register_buffer("pixel_mean", torch.tensor(c.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(c.pixel_std).view(1, 3, 1, 1), persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
        nn.init.trunc_normal_(self.vision_pos, std=0.02)
        nn.init.trunc_normal_(self.pos, std=0.02)
        if self.answer_pos is not None:
            nn.init.trunc_normal_(self.answer_pos, std=0.02)

    @property
    def grid_size(self) -> tuple[int, int]:
        return (self.config.grid, self.config.grid)

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    def preprocess(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, H, W, 3)`` (or one ``(H, W, 3)``) -> normalised ``(B, 3, H, W)`` float."""
        x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected uint8 images (B, H, W, 3), got shape {tuple(x.shape)}")
        size = self.config.image_size
        if tuple(x.shape[1:3]) != (size, size):
            raise ValueError(f"images must be {size}x{size}, got {tuple(x.shape[1:3])}")
        x = x.to(device=self.device, dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
        return (x - self.pixel_mean) / self.pixel_std

    def encode_vision(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Vision-encoder output ``(B, grid*grid, vision_dim)`` in raster order."""
        x = self.stem(pixel_values).flatten(2).transpose(1, 2) + self.vision_pos
        for blk in self.vision_blocks:
            blk.attn_mask = None
            x = blk(x)
        return self.vision_norm(x)

    def aux_logits(self, vision_features: torch.Tensor) -> list[torch.Tensor]:
        return list(self.aux_head(vision_features).split(list(self.config.aux_classes), dim=-1))

    def embed_inputs(self, input_ids: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        """Token embeddings with ``image_embeds`` (B, n_img, D) scattered onto the ``<image>`` slots."""
        b, length = input_ids.shape
        if length > self.config.max_seq_len:
            raise ValueError(f"sequence of {length} tokens exceeds max_seq_len {self.config.max_seq_len}")
        is_img = input_ids == self.image_token_id
        n_img = self.config.n_image_tokens
        counts = is_img.sum(dim=1)
        if not bool((counts == n_img).all()):
            raise ValueError(f"every sequence needs exactly {n_img} <image> tokens, got {counts.tolist()}")
        x = self.embed(input_ids)
        if self.config.text_grounding:
            grounded = torch.isin(input_ids, self.grounded_word_ids)
            x = x + self.ground_gain * self._unit_embeddings()[input_ids] * grounded.unsqueeze(-1).to(x.dtype)
        x = x.masked_scatter(is_img.unsqueeze(-1), image_embeds.to(x.dtype).reshape(-1, x.shape[-1]))
        x = x + self.pos[:, :length]
        if self.answer_pos is not None:
            # Offset from the (first) <sep>; rows without one get no answer embedding.
            is_sep = input_ids == self.sep_token_id
            has_sep = is_sep.any(dim=1, keepdim=True)
            sep_at = is_sep.float().argmax(dim=1, keepdim=True)
            offset = torch.arange(length, device=input_ids.device)[None, :] - sep_at - 1
            on_canvas = has_sep & (offset >= 0)
            slot = offset.clamp(0, self.answer_pos.shape[1] - 1)
            x = x + self.answer_pos[0][slot] * on_canvas.unsqueeze(-1).to(x.dtype)
        return x

    def forward_embeds(self, input_ids: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        """LM pass given already projected image tokens (lets training share one image over prompts)."""
        x = self.embed_inputs(input_ids, image_embeds)
        keep = input_ids != self.pad_token_id
        mask = None if bool(keep.all()) else keep[:, None, None, :]
        for blk in self.blocks:
            blk.attn_mask = mask
            x = blk(x)
        for blk in self.blocks:
            blk.attn_mask = None
        return self.lm_head(self.norm(x))

    def projected_aux_logits(self, image_tokens: torch.Tensor) -> list[torch.Tensor]:
        """Per-patch colour/shape/rank logits read from the projected image tokens (training signal)."""
        if self.proj_aux_head is None:
            return []
        return list(self.proj_aux_head(image_tokens).split(list(self.config.aux_classes), dim=-1))

    def _unit_embeddings(self) -> torch.Tensor:
        """The word embeddings at unit norm: the grounding vectors shared by words and patches."""
        return F.normalize(self.embed.weight, dim=-1)

    def project(self, vision_features: torch.Tensor) -> torch.Tensor:
        """Vision-encoder output -> language-model image tokens ``(B, n_img, d_model)``."""
        x = vision_features
        probs = [a.softmax(-1) for a in self.aux_logits(vision_features)]
        if self.config.semantic_inputs:
            x = torch.cat([x] + probs, dim=-1)
        tokens = self.projector(x)
        if self.config.word_grounding:
            words = self._unit_embeddings()
            grounding = probs[0][..., 1:] @ words[self.colour_word_ids] + probs[1][..., 1:] @ words[self.shape_word_ids]
            tokens = tokens + self.ground_gain * grounding
        return tokens

    def image_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.project(self.encode_vision(pixel_values))

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, L, V)``. Image features go to the ``<image>`` positions in raster order.

        ``<pad>`` tokens (if any) are excluded from attention.
        """
        if pixel_values.shape[0] != input_ids.shape[0]:
            raise ValueError("input_ids and pixel_values must have the same batch size")
        return self.forward_embeds(input_ids, self.image_embeds(pixel_values))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_pretrained(model: ShapesTinyModel, out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (with the vocabulary and the weights' sha256)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    wpath = out / WEIGHTS_NAME
    tmp = out / (WEIGHTS_NAME + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(wpath)
    cfg = model.config.to_dict()
    if not cfg.get("tokenizer"):
        cfg["tokenizer"] = ShapesTokenizer(n_image_tokens=model.config.n_image_tokens).to_dict()
    doc = {"model_type": "shapes_tiny", **cfg, "weights_sha256": _sha256(wpath)}
    if extra:
        doc.update(extra)
    (out / CONFIG_NAME).write_text(json.dumps(doc, indent=2) + "\n")
    return out


def load_pretrained(weights_dir: str | Path, map_location: str | torch.device = "cpu", verify: bool = True) -> ShapesTinyModel:
    """Load a model written by :func:`save_pretrained`, checking the recorded sha256."""
    from safetensors.torch import load_file

    d = Path(weights_dir)
    cfg_path, wpath = d / CONFIG_NAME, d / WEIGHTS_NAME
    if not cfg_path.is_file() or not wpath.is_file():
        raise FileNotFoundError(f"{d} lacks {CONFIG_NAME} or {WEIGHTS_NAME}")
    doc = json.loads(cfg_path.read_text())
    want = doc.get("weights_sha256")
    if verify and want and _sha256(wpath) != want:
        raise ValueError(f"{wpath} does not match the sha256 recorded in {cfg_path}")
    state = load_file(str(wpath), device=str(map_location))
    cfg = ShapesTinyConfig.from_dict(doc)
    # Checkpoints from before the option existed say it only through their weights.
    cfg.projector_aux = "proj_aux_head.weight" in state
    model = ShapesTinyModel(cfg)
    model.load_state_dict(state)
    model.eval()
    model.weights_sha256 = want  # lets results name the exact weights they came from
    return model


def tokenizer_for(model_or_config: ShapesTinyModel | ShapesTinyConfig) -> ShapesTokenizer:
    cfg = model_or_config.config if isinstance(model_or_config, ShapesTinyModel) else model_or_config
    if cfg.tokenizer:
        return ShapesTokenizer.from_dict(cfg.tokenizer)
    return ShapesTokenizer(n_image_tokens=cfg.n_image_tokens)
