"""Center prior: a fixed Gaussian centred in the image, the same for every token."""

from __future__ import annotations

import numpy as np

from ..methods.base import ExplanationMethod, RawMaps, Run


class CenterPrior(ExplanationMethod):
    """``exp(-((x - W/2)^2 / 2 sx^2 + (y - H/2)^2 / 2 sy^2))`` with ``sx = W/4``, ``sy = H/4``.

    Evaluated at the centres of the model's patch cells, so it is placed and
    scored exactly like the other methods' grid maps.  It looks at neither the
    image nor the model's internals: any method worth showing beats it.
    """

    name = "center"
    default_modules = ()

    def __init__(self, adapter, *, sigma_fraction: float = 0.25, **options) -> None:
        options.pop("modules", None)
        super().__init__(adapter, modules=(), **options)
        if not sigma_fraction > 0:
            raise ValueError(f"sigma_fraction must be positive, got {sigma_fraction}")
        self.sigma_fraction = float(sigma_fraction)

    def settings(self):
        return {**super().settings(), "sigma_fraction": self.sigma_fraction}

    def compute(self, run: Run, indices: list[int]) -> RawMaps:
        height, width = run.inputs.image_size
        grids = self.adapter.image_grids(run.inputs, run.generation.sequence)
        maps = []
        for grid in grids:
            h, w = grid.shape
            x0, y0, x1, y1 = grid.region
            xs = x0 + (np.arange(w) + 0.5) * (x1 - x0) / w
            ys = y0 + (np.arange(h) + 0.5) * (y1 - y0) / h
            sx, sy = self.sigma_fraction * width, self.sigma_fraction * height
            g = np.exp(-((ys[:, None] - height / 2) ** 2) / (2 * sy**2) - ((xs[None, :] - width / 2) ** 2) / (2 * sx**2))
            maps.append(np.repeat(g[None].astype(np.float32), len(indices), axis=0))
        k = len(indices)
        return RawMaps(grids, maps, np.zeros(k, dtype=bool), np.zeros(k, dtype=np.float64))
