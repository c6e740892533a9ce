"""Adapters described by a JSON or YAML file, so a new family needs no code.

A family file names where the blocks are, the mask and stop ids, how image
tokens are laid out (``image.rule``), how a forward is run, whether logits
are shifted, the prompt template and the loader.  The built-in families are
themselves such files (``families/*.json``); ``load_model`` accepts a family
file too::

    dc.load_model("my_family.yaml", checkpoint="org/model", trust_remote_code=True)

Keys (see ``families/*.json`` for complete examples):

``name``, ``family``, ``description``
    identifiers shown by ``diffusion-cam models``.
``hub_ids`` / ``hub_patterns`` / ``model_types``
    hub ids (aliases), shell patterns of hub ids, and ``config.json``
    ``model_type`` values that select this family for a hub id or local folder.
``loader``
    ``llava`` | ``mmada`` | ``lumina`` | ``auto`` (AutoModel + AutoProcessor)
    | ``diffusion_gemma`` (code adapter); ``loader_kwargs`` go to it.
``trust_remote_code``
    the family runs code shipped outside this library; the user must allow it.
``blocks``
    attribute path of the hooked ``ModuleList`` from the loaded object, e.g.
    ``model.model.transformer.blocks``.
``mask_token_id``, ``stop_token_ids``, ``logits_shift`` (0 or 1), ``join``
``forward``
    ``ids`` | ``embeds`` | ``prefix``; ``forward_kwargs`` are passed to the model.
``image``
    ``{"rule": "anyres", "view_tokens", "patch", "pinpoints", "max_patches", "newline"}``,
    ``{"rule": "vq_block", "shape": [h, w], "offset", "before": [ids], "after": [ids]}``,
    ``{"rule": "vq_rows", "offset", "newline", "boi", "eoi", "downsample"}``,
    ``{"rule": "token_runs", "image_token_id", "grid": "thw" | [h, w], "merge"}``.
``prompt``
    ``{"template": "...{image}...{prompt}...", "answer_prefix": [ids], "answer_suffix": [ids]}``
    (ids placed right before / after the answer canvas); the
    ``{image}`` slot becomes the image tokens; text pieces are tokenized
    without special tokens (write BOS into the template).  ``"answer_end":
    [ids], "answer_fill": id`` say how a finished answer sits on the canvas
    (end-of-turn ids, then the filler to the canvas end), which a given
    answer (``explain(..., answer=...)``) needs.
``final_norm``
    attribute path of the norm between the last block and the output head
    (``model.model.norm``); with the head (``get_output_embeddings()``) it is
    the logit lens that the TAM baseline reads image positions through.
``generation``, ``default_layer``, ``states``, ``verified``
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ExtractionError, ModelLoadError, PromptError, TargetError
from . import llada_family as fam
from .base import Adapter, GenerationConfig, ImageGrid, ModelInputs
from .head_rows import head_rows

FAMILIES_DIR = Path(__file__).with_name("families")
RULES = ("anyres", "vq_block", "vq_rows", "token_runs")
FORWARDS = ("ids", "embeds", "prefix")
LOADERS = ("llava", "mmada", "lumina", "auto", "diffusion_gemma")


@dataclass
class FamilySpec:
    name: str
    family: str
    blocks: str = ""
    final_norm: str = ""
    description: str = ""
    hub_ids: list[str] = field(default_factory=list)
    hub_patterns: list[str] = field(default_factory=list)
    model_types: list[str] = field(default_factory=list)
    loader: str = "auto"
    loader_kwargs: dict[str, Any] = field(default_factory=dict)
    trust_remote_code: bool = False
    mask_token_id: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    logits_shift: int = 0
    join: str = ""
    forward: str = "ids"
    forward_kwargs: dict[str, Any] = field(default_factory=dict)
    mrope: bool = False
    disable_checkpointing: bool = False
    image: dict[str, Any] = field(default_factory=dict)
    prompt: dict[str, Any] = field(default_factory=dict)
    generation: dict[str, Any] = field(default_factory=dict)
    default_layer: int | None = None
    states: dict[str, str | None] = field(default_factory=lambda: {"trajectory": None, "final": None})
    verified: str = "no"
    source: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> "FamilySpec":
        known = set(cls.__dataclass_fields__) - {"source"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelLoadError(f"family description {source}: unknown key(s) {', '.join(unknown)}")
        for key in ("name", "family"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise ModelLoadError(f"family description {source}: {key!r} must be a non-empty string")
        spec = cls(**dict(data), source=source)
        spec.validate()
        return spec

    def validate(self) -> None:
        where = f"family description {self.source}"
        if self.loader not in LOADERS:
            raise ModelLoadError(f"{where}: loader {self.loader!r} is not one of {', '.join(LOADERS)}")
        if self.loader == "diffusion_gemma":
            return  # a code adapter: the file only registers it
        if not self.blocks:
            raise ModelLoadError(f"{where}: 'blocks' (attribute path of the hooked ModuleList) is required")
        if self.forward not in FORWARDS:
            raise ModelLoadError(f"{where}: forward {self.forward!r} is not one of {', '.join(FORWARDS)}")
        if self.image.get("rule") not in RULES:
            raise ModelLoadError(f"{where}: image.rule {self.image.get('rule')!r} is not one of {', '.join(RULES)}")
        if self.forward in ("embeds", "prefix") and self.image["rule"] != "anyres":
            raise ModelLoadError(f"{where}: forward {self.forward!r} splices LLaVA image features: it needs image.rule anyres")
        if "{prompt}" not in self.prompt.get("template", ""):
            raise ModelLoadError(f"{where}: prompt.template must contain {{prompt}}")
        if self.logits_shift not in (0, 1):
            raise ModelLoadError(f"{where}: logits_shift must be 0 or 1")
        if self.mask_token_id is None:
            raise ModelLoadError(f"{where}: mask_token_id is required for mask-diffusion families")
        ending = [*self.prompt.get("answer_end", []), *([self.prompt["answer_fill"]] if "answer_fill" in self.prompt else [])]
        not_stops = sorted({int(t) for t in ending} - {int(t) for t in self.stop_token_ids})
        if not_stops:
            raise ModelLoadError(f"{where}: prompt.answer_end / answer_fill ids {not_stops} are not stop tokens; "
                                 "add them to stop_token_ids so that a given answer ends where they start")

    def matches_hub_id(self, name: str) -> bool:
        low = name.lower()
        return any(low == h.lower() for h in self.hub_ids) or any(fnmatch.fnmatch(low, p.lower()) for p in self.hub_patterns)


def read_spec(path: str | Path) -> FamilySpec:
    """Parse a family description file (``.json``, ``.yaml``/``.yml``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ModelLoadError(f"cannot read family description {path}: {err.strerror}") from None
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ModelLoadError(f"{path}: YAML family files need pyyaml (pip install pyyaml), or write JSON") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ModelLoadError(f"{path}: invalid YAML: {err}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ModelLoadError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: a family description is a mapping of keys to values")
    return FamilySpec.from_dict(data, source=str(path))


def builtin_specs() -> list[FamilySpec]:
    return [read_spec(p) for p in sorted(FAMILIES_DIR.glob("*.json"))]


def resolve_path(root: Any, path: str, what: str = "block path") -> Any:
    """Follow a dotted attribute path (``model.`` names the loaded object itself)."""
    obj = root
    parts = path.split(".")
    if parts and parts[0] == "model":
        parts = parts[1:]
    for i, part in enumerate(parts):
        if part.isdigit():
            obj = obj[int(part)]
            continue
        if not hasattr(obj, part):
            done = ".".join(["model", *parts[:i]])
            raise ModelLoadError(f"{what} {path!r}: {done} ({type(obj).__name__}) has no attribute {part!r}")
        obj = getattr(obj, part)
    return obj


class ConfigAdapter(Adapter):
    """A mask-diffusion adapter whose family-specific parts come from a :class:`FamilySpec`.

    ``components``: ``model``; ``tokenizer`` (callable returning
    ``{"input_ids": [...]}``, with ``decode``); and, by image rule,
    ``image_fn`` (anyres: PIL images -> ``{"images", "image_sizes"}``),
    ``vq_fn`` (VQ rules: RGB array -> (h, w) code tensor) or ``processor``
    (token_runs with ``grid: thw``: HF processor) or ``image_fn`` returning
    model keyword tensors (token_runs with a fixed grid).
    """

    def __init__(self, spec: FamilySpec, components: Mapping[str, Any], name: str | None = None) -> None:
        self.spec = spec
        self.family = spec.family
        self.name = name or (spec.hub_ids[0] if spec.hub_ids else spec.name)
        self.state_support = dict(spec.states)
        self.verified_on_real_weights = spec.verified.lower().startswith("yes")
        self.components = dict(components)
        self._model = self.components["model"]
        self.tokenizer = self.components["tokenizer"]
        self._model.eval()
        if spec.disable_checkpointing:
            # LaViDa forces activation checkpointing even in eval; hooks would then see no-grad activations
            inner = getattr(self._model, "model", self._model)
            if hasattr(inner, "set_activation_checkpointing"):
                inner.set_activation_checkpointing(None)
        self._blocks = resolve_path(self._model, spec.blocks)
        if not isinstance(self._blocks, (nn.ModuleList, list, tuple)) or not len(self._blocks):
            raise ModelLoadError(f"block path {spec.blocks!r} is not a non-empty list of modules")
        self._final_norm = resolve_path(self._model, spec.final_norm, "final_norm path") if spec.final_norm else None
        if self._final_norm is not None and not callable(self._final_norm):
            raise ModelLoadError(f"final_norm path {spec.final_norm!r} is not a module")

    # ------------------------------------------------------------------ model
    @property
    def model(self) -> nn.Module:
        return self._model

    def blocks(self):
        return self._blocks

    @property
    def mask_token_id(self) -> int:
        return int(self.spec.mask_token_id)

    @property
    def stop_token_ids(self) -> frozenset[int]:
        return frozenset(int(t) for t in self.spec.stop_token_ids)

    @property
    def default_layer(self) -> int:
        if self.spec.default_layer is not None:
            return self.spec.default_layer % len(self._blocks)
        return super().default_layer

    @property
    def default_generation(self) -> GenerationConfig:
        return GenerationConfig(**self.spec.generation)

    # ----------------------------------------------------------------- prompt
    def _tokens(self, text: str) -> list[int]:
        if not text:
            return []
        return [int(t) for t in self.tokenizer(text, add_special_tokens=False)["input_ids"]]

    def _render(self, prompt: str, image_ids: list[list[int]]) -> tuple[list[int], list[int]]:
        """Template -> ids; each ``{image}`` slot gets one image's ids.  Returns (ids, start of each image)."""
        template = self.spec.prompt["template"]
        head, _, tail = template.partition("{prompt}")
        pieces = []
        for chunk, is_prompt in ((head, False), (prompt, True), (tail, False)):
            if is_prompt:
                pieces.append(("text", chunk))
                continue
            parts = chunk.split("{image}")
            for j, part in enumerate(parts):
                pieces.append(("text", part))
                if j < len(parts) - 1:
                    pieces.append(("image", None))
        slots = sum(1 for kind, _ in pieces if kind == "image")
        if slots != len(image_ids):
            raise PromptError(f"{self.family} takes {slots} image(s) per prompt; {len(image_ids)} given")
        ids: list[int] = []
        starts: list[int] = []
        k = 0
        for kind, text in pieces:
            if kind == "text":
                ids += self._tokens(text)
            else:
                starts.append(len(ids))
                ids += image_ids[k]
                k += 1
        return ids, starts

    def prepare(self, images: Sequence[np.ndarray], prompt: str, gen_length: int) -> ModelInputs:
        from PIL import Image

        if not prompt or not prompt.strip():
            raise PromptError("prompt is empty")
        if not images:
            raise PromptError(f"{self.family} explanations need an image")
        rule = self.spec.image["rule"]
        img = self.spec.image
        extras: dict[str, Any] = {}
        grids: list[ImageGrid] = []
        pil = [Image.fromarray(np.asarray(im)) for im in images]
        if rule == "token_runs" and img.get("grid") == "thw":
            ids, grids, extras = self._processor_inputs(pil, images, prompt)
        else:
            blocks: list[list[int]] = []
            layouts: list[Any] = []
            if rule == "anyres":
                for im in pil:
                    layout = fam.anyres_layout(im.size, view_tokens=int(img["view_tokens"]), patch=int(img["patch"]),
                                               pinpoints=img["pinpoints"], max_patches=img.get("max_patches"),
                                               newline=bool(img.get("newline", True)))
                    blocks.append([fam.IMAGE_SLOT] * layout.length)
                    layouts.append(layout)
                extras.update(self.components["image_fn"](pil))
            elif rule in ("vq_block", "vq_rows"):
                for im in images:
                    codes = torch.as_tensor(self.components["vq_fn"](np.asarray(im)))
                    if rule == "vq_block":
                        shape = tuple(img["shape"])
                        if tuple(codes.shape) != shape:
                            raise ExtractionError(f"the VQ tokenizer returned a {tuple(codes.shape)} code map, not {shape}")
                        ids_im = list(img.get("before", [])) + (codes.flatten() + int(img["offset"])).tolist() + list(img.get("after", []))
                    else:
                        ids_im = fam.vq_rows_ids(codes, int(img["offset"]), img.get("newline"), img.get("boi"), img.get("eoi"))
                    blocks.append([int(t) for t in ids_im])
                    layouts.append(tuple(codes.shape))
            else:  # token_runs with a fixed grid
                h, w = (int(v) for v in img["grid"])
                blocks = [[int(img["image_token_id"])] * (h * w) for _ in images]
                layouts = [(h, w)] * len(images)
                extras.update(self.components["image_fn"](pil))
            ids, starts = self._render(prompt, blocks)
            for i, (start, layout) in enumerate(zip(starts, layouts)):
                grids += self._grids_of(i, start, layout, images[i])
        ids = ids + [int(t) for t in self.spec.prompt.get("answer_prefix", [])]
        answer_start = len(ids)
        seq = ids + [self.mask_token_id] * int(gen_length) + [int(t) for t in self.spec.prompt.get("answer_suffix", [])]
        self.check_context(len(seq), sum(len(g.positions) for g in grids))
        extras["grids"] = grids
        return ModelInputs(torch.tensor(seq, dtype=torch.long), answer_start, int(gen_length), list(images), prompt, extras)

    def _grids_of(self, index: int, start: int, layout: Any, image: np.ndarray) -> list[ImageGrid]:
        height, width = np.asarray(image).shape[:2]
        whole = (0.0, 0.0, float(width), float(height))
        rule, img = self.spec.image["rule"], self.spec.image
        if rule == "anyres":
            base, grid = fam.anyres_grid_positions(start, layout)
            return [ImageGrid(tuple(base), (layout.base, layout.base), whole, index, name=f"image{index}-base"),
                    ImageGrid(tuple(grid), (layout.rows, layout.cols), whole, index, name=f"image{index}-crops")]
        if rule == "vq_block":
            first = start + len(img.get("before", []))
            return [ImageGrid(tuple(range(first, first + layout[0] * layout[1])), layout, whole, index, name=f"image{index}")]
        if rule == "vq_rows":
            first = start + (0 if img.get("boi") is None else 1)
            pos = fam.vq_rows_positions(first, layout, img.get("newline") is not None)
            return [ImageGrid(tuple(pos), layout, whole, index, name=f"image{index}")]
        return [ImageGrid(tuple(range(start, start + layout[0] * layout[1])), layout, whole, index, name=f"image{index}")]

    def _processor_inputs(self, pil, images, prompt):
        """Processor-driven families (Qwen2-VL style): the processor expands the image token itself."""
        img = self.spec.image
        head, _, tail = self.spec.prompt["template"].partition("{prompt}")
        text = head.replace("{image}", img.get("text", "")) + prompt + tail.replace("{image}", img.get("text", ""))
        out = self.components["processor"](text=[text], images=pil, return_tensors="pt")
        ids = [int(t) for t in out["input_ids"][0]]
        runs = fam.runs_of(ids, int(img["image_token_id"]))
        thw = out["image_grid_thw"]
        if len(runs) != len(pil) or len(thw) != len(pil):
            raise PromptError(f"the processor placed {len(runs)} image span(s) for {len(pil)} image(s)")
        grids = []
        for i, ((start, length), g) in enumerate(zip(runs, thw)):
            h, w = fam.thw_grid(g, int(img.get("merge", 2)))
            if h * w != length:
                raise ExtractionError(f"image {i}: a {h}x{w} grid does not fill its {length} image tokens")
            height, width = np.asarray(images[i]).shape[:2]
            grids.append(ImageGrid(tuple(range(start, start + length)), (h, w), (0.0, 0.0, float(width), float(height)),
                                   i, name=f"image{i}"))
        extras = {k: v for k, v in out.items() if k not in ("input_ids", "attention_mask")}
        return ids, grids, extras

    def image_grids(self, inputs: ModelInputs, sequence: torch.Tensor) -> list[ImageGrid]:
        return list(inputs.extras["grids"])

    # --------------------------------------------------------------- forward
    def _model_kwargs(self, inputs: ModelInputs, batch: int) -> dict[str, Any]:
        device = self.device
        kwargs = {}
        for key, value in inputs.extras.items():
            if key == "grids":
                continue
            if isinstance(value, torch.Tensor):
                value = value.to(device)
                if value.is_floating_point():
                    value = value.to(next(self._model.parameters()).dtype)
            elif isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
                dtype = next(self._model.parameters()).dtype
                value = [v.to(device, dtype) if v.is_floating_point() else v.to(device) for v in value]
            kwargs[key] = value
        return kwargs

    def output_head(self) -> nn.Module | None:
        get = getattr(self._model, "get_output_embeddings", None)
        head = get() if callable(get) else None
        return head if isinstance(head, nn.Module) else None

    def forward(self, inputs: ModelInputs, sequence: torch.Tensor) -> torch.Tensor:
        return self._logits(inputs, sequence, None)

    @property
    def has_logit_lens(self) -> bool:
        return self._final_norm is not None and self.output_head() is not None

    def logit_lens(self, hidden: torch.Tensor) -> torch.Tensor:
        if not self.has_logit_lens:
            return super().logit_lens(hidden)
        head = self.output_head()
        normed = self._final_norm(hidden)
        # a tied head is the input embedding, applied as F.linear by the model
        return F.linear(normed, head.weight) if isinstance(head, nn.Embedding) else head(normed)

    def forward_at(self, inputs: ModelInputs, sequence: torch.Tensor, positions: Sequence[int]) -> torch.Tensor:
        positions = [int(p) for p in positions]
        if self.spec.forward == "prefix" and min(positions, default=inputs.answer_start) < inputs.answer_start:
            # the answer pass holds no prompt rows (forward gives zeros there)
            return super().forward_at(inputs, sequence, positions)
        return self._logits(inputs, sequence, positions)

    def _logits(self, inputs: ModelInputs, sequence: torch.Tensor, positions: list[int] | None) -> torch.Tensor:
        """Every row aligned to its position (``positions`` None) or the rows at ``positions``: the output head,
        narrowed by :func:`head_rows`, projects only the hidden rows those positions read."""
        spec = self.spec
        batch, length = sequence.shape
        a0 = inputs.answer_start
        if positions is None:
            head, head_length, rows = None, 0, []
        elif spec.forward == "prefix":
            # the answer pass's head sees the answer only
            head, head_length, rows = self.output_head(), length - a0, [p - a0 for p in positions]
        else:
            # Dream-style shifted logits: position p is scored from the hidden row before it
            head, head_length, rows = self.output_head(), length, [max(p - spec.logits_shift, 0) for p in positions]
        with head_rows(head, head_length, rows) as cut:
            logits = self._run(inputs, sequence)
        if positions is None:
            if spec.forward == "prefix" and logits.shape[1] == length - a0:  # answer rows only
                logits = torch.cat([logits.new_zeros((batch, a0, logits.shape[-1])), logits], dim=1)
            if logits.shape[:2] != (batch, length):
                raise ExtractionError(
                    f"{self.family} forward returned logits {tuple(logits.shape)} for a {length}-token sequence")
            return fam.shift_logits(logits, spec.logits_shift)
        if cut.cut:
            if logits.shape[:2] != (batch, len(rows)):
                raise ExtractionError(f"{self.family} forward returned logits {tuple(logits.shape)} for "
                                      f"{len(rows)} positions of a {length}-token sequence")
            return logits
        # the head never saw a full-length input (weights tied through F.linear): index every row
        if logits.shape[:2] != (batch, head_length):
            raise ExtractionError(f"{self.family} forward returned logits {tuple(logits.shape)} for a {length}-token sequence")
        return cut.pick(logits)

    def _run(self, inputs: ModelInputs, sequence: torch.Tensor) -> torch.Tensor:
        """The family's forward: logits as the model returns them (the answer rows only after a prefix pass)."""
        spec = self.spec
        batch, length = sequence.shape
        if spec.forward == "ids":
            kwargs = {**self._model_kwargs(inputs, batch), **spec.forward_kwargs}
            if spec.image["rule"] == "token_runs" and spec.image.get("grid") == "thw":
                kwargs.setdefault("attention_mask", torch.ones_like(sequence))
                if spec.mrope and hasattr(self._model, "get_rope_index"):
                    kwargs["position_ids"] = self._model.get_rope_index(
                        sequence, kwargs.get("image_grid_thw"), None, kwargs["attention_mask"])[0]
            return fam.logits_of(self._model(sequence, **kwargs))
        kwargs = self._model_kwargs(inputs, batch)
        a0 = inputs.answer_start
        prompt, answer = sequence[:, :a0], sequence[:, a0:]
        run = fam.forward_embeds if spec.forward == "embeds" else fam.forward_prefix
        return run(self._model, prompt, answer, kwargs.get("images"), kwargs.get("image_sizes"))

    # ------------------------------------------------------------------ text
    def decode(self, ids: Sequence[int]) -> list[str]:
        return [self.tokenizer.decode([int(i)]) for i in ids]

    def join(self, texts: Sequence[str]) -> str:
        return self.spec.join.join(texts).strip()

    def answer_canvas(self, text: str, min_length: int) -> list[int]:
        fill = self.spec.prompt.get("answer_fill")
        if fill is None:
            raise TargetError(f"{self.name}: its family file does not say how a finished answer ends (prompt.answer_end, "
                              "prompt.answer_fill), so a given answer cannot be placed on the canvas")
        ids = self._tokens(text)
        if not ids:
            raise TargetError(f"the given answer {text!r} is empty")
        ids += [int(t) for t in self.spec.prompt.get("answer_end", [])]
        return ids + [int(fill)] * max(0, min_length - len(ids))

    def token_id(self, word: str) -> int:
        ids = self._tokens(word)
        if len(ids) != 1:
            raise TargetError(f"word {word!r} is {len(ids)} tokens for {self.name}; pass a single-token word or an id")
        return ids[0]


# ------------------------------------------------------------------ loading
def load_family(spec: FamilySpec, name: str, *, trust_remote_code: bool = False, allow_pickle: bool = False,
                torch_dtype: Any = None, device_map: str | None = None, **options: Any) -> Adapter:
    """Load checkpoint ``name`` (hub id or folder) of the family ``spec`` (``device_map``: accelerate's placement)."""
    if spec.trust_remote_code and not trust_remote_code:
        raise ModelLoadError(
            f"{spec.family} runs model code that ships with the checkpoint or its repository, not with this library; "
            "allow it explicitly with trust_remote_code=True (CLI: --trust-remote-code)"
        )
    if spec.loader == "diffusion_gemma":
        from .diffusion_gemma import load_diffusion_gemma

        return load_diffusion_gemma(name, allow_pickle=allow_pickle, torch_dtype=torch_dtype, device_map=device_map,
                                    **options)
    if options:
        raise TypeError(f"unknown option(s) for {spec.family}: {', '.join(sorted(options))}")
    components = fam.load_components(spec, name, allow_pickle=allow_pickle, torch_dtype=torch_dtype,
                                     device_map=device_map)
    return ConfigAdapter(spec, components, name=name)


def _local_model_type(folder: Path) -> tuple[str | None, list[str]]:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, []
    return config.get("model_type"), list(config.get("architectures") or [])


def _resolver(name: str):
    """Pick a family for a family file, a local checkpoint folder or a hub id."""
    path = Path(name).expanduser()
    if path.suffix in (".json", ".yaml", ".yml") and path.is_file():
        spec = read_spec(path)

        def from_file(_name: str, checkpoint: str | None = None, **options: Any) -> Adapter:
            target = checkpoint or (spec.hub_ids[0] if spec.hub_ids else None)
            if target is None:
                raise ModelLoadError(f"{path}: pass checkpoint=... (CLI: --checkpoint), the folder or hub id to load "
                                     "with this description")
            return load_family(spec, target, **options)

        return from_file
    specs = builtin_specs()
    if path.is_dir():
        model_type, archs = _local_model_type(path)
        for spec in specs:
            if model_type in spec.model_types or any(a in spec.model_types for a in archs):
                return lambda n, **o: load_family(spec, n, **o)
        for spec in specs:  # a local copy named like a hub checkpoint ("LLaDA-V", "lavida-llada-v1.0-instruct")
            repos = [h.split("/")[-1].lower() for h in spec.hub_ids]
            if path.name.lower() in repos or spec.matches_hub_id(f"local/{path.name}"):
                return lambda n, **o: load_family(spec, n, **o)
        return None
    for spec in specs:
        if spec.matches_hub_id(name):
            return lambda n, **o: load_family(spec, n, **o)
    return None


def register_builtin_families() -> None:
    from .registry import ModelEntry, register_model, register_resolver

    for spec in builtin_specs():
        if not spec.hub_ids:
            continue
        states = tuple(s for s, reason in spec.states.items() if reason is None)

        def loader(_spec=spec, **options: Any) -> Adapter:
            return load_family(_spec, _spec.hub_ids[0], **options)

        register_model(ModelEntry(
            name=spec.name, loader=loader, description=spec.description, family=spec.family, states=states,
            verified=spec.verified, aliases=tuple(spec.hub_ids),
        ))
    register_resolver(_resolver)
