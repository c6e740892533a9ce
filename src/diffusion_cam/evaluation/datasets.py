"""Benchmark datasets: items (image, prompt) and, for a generated answer, the word units to score.

A *unit* is one answer word (or a run of consecutive words naming the same
object, which TAM merges) with its kind:

* ``object`` — names an object present in the image; scored against its mask
  (Obj-IoU, Contrast, Concentration, F3, pointing game, deletion / insertion);
* ``count`` — a count word (Shapes); scored against the union of all objects;
* ``function`` — a function word; scored by Func-IoU (should light up nothing);
* ``absent`` — names an object that is not in the image: not scorable, counted.

Datasets: ``shapes`` (built-in, exact masks), ``coco`` (COCO val2014 through
pycocotools, or TAM's ``seg_label/*.png`` layout), ``grandf`` (GranDf GCG
JSON with RLE masks).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import DiffusionCamError, UnknownNameError
from ..io import load_image
from .coco_names import COCO_CATEGORIES, category_vocabulary
from .words import FUNCTION_WORDS, content_words, group_words, match_names, merge_runs, singular_forms

KINDS = ("object", "count", "function", "absent")
SHAPES_SEED = 10_000_000  # disjoint from training (pool seeds [seed, 0]) and its evaluation (7_000_003)


class DatasetError(DiffusionCamError):
    """A dataset's files are missing or not in the expected format."""


@dataclass
class Unit:
    """A scorable part of an answer: word(s), answer token indices, kind, referent mask."""

    word: str
    tokens: list[int]
    kind: str
    mask: np.ndarray | None = field(default=None, repr=False)


@dataclass
class Item:
    """One benchmark query: an id stable across runs, a prompt, and a lazily loaded image."""

    id: str
    prompt: str
    key: Any  # dataset-specific handle (scene seed, image id, annotation index)
    _load: Callable[[], np.ndarray] = field(repr=False, default=None)
    reference: str | None = None  # a reference answer, when the dataset has one

    def image(self) -> np.ndarray:
        return self._load()


class Dataset:
    name = "dataset"

    def __init__(self) -> None:
        self.items: list[Item] = []

    def __len__(self) -> int:
        return len(self.items)

    def describe(self) -> dict[str, Any]:
        """What identifies this dataset in a run's configuration (resume guard)."""
        return {"name": self.name, "items": len(self.items)}

    def units(self, item: Item, texts: Sequence[str]) -> list[Unit]:
        raise NotImplementedError


# ------------------------------------------------------------------ Shapes
def _check_range(limit: int | None, start: int) -> None:
    if limit is not None and int(limit) < 1:
        raise DatasetError(f"at most {limit} items: give at least 1 (or no limit)")
    if int(start) < 0:
        raise DatasetError(f"cannot skip {start} items: give 0 or more")


