"""The configurations a calibration tries: map formula x block x score x modules x AKD border."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import LayerError, UnknownNameError
from ..extract import CAM_FORMULAS, SCORES
from ..refine import MODULES
from ..refine.akd import BORDERS

#: formulas tried by default: the method spec's, the classic one, and the two per-position ones
DEFAULT_CAMS = ("poscam", "gradcam", "layercam", "hirescam")
#: scores with a per-token direction of their own (logprob has log-odds' direction; contrastive needs
#: a distractor; vocab_sum names no token)
DEFAULT_SCORES = ("logit", "logodds")
#: at most this many blocks are tried by default, spread over the stack
DEFAULT_BLOCKS = 3


@dataclass(frozen=True)
class Config:
    """One Diffusion-CAM configuration of the sweep."""

    cam: str
    layer: int
    score: str
    modules: bool  # all four refinement modules, or none
    akd_border: str

    def label(self) -> str:
        refine = f"modules, border {self.akd_border}" if self.modules else "no modules"
        return f"{self.cam}, block {self.layer}, {self.score}, {refine}"

    def settings(self, state: str) -> dict[str, Any]:
        """Keyword arguments of :class:`~diffusion_cam.DiffusionCAM` (and a profile's ``settings``)."""
        return {"method": "diffusion-cam", "cam": self.cam, "layer": self.layer, "score": self.score,
                "modules": list(MODULES) if self.modules else [], "akd_border": self.akd_border, "state": state}


@dataclass(frozen=True)
class Grid:
    """What to sweep.  The first score and border are the starting point of the staged sweep."""

    cams: tuple[str, ...]
    layers: tuple[int, ...]
    scores: tuple[str, ...]
    modules: tuple[bool, ...]
    borders: tuple[str, ...]

    def stage_one(self) -> list[Config]:
        """Formula x block x modules at the first score and border."""
        return [Config(c, layer, self.scores[0], m, self.borders[0])
                for c in self.cams for layer in self.layers for m in self.modules]

    def around(self, best: Config) -> list[Config]:
        """Stage two: the best of stage one with its score, then its border, changed one at a time."""
        out = [Config(best.cam, best.layer, s, best.modules, best.akd_border) for s in self.scores[1:]]
        if best.modules:  # the border only matters to AKD
            out += [Config(best.cam, best.layer, best.score, True, b) for b in self.borders[1:]]
        return out

    def factorial(self) -> list[Config]:
        """Every combination (the border varied only with the modules on)."""
        out = []
        for c in self.cams:
            for layer in self.layers:
                for s in self.scores:
                    for m in self.modules:
                        for b in (self.borders if m else self.borders[:1]):
                            out.append(Config(c, layer, s, m, b))
        return out


def _choose(kind: str, given: Sequence | None, default: Sequence, allowed: Sequence) -> tuple:
    values = tuple(default if given is None else given)
    if not values:
        raise UnknownNameError(f"no {kind} to sweep: give at least one")
    bad = [v for v in values if v not in allowed]
    if bad:
        raise UnknownNameError(f"unknown {kind} {', '.join(map(repr, bad))}; choose from {', '.join(map(str, allowed))}")
    return tuple(dict.fromkeys(values))  # order kept, repeats dropped


def default_layers(n_blocks: int, default_layer: int) -> tuple[int, ...]:
    """Up to :data:`DEFAULT_BLOCKS` blocks spread over all but the last (whose output gets no gradient
    at image positions in a model whose head reads only answer positions), the adapter's default first."""
    usable = max(1, n_blocks - 1)
    spread = sorted({round(i * (usable - 1) / max(1, DEFAULT_BLOCKS - 1)) for i in range(DEFAULT_BLOCKS)})
    return tuple(dict.fromkeys([default_layer % n_blocks, *spread]))


def build_grid(adapter, *, cams: Sequence[str] | None = None, layers: Sequence[int] | None = None,
               scores: Sequence[str] | None = None, modules: Sequence[bool] | None = None,
               borders: Sequence[str] | None = None) -> Grid:
    """The sweep for ``adapter``: the given values, or defaults with the adapter's own choices first."""
    n = len(adapter.blocks())
    if layers is None:
        layers = default_layers(n, adapter.default_layer)
    else:
        layers = list(layers)
        for layer in layers:
            if not isinstance(layer, int) or not -n <= layer < n:
                raise LayerError(f"block {layer!r} is out of range: model {adapter.name!r} has {n} blocks (0..{n - 1})")
        layers = [layer % n for layer in layers]
    default_scores = (adapter.default_score, *[s for s in DEFAULT_SCORES if s != adapter.default_score])
    default_borders = (adapter.default_akd_border, *[b for b in BORDERS if b != adapter.default_akd_border])
    return Grid(
        cams=_choose("map formula", cams, DEFAULT_CAMS, CAM_FORMULAS),
        layers=tuple(dict.fromkeys(layers)),
        scores=_choose("score", scores, default_scores, [s for s in SCORES if s != "vocab_sum"]),
        modules=_choose("modules setting", modules, (True, False), (True, False)),
        borders=_choose("AKD border", borders, default_borders, tuple(BORDERS)),
    )
