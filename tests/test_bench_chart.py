"""main.png of a bench run: drawn with Pillow when matplotlib is missing, bars as tall as their values."""

from __future__ import annotations

import sys

import numpy as np
from PIL import Image

from diffusion_cam.evaluation.tables import CHART_KEYS, bar_chart


def _column_height(img: np.ndarray, colour: str, x0: int, x1: int) -> int:
    rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
    hit = (img[:, x0:x1] == rgb).all(-1)
    return int(hit.any(axis=1).sum())


def test_main_png_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    rows = [{"method": "diffusion-cam", **{k: 0.8 for k, _ in CHART_KEYS}},
            {"method": "center prior", **{k: 0.2 for k, _ in CHART_KEYS}}]
    path = bar_chart(rows, tmp_path / "main.png", "shapes: main table")
    with Image.open(path) as im:
        img = np.asarray(im.convert("RGB"))
    first, second = _column_height(img, "#1f77b4", 0, img.shape[1]), _column_height(img, "#ff7f0e", 0, img.shape[1])
    # the legend swatches are 13 px tall in both colours; the bars are 80 % and 20 % of the 0..105 axis
    assert abs((first - 13) / (second - 13) - 4) < 0.1
    assert bar_chart(rows, tmp_path / "again.png", "shapes: main table").read_bytes() == path.read_bytes()