class ShapesDataset(Dataset):
    """Built-in Shapes scenes ``seed, seed + 1, ...`` with the prompts of the chosen types.

    Every colour / shape word is scored against its referent object, count
    words against the union of the objects, ``a`` / ``and`` are function words.
    """

    name = "shapes"

    def __init__(self, n: int = 300, seed: int = SHAPES_SEED, prompts: Sequence[str] = ("describe",)) -> None:
        super().__init__()
        from ..datasets import shapes

        bad = [p for p in prompts if p not in shapes.PROMPT_TYPES]
        if bad:
            raise UnknownNameError(f"unknown shapes prompt type(s) {bad}; choose from {', '.join(shapes.PROMPT_TYPES)}")
        if int(n) < 1:
            raise DatasetError(f"a shapes dataset needs at least one scene, got n={n}")
        self.n, self.seed, self.prompt_types = int(n), int(seed), tuple(prompts)
        self._shapes = shapes
        for s in range(self.seed, self.seed + self.n):
            scene = self.scene(s)
            for prompt in shapes.prompts_for(scene):
                if shapes.prompt_type(prompt) in self.prompt_types:
                    self.items.append(Item(f"shapes:{s}:{prompt}", prompt, s,
                                           functools.partial(self._image, s), shapes.answer(scene, prompt)))

    @functools.lru_cache(maxsize=64)
    def scene(self, seed: int):
        return self._shapes.generate_scene(seed)

    def _image(self, seed: int) -> np.ndarray:
        return self.scene(seed).image

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "scenes": self.n, "seed": self.seed, "prompts": list(self.prompt_types)}

    def units(self, item: Item, texts: Sequence[str]) -> list[Unit]:
        sh = self._shapes
        scene = self.scene(item.key)
        words = group_words(texts)
        masks = sh.referent_masks(scene, item.prompt, [w for w, _ in words])
        out = []
        for (word, idx), mask in zip(words, masks):
            if word in sh.FUNCTION_WORDS:
                out.append(Unit(word, idx, "function"))
            elif word in sh.COUNT_WORDS:
                out.append(Unit(word, idx, "count", mask))
            elif word in sh.COLOURS or word in sh.SHAPES:
                out.append(Unit(word, idx, "object", mask) if mask is not None else Unit(word, idx, "absent"))
        return out


# ------------------------------------------------------------------ shared: word -> object matching
def _object_units(words: list[tuple[str, list[int]]], labels: list[Any], masks: Callable[[Any], np.ndarray | None],
                  ) -> list[Unit]:
    """Units from per-word object labels (None = no object): merged runs, function words, absent objects."""
    out: list[tuple[int, Unit]] = []
    for label, pos in merge_runs(labels):
        word = " ".join(words[p][0] for p in pos)
        tokens = [t for p in pos for t in words[p][1]]
        mask = masks(label)
        out.append((pos[0], Unit(word, tokens, "object", mask) if mask is not None else Unit(word, tokens, "absent")))
    for p, (word, idx) in enumerate(words):
        if labels[p] is None and word in FUNCTION_WORDS:
            out.append((p, Unit(word, idx, "function")))
    return [u for _, u in sorted(out, key=lambda t: t[0])]


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{path} does not exist") from None
    except (OSError, json.JSONDecodeError) as err:
        raise DatasetError(f"cannot read {path}: {err}") from None


def _pycocotools(feature: str):
    try:
        from pycocotools import mask as mask_utils
        from pycocotools.coco import COCO
    except ImportError:
        raise DatasetError(f"{feature} needs pycocotools: pip install 'diffusion-cam[coco]'") from None
    return COCO, mask_utils


def _first_existing(*paths: Path) -> Path | None:
    return next((p for p in paths if p is not None and p.exists()), None)


