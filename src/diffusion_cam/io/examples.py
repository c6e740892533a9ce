"""The example scenes shipped with the package (Shapes world images with their label images)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ExampleScene:
    """One shipped scene: its image, its label image (0 = background, k = object k) and what it shows."""

    name: str
    image: Path
    labels: Path
    caption: str  # the Shapes world's answer to "describe the image"
    objects: tuple[dict[str, Any], ...]  # label, shape, colour, rgb, bbox (x0, y0, x1, y1) per object
    seed: int  # diffusion_cam.datasets.shapes.generate_scene(seed, n_objects=len(objects)) draws it again


def example_scenes() -> list[ExampleScene]:
    """The shipped example scenes, in order (``scene_1`` ... ``scene_5``)."""
    folder = Path(str(resources.files("diffusion_cam") / "examples"))
    meta = json.loads((folder / "scenes.json").read_text(encoding="utf-8"))
    return [ExampleScene(Path(s["image"]).stem, folder / s["image"], folder / s["labels"], s["caption"],
                         tuple(s["objects"]), int(s["seed"])) for s in meta["scenes"]]
