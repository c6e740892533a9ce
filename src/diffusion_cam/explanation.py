"""The result object every method returns."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import OutputError, TargetError
from .words import group_words, normalize

RESULT_FILE = "result.json"
MAPS_FILE = "maps.npz"
#: 2: maps.npz holds the grid maps and their boxes, not maps at image resolution
FORMAT_VERSION = 2
#: arrays of a maps.npz written by format 1 (maps at image resolution)
_ARRAYS_V1 = ("maps", "raw_maps", "grid_maps", "raw_grid_maps", "image")
#: longest side of the pictures (overlays, grid, report) and of the image kept in maps.npz: a photo's
#: maps are drawn at this size, not at the 12 million pixels of a 4000 x 3000 camera picture
DISPLAY_SIDE = 1024


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` with fixed zip timestamps, so equal arrays give equal bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def display_size(size: tuple[int, int], max_side: int = DISPLAY_SIDE) -> tuple[int, int]:
    """(height, width) scaled so that the longest side is at most ``max_side``."""
    height, width = int(size[0]), int(size[1])
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _resized(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if tuple(arr.shape[:2]) == tuple(size):
        return arr
    import cv2

    smaller = size[0] * size[1] < arr.shape[0] * arr.shape[1]
    out = cv2.resize(np.ascontiguousarray(arr), (size[1], size[0]),
                     interpolation=cv2.INTER_AREA if smaller else cv2.INTER_LINEAR)
    return out


@dataclass
class GridView:
    """The maps of one patch grid of the explained image and the box of the image it covers.

    ``maps`` and ``raw_maps`` are (K, h, w) float32 (refined, and before the
    refinement modules); ``box`` is ``(x0, y0, x1, y1)`` in the image's pixels.
    """

    maps: np.ndarray
    raw_maps: np.ndarray
    box: tuple[float, float, float, float]


class Explanation:
    """Maps for the words of one generated answer.

    The maps are kept at the model's patch-grid resolution (:attr:`views`:
    one per grid, with the box of the image it covers); maps at image
    resolution are drawn on demand.  ``grid_maps`` / ``raw_grid_maps`` are
    the first grid's (K, h, w) maps, refined and raw.  :attr:`maps` and
    :attr:`raw_maps` (K, H, W) float32 in [0, 1] are drawn at the size of
    :attr:`image` when first read, then kept: for a large photo prefer
    :meth:`map` (one token, at a size of your choice).  ``image_size`` is the
    (height, width) of the explained image, the frame of the boxes;
    :attr:`image` is that image, or a copy at most :data:`DISPLAY_SIDE`
    pixels wide or high once loaded from disk.

    ``maps=`` / ``raw_maps=`` given to the constructor are used as they are
    (maps made elsewhere, or read from a format-1 ``maps.npz``).
    """

    def __init__(self, answer: str, tokens: list[str], token_ids: list[int], token_indices: list[int],
                 steps: list[int], maps: np.ndarray | None = None, raw_maps: np.ndarray | None = None,
                 grid_maps: np.ndarray | None = None, raw_grid_maps: np.ndarray | None = None,
                 image: np.ndarray | None = None, prompt: str = "", model: str = "unknown",
                 method: str = "diffusion-cam", settings: dict[str, Any] | None = None,
                 scores: list[float] | None = None, degenerate: list[bool] | None = None,
                 trajectory: list[dict[str, Any]] | None = None, answer_tokens: list[str] | None = None,
                 metrics: dict[str, Any] | None = None, faithfulness: dict[str, Any] | None = None, *,
                 views: list[GridView] | None = None, image_size: tuple[int, int] | None = None,
                 warnings: list[str] | None = None, grounding: list[dict[str, Any]] | None = None) -> None:
        self.answer = answer
        self.tokens = tokens
        self.token_ids = token_ids
        self.token_indices = token_indices  # position of each explained token in the answer canvas
        self.steps = steps  # denoising step that committed each token
        self.prompt = prompt
        self.model = model
        self.method = method
        self.settings = {} if settings is None else settings
        self.scores = [] if scores is None else scores  # value of the explained score per token
        self.degenerate = [] if degenerate is None else degenerate  # maps reported as zeros (no evidence)
        self.trajectory = [] if trajectory is None else trajectory  # per step: committed canvas indices and ids
        self.answer_tokens = [] if answer_tokens is None else answer_tokens  # every answer word
        self.metrics = {} if metrics is None else metrics
        #: deletion / insertion per token when asked for (``explain(..., faithfulness=...)``)
        self.faithfulness = {} if faithfulness is None else faithfulness
        #: why the answer is likely meaningless, when the model's adapter can tell (an image out of its world)
        self.warnings = [] if warnings is None else warnings
        # computed from the maps on first read (see diffusion_cam.grounding); a loaded one is kept as saved
        self._grounding = grounding
        if views is None and maps is None and grid_maps is None:
            raise TypeError("an Explanation needs views=, maps= or grid_maps=")
        if image is None:
            raise TypeError("an Explanation needs the explained image")
        self.image = image
        if image_size is None:
            image_size = tuple(maps.shape[1:]) if maps is not None else tuple(image.shape[:2])
        self.image_size = (int(image_size[0]), int(image_size[1]))
        if views is None and maps is None:
            # grid maps alone cover the whole image
            views = [GridView(grid_maps, grid_maps if raw_grid_maps is None else raw_grid_maps,
                              (0.0, 0.0, float(self.image_size[1]), float(self.image_size[0])))]
        self.views = views or []
        self.grid_maps = grid_maps if grid_maps is not None else self.views[0].maps
        self.raw_grid_maps = raw_grid_maps if raw_grid_maps is not None else (
            self.views[0].raw_maps if self.views else self.grid_maps)
        self._maps = maps
        self._raw_maps = maps if raw_maps is None and maps is not None else raw_maps

    def __repr__(self) -> str:
        return (f"Explanation(answer={self.answer!r}, tokens={self.tokens!r}, model={self.model!r}, "
                f"method={self.method!r}, image_size={self.image_size})")

    # ------------------------------------------------------------- drawing
    def draw(self, row: int, raw: bool = False, size: tuple[int, int] | None = None) -> np.ndarray:
        """The (height, width) float32 map of explained row ``row`` at ``size`` (default: :attr:`image`'s)."""
        size = tuple(self.image.shape[:2]) if size is None else (int(size[0]), int(size[1]))
        if not self.views:  # maps given at image resolution (or read from a format-1 file)
            given = self._raw_maps if raw else self._maps
            return _resized(given[row], size).astype(np.float32, copy=False)
        from .extract.placement import place_boxes

        return place_boxes([(v.raw_maps if raw else v.maps)[row] for v in self.views],
                           [v.box for v in self.views], self.image_size, size)

    def _draw_all(self, raw: bool) -> np.ndarray:
        size = tuple(self.image.shape[:2])
        out = np.zeros((len(self.tokens), *size), dtype=np.float32)
        for row in range(len(self.tokens)):
            out[row] = self.draw(row, raw, size)
        return out

    @property
    def maps(self) -> np.ndarray:
        """(K, H, W) refined maps at the size of :attr:`image`, drawn when first read."""
        if self._maps is None:
            self._maps = self._draw_all(raw=False)
        return self._maps

    @property
    def raw_maps(self) -> np.ndarray:
        """(K, H, W) maps before the refinement modules, at the size of :attr:`image`."""
        if self._raw_maps is None:
            self._raw_maps = self._draw_all(raw=True)
        return self._raw_maps

    @maps.setter
    def maps(self, value: np.ndarray) -> None:
        # maps set by hand replace the grid views, which would no longer describe them
        self._detach_views()
        self._maps = np.asarray(value, dtype=np.float32)

    @raw_maps.setter
    def raw_maps(self, value: np.ndarray) -> None:
        self._detach_views()
        self._raw_maps = np.asarray(value, dtype=np.float32)

    def _detach_views(self) -> None:
        if self.views:
            self._maps, self._raw_maps = self.maps, self.raw_maps
            self.views = []

    def raw_differs(self) -> bool:
        """Whether the refinement modules changed any map (pictures then show raw next to refined)."""
        if self._maps is not None and self._raw_maps is not None and not self.views:
            return self._raw_maps.shape == self._maps.shape and not np.array_equal(self._raw_maps, self._maps)
        return any(not np.array_equal(v.maps, v.raw_maps) for v in self.views)

    def for_display(self, max_side: int = DISPLAY_SIDE) -> "Explanation":
        """This explanation with its image at most ``max_side`` pixels wide or high (itself when it is).

        Pictures are drawn from it, so that every map is drawn at that size
        and never at a photo's full resolution.
        """
        size = display_size(self.image.shape[:2], max_side)
        if size == tuple(self.image.shape[:2]):
            return self
        from PIL import Image

        small = np.asarray(Image.fromarray(self.image).resize((size[1], size[0]), Image.Resampling.BOX))
        view = Explanation(self.answer, self.tokens, self.token_ids, self.token_indices, self.steps,
                           grid_maps=self.grid_maps, raw_grid_maps=self.raw_grid_maps, image=small,
                           prompt=self.prompt, model=self.model, method=self.method, settings=self.settings,
                           scores=self.scores, degenerate=self.degenerate, trajectory=self.trajectory,
                           answer_tokens=self.answer_tokens, metrics=self.metrics, faithfulness=self.faithfulness,
                           views=self.views, image_size=self.image_size, warnings=self.warnings,
                           grounding=self._grounding)
        if not self.views:  # maps given at image resolution: bring them to the picture's size
            view._maps = np.stack([_resized(m, size) for m in self._maps])
            view._raw_maps = np.stack([_resized(m, size) for m in self._raw_maps])
        return view

    # ------------------------------------------------------------- grounding
    @property
    def grounding(self) -> list[dict[str, Any]]:
        """Per explained token: grounding ``score`` in [0, 1], ``flagged`` and the features behind it
        (:mod:`diffusion_cam.grounding`)."""
        if self._grounding is None:
            from .grounding import grounding

            self._grounding = grounding(self)
        return self._grounding

    def set_grounding_probe(self, probed: list[dict[str, float]]) -> None:
        """Score the grounding again with the one-word deletion probe's features (one dict per token)."""
        from .grounding import grounding

        if len(probed) != len(self.tokens):
            raise ValueError(f"the probe measured {len(probed)} tokens; the explanation has {len(self.tokens)}")
        self._grounding = grounding(self, probed)

    def ungrounded(self) -> list[str]:
        """The explained tokens whose grounding score is below the threshold, in answer order."""
        return [g["token"] for g in self.grounding if g["flagged"]]

    # ---------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.tokens)

    def index_of(self, token: int | str) -> int:
        """Row of ``token`` in :attr:`maps`: by row index or by word (case-insensitive)."""
        words = ", ".join(f"{i}:{t!r}" for i, t in enumerate(self.tokens))
        if isinstance(token, (int, np.integer)) and not isinstance(token, bool):
            i = int(token)
            if not -len(self.tokens) <= i < len(self.tokens):
                raise TargetError(f"token index {i} is out of range; the answer has {len(self.tokens)} explained tokens ({words})")
            return i % len(self.tokens)
        if isinstance(token, str):
            wanted = token.strip().lower()
            hits = [i for i, t in enumerate(self.tokens) if t.strip().lower() == wanted]
            if len(hits) == 1:
                return hits[0]
            if not hits:
                raise TargetError(f"word {token!r} is not in the answer {self.answer!r}; its words are {words}")
            raise TargetError(f"word {token!r} occurs {len(hits)} times in the answer (rows {hits}); pick one by index: {words}")
        raise TargetError(f"a token is addressed by index or word, not {type(token).__name__}")

    def words(self) -> list[tuple[str, list[int]]]:
        """The explained tokens grouped into words: ``(word, rows of maps)``.

        A subword tokenizer splits rare words into several tokens (a leading
        space or word-start marker opens a word); a word-level tokenizer
        gives one row per word.  Punctuation is left out.
        """
        texts = self.answer_tokens or self.tokens
        positions = self.token_indices if self.answer_tokens else list(range(len(self.tokens)))
        row_of = {int(p): r for r, p in enumerate(positions)}
        grouped = [(w, [row_of[i] for i in idx if i in row_of]) for w, idx in group_words(texts)]
        return [(w, rows) for w, rows in grouped if rows]

    def map(self, token: int | str, raw: bool = False, size: tuple[int, int] | None = None) -> np.ndarray:
        """The (H, W) map of one token, by row index or text, at ``size`` (default: :attr:`image`'s).

        A text that is no single token but a word split into subwords gives
        the mean of its tokens' maps, scaled to a maximum of 1.  Only the
        asked rows are drawn.
        """
        if isinstance(token, str) and not any(t.strip().lower() == token.strip().lower() for t in self.tokens):
            hits = [rows for w, rows in self.words() if w == normalize(token)]
            if len(hits) > 1:
                raise TargetError(f"word {token!r} occurs {len(hits)} times in the answer (rows {hits}); "
                                  "pick a token by index")
            if hits:
                mean = np.mean([self._row(r, raw, size) for r in hits[0]], axis=0)
                top = float(mean.max())
                return (mean / top if top > 0 else mean).astype(np.float32)
        return self._row(self.index_of(token), raw, size)

    def _row(self, row: int, raw: bool, size: tuple[int, int] | None) -> np.ndarray:
        drawn = self._raw_maps if raw else self._maps
        if drawn is not None and (size is None or tuple(size) == tuple(drawn.shape[1:])):
            return drawn[row]
        return self.draw(row, raw, size)

    # --------------------------------------------------------------- pictures
    def overlay(self, token: int | str, cmap: str = "jet", alpha: float = 0.5, raw: bool = False) -> np.ndarray:
        """(H, W, 3) uint8: the token's map in colour map ``cmap`` blended on the image with opacity ``alpha``."""
        from .visualize import overlay

        return overlay(self.image, self.map(token, raw=raw), cmap=cmap, alpha=alpha)

    def to_html(self, cmap: str = "jet", alpha: float = 0.5) -> str:
        """The interactive report as one self-contained HTML page (see :mod:`diffusion_cam.report`)."""
        from .report import explanation_html

        return explanation_html(self, cmap=cmap, alpha=alpha)

    def show(self, cmap: str = "jet", alpha: float = 0.5):
        """Show the interactive report inline in a notebook (elsewhere: in the web browser)."""
        from .report import show

        return show(self, cmap=cmap, alpha=alpha)

    def evaluate(self, mask: np.ndarray, mode: str | None = None) -> dict[str, Any]:
        """Score every token's map against a ground-truth ``mask`` and keep the result in :attr:`metrics`.

        ``mask`` is a label image (0 = background, 1.. = objects) or a binary
        mask.  ``mode`` ``"max_class"`` (the reference's image-level score:
        best class) or ``"mask"`` (every non-zero pixel is the referent);
        default: ``"mask"`` for a binary mask, ``"max_class"`` otherwise.
        """
        from . import metrics

        labels = np.asarray(mask)
        if labels.ndim != 2:
            raise TargetError(f"ground-truth mask must be a 2-D label image, got shape {labels.shape}")
        if labels.shape != self.image_size:
            # scored as given, a mask of another size would silently compare other places
            h, w = self.image_size
            raise TargetError(f"ground-truth mask is {labels.shape[1]}x{labels.shape[0]} pixels but the explained image is "
                              f"{w}x{h}: give a mask of the image's size")
        if not (labels > 0).any():
            raise TargetError("ground-truth mask has no foreground (every pixel is 0): nothing to score the maps against")
        if mode is None:
            mode = "mask" if len(np.unique(labels[labels > 0])) <= 1 else "max_class"
        per_token = []
        for row in range(len(self.tokens)):
            # one map at a time at the mask's size: a photo's K full-size maps need not fit together
            m = self._row(row, False, labels.shape)
            scored = metrics.score(m, labels if mode == "max_class" else labels > 0, mode=mode)
            scored["pointing_game"] = float(metrics.pointing_game(m, labels > 0))
            per_token.append(scored)
        self.metrics = {"mode": mode, "per_token": per_token, "mean": metrics.aggregate(per_token)}
        return self.metrics

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no arrays)."""
        return {
            "format_version": FORMAT_VERSION,
            "answer": self.answer,
            "prompt": self.prompt,
            "model": self.model,
            "method": self.method,
            "settings": self.settings,
            "image_size": [int(self.image_size[0]), int(self.image_size[1])],
            "grid_size": [int(self.grid_maps.shape[1]), int(self.grid_maps.shape[2])] if self.grid_maps.ndim == 3 else None,
            "answer_tokens": self.answer_tokens,
            "tokens": [
                {
                    "text": text,
                    "id": int(tid),
                    "index": int(idx),
                    "step": int(step),
                    "score": float(self.scores[i]) if i < len(self.scores) else None,
                    "degenerate": bool(self.degenerate[i]) if i < len(self.degenerate) else False,
                }
                for i, (text, tid, idx, step) in enumerate(zip(self.tokens, self.token_ids, self.token_indices, self.steps))
            ],
            "words": [{"word": w, "rows": rows} for w, rows in self.words()],
            "trajectory": self.trajectory,
            "metrics": self.metrics,
            "faithfulness": self.faithfulness,
            "warnings": self.warnings,
            "grounding": self.grounding,
        }

    # ------------------------------------------------------------ persistence
    def arrays(self) -> dict[str, np.ndarray]:
        """What :meth:`save` writes into ``maps.npz``.

        ``grid_maps`` / ``raw_grid_maps`` (first grid), ``grid_maps_<i>`` /
        ``raw_grid_maps_<i>`` for the other grids, ``grid_boxes`` (one
        ``x0, y0, x1, y1`` row per grid, in the image's pixels),
        ``image_size`` (height, width) and ``image``, at most
        :data:`DISPLAY_SIDE` pixels wide or high.  Maps given at image
        resolution (no grids) are kept as ``maps`` / ``raw_maps`` at the
        stored image's size.
        """
        shown = self.for_display()
        out: dict[str, np.ndarray] = {"image": shown.image, "image_size": np.asarray(self.image_size, dtype=np.int64)}
        if self.views:
            out["grid_boxes"] = np.asarray([v.box for v in self.views], dtype=np.float64).reshape(-1, 4)
            for i, v in enumerate(self.views):
                tail = "" if i == 0 else f"_{i}"
                out[f"grid_maps{tail}"] = np.asarray(v.maps, dtype=np.float32)
                out[f"raw_grid_maps{tail}"] = np.asarray(v.raw_maps, dtype=np.float32)
        else:
            out.update(maps=shown.maps, raw_maps=shown.raw_maps, grid_maps=self.grid_maps,
                       raw_grid_maps=self.raw_grid_maps)
        return out

    def save(self, directory: str | Path) -> Path:
        """Write ``result.json`` and ``maps.npz`` into ``directory`` (created if needed)."""
        out = Path(directory)
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / RESULT_FILE).write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            write_npz(out / MAPS_FILE, self.arrays())
        except OSError as err:
            raise OutputError(f"cannot write results to {out}: {err.strerror or err}") from None
        return out

    @classmethod
    def load(cls, directory: str | Path) -> "Explanation":
        """Read an explanation written by :meth:`save` (no model needed), also by format 1 (maps at image size)."""
        src = Path(directory)
        try:
            meta = json.loads((src / RESULT_FILE).read_text(encoding="utf-8"))
            with np.load(src / MAPS_FILE, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
            placed = _placement(arrays, meta)
        except FileNotFoundError as err:
            raise OutputError(f"{src} is not a saved explanation: {Path(err.filename).name} is missing") from None
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
            raise OutputError(f"{src}: cannot read saved explanation ({err})") from None
        toks = meta["tokens"]
        return cls(
            answer=meta["answer"],
            tokens=[t["text"] for t in toks],
            token_ids=[t["id"] for t in toks],
            token_indices=[t["index"] for t in toks],
            steps=[t["step"] for t in toks],
            scores=[t["score"] for t in toks],
            degenerate=[t["degenerate"] for t in toks],
            prompt=meta["prompt"],
            model=meta["model"],
            method=meta["method"],
            settings=meta["settings"],
            trajectory=meta["trajectory"],
            answer_tokens=meta.get("answer_tokens", []),
            metrics=meta.get("metrics", {}),
            faithfulness=meta.get("faithfulness", {}),
            warnings=meta.get("warnings", []),
            grounding=meta.get("grounding"),
            **placed,
        )


def _placement(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments for the maps of a loaded ``maps.npz``, of either format."""
    version = meta.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"format_version {version!r} is newer than this release reads ({FORMAT_VERSION}); "
                         "upgrade diffusion-cam")
    if "grid_boxes" not in arrays:
        # format 1 (or maps given at image resolution): the maps are stored as they are shown
        missing = [name for name in _ARRAYS_V1 if name not in arrays]
        if missing:
            raise KeyError(f"maps.npz lacks {', '.join(missing)}")
        size = arrays.get("image_size")
        return {**{name: arrays[name] for name in _ARRAYS_V1},
                "image_size": None if size is None else tuple(int(v) for v in size)}
    boxes = arrays["grid_boxes"]
    views = []
    for i, box in enumerate(boxes):
        tail = "" if i == 0 else f"_{i}"
        views.append(GridView(arrays[f"grid_maps{tail}"], arrays[f"raw_grid_maps{tail}"],
                              tuple(float(v) for v in box)))
    return {"views": views, "image": arrays["image"], "image_size": tuple(int(v) for v in arrays["image_size"]),
            "grid_maps": arrays["grid_maps"], "raw_grid_maps": arrays["raw_grid_maps"]}