# ------------------------------------------------------------------ COCO
class CocoDataset(Dataset):
    """COCO val2014 captioning with per-category masks.

    Two layouts under ``root``:

    * pycocotools: ``annotations/instances_val2014.json`` (or ``instances_minival2014.json``;
      override with ``instances=``) and the images under ``val2014/`` (or ``images/``,
      override with ``images=``); the mask of a category is the union of its
      instances' ``annToMask``; images without annotations are skipped;
    * TAM's release: ``seg_label/{id:012d}.png`` (pixel value = category id) and
      ``image/{id:012d}.jpg``; only images with a mask file are used; category
      names come from the instances JSON if present, else the standard table.

    ``annotations/captions_val2014.json``, if present, gives each item its first
    reference caption (recorded, not scored).  Answer words are matched to
    category names after singularisation, with a synonym table ("man" ->
    person, "dogs" -> dog); consecutive words naming the same category form
    one unit.
    """

    name = "coco"
    PROMPT = "Write a one-sentence caption for this image:"

    def __init__(self, root: str | Path, *, prompt: str | None = None, instances: str | Path | None = None,
                 captions: str | Path | None = None, images: str | Path | None = None,
                 seg_labels: str | Path | None = None, limit: int | None = None, start: int = 0) -> None:
        super().__init__()
        _check_range(limit, start)
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"COCO root {self.root} is not a directory")
        self.prompt = prompt or self.PROMPT
        ann = self.root / "annotations"
        self.instances_path = Path(instances) if instances else _first_existing(
            ann / "instances_val2014.json", ann / "instances_minival2014.json")
        captions_path = Path(captions) if captions else _first_existing(ann / "captions_val2014.json")
        self.seg_dir = Path(seg_labels) if seg_labels else _first_existing(self.root / "seg_label")
        self.images_dir = Path(images) if images else _first_existing(
            self.root / "val2014", self.root / "images", self.root / "image")
        if self.images_dir is None:
            raise DatasetError(f"no image folder under {self.root} (val2014/, images/ or image/); pass images=")

        self.coco = None
        self.names = dict(COCO_CATEGORIES)
        files: dict[int, str] = {}
        if self.instances_path is not None:
            COCO, self._mask_utils = _pycocotools("the COCO dataset")
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
                    self.coco = COCO(str(self.instances_path))
            except (OSError, ValueError, KeyError) as err:
                raise DatasetError(f"cannot read COCO instances {self.instances_path}: {err}") from None
            self.names = {c["id"]: c["name"] for c in self.coco.loadCats(self.coco.getCatIds())}
            files = {i: self.coco.imgs[i]["file_name"] for i in self.coco.getImgIds()}
        elif self.seg_dir is None:
            raise DatasetError(f"{self.root} has neither annotations/instances_val2014.json nor seg_label/")
        self.vocab = category_vocabulary(self.names)
        self.by_name = {v: k for k, v in self.names.items()}

        if self.seg_dir is not None:
            ids = sorted(int(p.stem) for p in self.seg_dir.glob("*.png") if p.stem.isdigit())
        else:
            ids = sorted(i for i in self.coco.getImgIds() if self.coco.getAnnIds(imgIds=i))
        refs: dict[int, str] = {}
        if captions_path is not None:
            for a in sorted(_read_json(captions_path).get("annotations", []), key=lambda a: a.get("id", 0)):
                refs.setdefault(a["image_id"], a["caption"].strip())
        ids = ids[start:] if limit is None else ids[start:start + limit]
        for i in ids:
            path = _first_existing(self.images_dir / f"{i:012d}.jpg",
                                   self.images_dir / files[i] if i in files else None,
                                   self.images_dir / f"COCO_val2014_{i:012d}.jpg")
            if path is None:
                raise DatasetError(f"COCO image {i} not found in {self.images_dir}")
            self.items.append(Item(f"coco:{i}", self.prompt, i, functools.partial(load_image, path), refs.get(i)))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "root": str(self.root), "prompt": self.prompt,
                "layout": "seg_label" if self.seg_dir is not None else "instances",
                "first": self.items[0].id if self.items else None}

    def category_masks(self, image_id: int) -> dict[int, np.ndarray]:
        if self.seg_dir is not None:
            from PIL import Image

            path = self.seg_dir / f"{image_id:012d}.png"
            try:
                label = np.asarray(Image.open(path).convert("L"))
            except OSError as err:
                raise DatasetError(f"cannot read mask {path}: {err}") from None
            return {int(c): label == c for c in np.unique(label) if c in self.names}
        info = self.coco.imgs[image_id]
        out: dict[int, np.ndarray] = {}
        for ann in self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id)):
            m = self.coco.annToMask(ann).astype(bool)
            if m.shape != (info["height"], info["width"]):
                raise DatasetError(f"annotation {ann.get('id')} mask is {m.shape}, image {image_id} is "
                                   f"{(info['height'], info['width'])}")
            out[ann["category_id"]] = out.get(ann["category_id"], False) | m
        return out

    def units(self, item: Item, texts: Sequence[str]) -> list[Unit]:
        words = group_words(texts)
        labels = match_names([w for w, _ in words], self.vocab)
        masks = self.category_masks(item.key)
        return _object_units(words, labels, lambda name: masks.get(self.by_name.get(name)))


