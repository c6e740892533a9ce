"""Shapes world: synthetic scenes with pixel-exact ground truth.

Implements the data contract in ``shared/spec/shapes_world.md``. Every scene is
a pure function of its seed (``numpy.random.Generator``), so a scene can be
regenerated anywhere from a single integer.

Conventions
-----------
* Bounding boxes are ``(x0, y0, x1, y1)`` with ``x1``/``y1`` exclusive, so the
  side is ``x1 - x0`` and "at least 3 pixels apart" means at least 3 empty
  pixel columns (or rows) between two boxes.
* Shapes are rasterised at pixel centres ``(i + 0.5)``; a mask never leaves
  its box, though the disc and triangle do not touch every box edge pixel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

__all__ = [
    "CANVAS",
    "COLOURS",
    "COLOUR_RGB",
    "SHAPES",
    "COUNT_WORDS",
    "FUNCTION_WORDS",
    "PROMPT_DESCRIBE",
    "PROMPT_COUNT",
    "PROMPT_TYPES",
    "WORDS",
    "ShapeObject",
    "Scene",
    "generate_scene",
    "generate_scenes",
    "prompts_for",
    "prompt_type",
    "answer",
    "referent_masks",
    "label_image",
    "colour_question",
    "shape_question",
]

CANVAS = 96
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple")
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 210, 40),
    "purple": (150, 50, 190),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
COUNT_WORDS: tuple[str, ...] = ("one", "two", "three")
FUNCTION_WORDS: tuple[str, ...] = ("a", "and")

PROMPT_DESCRIBE = "describe the image"
PROMPT_COUNT = "how many objects"
_COLOUR_Q = "what color is the "
_SHAPE_Q = "what shape is "
PROMPT_TYPES: tuple[str, ...] = ("describe", "color", "shape", "count")

# Every word that can appear in a prompt or an answer, in a fixed order (the
# tokenizer's vocabulary is built from it, so the order is part of the model).
WORDS: tuple[str, ...] = (
    ("describe", "the", "image", "what", "color", "is", "shape", "how", "many", "objects")
    + FUNCTION_WORDS
    + COLOURS
    + SHAPES
    + COUNT_WORDS
)

_NOMINAL = np.array([COLOUR_RGB[c] for c in COLOURS], dtype=np.float64)
_MIN_SIDE, _MAX_SIDE = 18, 34
_BOX_GAP = 3
_MIN_DX = 6
_BG_MIN_DIST = 80.0
_JITTER = 20
_MAX_CLUTTER = 3
_CLUTTER_DELTA = 25
_MAX_NOISE_SIGMA = 16.0


def colour_question(shape: str) -> str:
    return _COLOUR_Q + shape


def shape_question(colour: str) -> str:
    return _SHAPE_Q + colour


@dataclass
class ShapeObject:
    shape: str
    colour: str
    rgb: tuple[int, int, int]
    bbox: tuple[int, int, int, int]
    mask: np.ndarray = field(repr=False)

    @property
    def centre_x(self) -> float:
        return (self.bbox[0] + self.bbox[2]) / 2.0

    def to_dict(self) -> dict:
        return {"shape": self.shape, "colour": self.colour, "rgb": list(self.rgb), "bbox": list(self.bbox)}


@dataclass
class Scene:
    image: np.ndarray = field(repr=False)
    # Objects are stored left to right (by bounding-box centre x), which is the
    # caption order; label k in ``label_image`` is ``objects[k - 1]``.
    objects: list[ShapeObject]
    seed: int | None = None

    @property
    def n_objects(self) -> int:
        return len(self.objects)

    def object_by_colour(self, colour: str) -> ShapeObject | None:
        return next((o for o in self.objects if o.colour == colour), None)

    def object_by_shape(self, shape: str) -> ShapeObject | None:
        return next((o for o in self.objects if o.shape == shape), None)


# Pixel-centre coordinates, shared by all rasterisations.
_YY, _XX = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float32) + 0.5


def _shape_mask(shape: str, bbox: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = bbox
    side = float(x1 - x0)
    xs = _XX[y0:y1, x0:x1]
    ys = _YY[y0:y1, x0:x1]
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    if shape == "circle":
        r = side / 2.0
        sub = (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
    elif shape == "square":
        sub = np.ones(xs.shape, dtype=bool)
    elif shape == "triangle":
        # Half-width grows linearly from 0 at the apex (top edge) to side/2 at the base.
        sub = np.abs(xs - cx) <= (ys - y0) * 0.5
    elif shape == "cross":
        half = side / 6.0
        sub = (np.abs(xs - cx) <= half) | (np.abs(ys - cy) <= half)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    mask = np.zeros((CANVAS, CANVAS), dtype=bool)
    mask[y0:y1, x0:x1] = sub
    return mask


def _far_from_objects(rgb: np.ndarray) -> bool:
    return bool(np.min(np.linalg.norm(_NOMINAL - rgb[None, :], axis=1)) >= _BG_MIN_DIST)


def _boxes_ok(box: tuple[int, int, int, int], placed: Sequence[tuple[int, int, int, int]]) -> bool:
    x0, y0, x1, y1 = box
    cx = (x0 + x1) / 2.0
    for a0, b0, a1, b1 in placed:
        apart = x0 >= a1 + _BOX_GAP or a0 >= x1 + _BOX_GAP or y0 >= b1 + _BOX_GAP or b0 >= y1 + _BOX_GAP
        if not apart or abs(cx - (a0 + a1) / 2.0) < _MIN_DX:
            return False
    return True


def _place(rng: np.random.Generator, n: int) -> list[tuple[int, int, int, int]]:
    # Rejection sampling; large objects can make a layout infeasible, so the
    # whole layout is redrawn (with fresh sizes) after a few failed attempts.
    while True:
        boxes: list[tuple[int, int, int, int]] = []
        for _ in range(n):
            side = int(rng.integers(_MIN_SIDE, _MAX_SIDE + 1))
            for _attempt in range(50):
                x0 = int(rng.integers(0, CANVAS - side + 1))
                y0 = int(rng.integers(0, CANVAS - side + 1))
                box = (x0, y0, x0 + side, y0 + side)
                if _boxes_ok(box, boxes):
                    boxes.append(box)
                    break
            else:
                break
        if len(boxes) == n:
            return boxes


def _background(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    while True:
        bg = rng.integers(70, 161, size=3).astype(np.float64)
        if _far_from_objects(bg):
            break
    sigma = rng.uniform(0.0, _MAX_NOISE_SIGMA)
    img = np.empty((CANVAS, CANVAS, 3), dtype=np.float32)
    img[...] = bg.astype(np.float32)
    for _ in range(int(rng.integers(0, _MAX_CLUTTER + 1))):
        for _attempt in range(20):
            col = bg + rng.integers(-_CLUTTER_DELTA, _CLUTTER_DELTA + 1, size=3)
            if _far_from_objects(col):
                break
        else:
            continue
        ex, ey = rng.uniform(0, CANVAS, size=2)
        ax, ay = rng.uniform(5, 22, size=2)
        th = rng.uniform(0, np.pi)
        c, s = np.cos(th), np.sin(th)
        u = (_XX - ex) * c + (_YY - ey) * s
        v = -(_XX - ex) * s + (_YY - ey) * c
        img[(u / ax) ** 2 + (v / ay) ** 2 <= 1.0] = col.astype(np.float32)
    img += rng.normal(0.0, sigma, size=img.shape).astype(np.float32)
    return img, bg


def generate_scene(rng_or_seed: np.random.Generator | int, n_objects: int | None = None) -> Scene:
    """Draw one scene. An ``int`` seed makes the scene reproducible on its own."""
    if isinstance(rng_or_seed, np.random.Generator):
        rng, seed = rng_or_seed, None
    else:
        seed = int(rng_or_seed)
        rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 4)) if n_objects is None else int(n_objects)
    if not 1 <= n <= 3:
        raise ValueError(f"a scene holds 1 to 3 objects, got {n}")
    shapes = [SHAPES[i] for i in rng.choice(len(SHAPES), size=n, replace=False)]
    colours = [COLOURS[i] for i in rng.choice(len(COLOURS), size=n, replace=False)]
    boxes = _place(rng, n)
    img, _ = _background(rng)
    objects: list[ShapeObject] = []
    for shape, colour, box in zip(shapes, colours, boxes):
        rgb = np.clip(np.array(COLOUR_RGB[colour]) + rng.integers(-_JITTER, _JITTER + 1, size=3), 0, 255)
        mask = _shape_mask(shape, box)
        img[mask] = rgb.astype(np.float32)
        objects.append(ShapeObject(shape, colour, tuple(int(v) for v in rgb), box, mask))
    objects.sort(key=lambda o: o.centre_x)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return Scene(image=image, objects=objects, seed=seed)


def generate_scenes(seed: int, count: int) -> list[Scene]:
    """``count`` scenes from one generator stream (faster than one seed each)."""
    rng = np.random.default_rng(seed)
    return [generate_scene(rng) for _ in range(count)]


def label_image(scene: Scene) -> np.ndarray:
    """uint8 (96, 96): 0 background, k for ``scene.objects[k - 1]`` (left to right)."""
    lab = np.zeros((CANVAS, CANVAS), dtype=np.uint8)
    for k, obj in enumerate(scene.objects, start=1):
        lab[obj.mask] = k
    return lab


def prompts_for(scene: Scene) -> list[str]:
    """Every prompt the contract allows for this scene."""
    out = [PROMPT_DESCRIBE]
    out += [colour_question(o.shape) for o in scene.objects]
    out += [shape_question(o.colour) for o in scene.objects]
    out.append(PROMPT_COUNT)
    return out


def prompt_type(prompt: str) -> str:
    """One of ``PROMPT_TYPES`` for a well-formed prompt."""
    if prompt == PROMPT_DESCRIBE:
        return "describe"
    if prompt == PROMPT_COUNT:
        return "count"
    if prompt.startswith(_COLOUR_Q) and prompt[len(_COLOUR_Q):] in SHAPES:
        return "color"
    if prompt.startswith(_SHAPE_Q) and prompt[len(_SHAPE_Q):] in COLOURS:
        return "shape"
    raise ValueError(f"not a shapes-world prompt: {prompt!r}")


def answer(scene: Scene, prompt: str) -> str:
    kind = prompt_type(prompt)
    if kind == "describe":
        return " and ".join(f"a {o.colour} {o.shape}" for o in scene.objects)
    if kind == "count":
        return COUNT_WORDS[scene.n_objects - 1]
    if kind == "color":
        obj = scene.object_by_shape(prompt[len(_COLOUR_Q):])
        if obj is None:
            raise ValueError(f"{prompt!r}: no such shape in the scene")
        return obj.colour
    obj = scene.object_by_colour(prompt[len(_SHAPE_Q):])
    if obj is None:
        raise ValueError(f"{prompt!r}: no such colour in the scene")
    return obj.shape


def referent_masks(scene: Scene, prompt: str, answer_words: Sequence[str]) -> list[np.ndarray | None]:
    """The ground-truth mask each answer word refers to; ``None`` for no referent.

    Colour and shape words refer to the object with that colour or shape; a
    count word refers to the union of all objects; function words refer to
    nothing. A wrong one-word answer to a colour or shape question (a word
    naming nothing in the scene) still refers to the object asked about, so a
    model's mistakes can be localised too; any other word naming nothing in
    the scene gets ``None``.
    """
    kind = prompt_type(prompt)
    asked: ShapeObject | None = None
    if kind == "color":
        asked = scene.object_by_shape(prompt[len(_COLOUR_Q):])
    elif kind == "shape":
        asked = scene.object_by_colour(prompt[len(_SHAPE_Q):])
    out: list[np.ndarray | None] = []
    for w in answer_words:
        obj: ShapeObject | None = None
        if w in COLOURS:
            obj = scene.object_by_colour(w)
        elif w in SHAPES:
            obj = scene.object_by_shape(w)
        elif w in COUNT_WORDS:
            union = np.zeros((CANVAS, CANVAS), dtype=bool)
            for o in scene.objects:
                union |= o.mask
            out.append(union)
            continue
        if obj is None and asked is not None and len(answer_words) == 1 and (w in COLOURS or w in SHAPES):
            obj = asked
        out.append(None if obj is None else obj.mask.copy())
    return out
