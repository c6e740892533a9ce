"""The result object every method returns."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import OutputError, TargetError
from .words import group_words, normalize

RESULT_FILE = "result.json"
MAPS_FILE = "maps.npz"
FORMAT_VERSION = 1
_ARRAYS = ("maps", "raw_maps", "grid_maps", "raw_grid_maps", "image")


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


@dataclass
class Explanation:
    """Maps for the words of one generated answer.

    ``maps`` (n_tokens, H, W) float32 in [0, 1] are the refined maps at image
    resolution, ``raw_maps`` the same before the refinement modules, and
    ``grid_maps`` / ``raw_grid_maps`` both at the model's patch-grid resolution
    (the first grid when the model uses several views).
    """

    answer: str
    tokens: list[str]
    token_ids: list[int]
    token_indices: list[int]  # position of each explained token in the answer canvas
    steps: list[int]  # denoising step that committed each token
    maps: np.ndarray
    raw_maps: np.ndarray
    grid_maps: np.ndarray
    raw_grid_maps: np.ndarray
    image: np.ndarray
    prompt: str
    model: str = "unknown"
    method: str = "diffusion-cam"
    settings: dict[str, Any] = field(default_factory=dict)
    scores: list[float] = field(default_factory=list)  # value of the explained score per token
    degenerate: list[bool] = field(default_factory=list)  # maps reported as zeros (no evidence)
    trajectory: list[dict[str, Any]] = field(default_factory=list)  # per step: committed canvas indices and ids
    answer_tokens: list[str] = field(default_factory=list)  # every answer word (also the ones not explained)
    metrics: dict[str, Any] = field(default_factory=dict)
    #: deletion / insertion per token when asked for (``explain(..., faithfulness=...)``)
    faithfulness: dict[str, Any] = field(default_factory=dict)
    #: why the answer is likely meaningless, when the model's adapter can tell (an image out of its world)
    warnings: list[str] = field(default_factory=list)

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

    def map(self, token: int | str, raw: bool = False) -> np.ndarray:
        """The (H, W) map of one token, by row index or text.

        A text that is no single token but a word split into subwords gives
        the mean of its tokens' maps, scaled to a maximum of 1.
        """
        maps = self.raw_maps if raw else self.maps
        if isinstance(token, str) and not any(t.strip().lower() == token.strip().lower() for t in self.tokens):
            hits = [rows for w, rows in self.words() if w == normalize(token)]
            if len(hits) > 1:
                raise TargetError(f"word {token!r} occurs {len(hits)} times in the answer (rows {hits}); "
                                  "pick a token by index")
            if hits:
                mean = maps[hits[0]].mean(axis=0)
                top = float(mean.max())
                return (mean / top if top > 0 else mean).astype(np.float32)
        return maps[self.index_of(token)]

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
        from .visualize import show

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
        if self.maps.ndim == 3 and labels.shape != self.maps.shape[1:]:
            # scored as given, a mask of another size would silently compare other places
            h, w = self.maps.shape[1:]
            raise TargetError(f"ground-truth mask is {labels.shape[1]}x{labels.shape[0]} pixels but the explained image is "
                              f"{w}x{h}: give a mask of the image's size")
        if not (labels > 0).any():
            raise TargetError("ground-truth mask has no foreground (every pixel is 0): nothing to score the maps against")
        if mode is None:
            mode = "mask" if len(np.unique(labels[labels > 0])) <= 1 else "max_class"
        per_token = [metrics.score(m, labels if mode == "max_class" else labels > 0, mode=mode) for m in self.maps]
        for row, m in zip(per_token, self.maps):
            row["pointing_game"] = float(metrics.pointing_game(m, labels > 0))
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
            "image_size": [int(self.image.shape[0]), int(self.image.shape[1])],
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
        }

    # ------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        """Write ``result.json`` and ``maps.npz`` into ``directory`` (created if needed)."""
        out = Path(directory)
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / RESULT_FILE).write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            write_npz(out / MAPS_FILE, {name: getattr(self, name) for name in _ARRAYS})
        except OSError as err:
            raise OutputError(f"cannot write results to {out}: {err.strerror or err}") from None
        return out

    @classmethod
    def load(cls, directory: str | Path) -> "Explanation":
        """Read an explanation written by :meth:`save` (no model needed)."""
        src = Path(directory)
        try:
            meta = json.loads((src / RESULT_FILE).read_text(encoding="utf-8"))
            with np.load(src / MAPS_FILE, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in _ARRAYS}
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
            **arrays,
        )