# ------------------------------------------------------------------ GranDf
class GranDfDataset(Dataset):
    """GranDf grounded captions (GLaMM's GCG JSON: ``file_name``, ``height``, ``width``,
    ``caption``, ``groundings: {phrase: {token_positives, rle_masks}}``).

    A grounding's mask is the union of its RLE masks (pycocotools).  An
    answer word refers to the first grounding whose phrase contains it as a
    content word (after singularisation); consecutive words referring to the
    same grounding form one unit.
    """

    name = "grandf"
    PROMPT = "Write a description for this image using around two sentences:"

    def __init__(self, annotations: str | Path, images: str | Path, *, prompt: str | None = None,
                 limit: int | None = None, start: int = 0) -> None:
        super().__init__()
        _check_range(limit, start)
        _, self._mask_utils = _pycocotools("the GranDf dataset")
        self.path, self.images_dir = Path(annotations), Path(images)
        data = _read_json(self.path)
        if isinstance(data, dict):
            data = data.get("annotations", data.get("images"))
        if not isinstance(data, list):
            raise DatasetError(f"{self.path}: expected a list of GCG annotations")
        self.prompt = prompt or self.PROMPT
        self.annos = []
        for k, anno in enumerate(data):
            missing = [key for key in ("file_name", "height", "width", "groundings") if key not in anno]
            if missing:
                raise DatasetError(f"{self.path}: annotation {k} has no {', '.join(missing)}")
            self.annos.append(anno)
        chosen = range(start, len(self.annos)) if limit is None else range(start, min(start + limit, len(self.annos)))
        for k in chosen:
            anno = self.annos[k]
            path = self.images_dir / anno["file_name"]
            self.items.append(Item(f"grandf:{anno['file_name']}", self.prompt, k,
                                   functools.partial(load_image, path), anno.get("caption")))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "annotations": str(self.path), "prompt": self.prompt,
                "first": self.items[0].id if self.items else None}

    def grounding_masks(self, k: int) -> list[tuple[str, np.ndarray]]:
        anno = self.annos[k]
        shape = (int(anno["height"]), int(anno["width"]))
        out = []
        for phrase, g in anno["groundings"].items():
            mask = np.zeros(shape, dtype=bool)
            for rle in g.get("rle_masks", []):
                if isinstance(rle.get("counts"), list):  # uncompressed RLE
                    rle = self._mask_utils.frPyObjects(rle, *rle["size"])
                m = self._mask_utils.decode(rle)
                m = m.reshape(m.shape[0], m.shape[1], -1).any(-1)
                if m.shape != shape:
                    raise DatasetError(f"{self.path}: grounding {phrase!r} of {anno['file_name']} has a "
                                       f"{m.shape} mask, the image is {shape}")
                mask |= m
            out.append((phrase, mask))
        return out

    def units(self, item: Item, texts: Sequence[str]) -> list[Unit]:
        groundings = self.grounding_masks(item.key)
        vocab: dict[str, int] = {}
        for g, (phrase, _) in enumerate(groundings):
            for w in content_words(phrase):
                for form in singular_forms(w):
                    vocab.setdefault(form, g)
        words = group_words(texts)
        labels = []
        for w, _ in words:
            hit = None if w in FUNCTION_WORDS else next((vocab[f] for f in singular_forms(w) if f in vocab), None)
            labels.append(hit)
        return _object_units(words, labels, lambda g: groundings[g][1])


DATASETS = ("shapes", "coco", "grandf")


def load_dataset(name: str, **options: Any) -> Dataset:
    """``shapes`` (n, seed, prompts), ``coco`` (root, ...), ``grandf`` (annotations, images, ...)."""
    if name == "shapes":
        return ShapesDataset(**options)
    if name == "coco":
        return CocoDataset(**options)
    if name == "grandf":
        return GranDfDataset(**options)
    raise UnknownNameError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
