"""The shipped shapes-tiny model: loading, answers, determinism, localisation, integrity."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import diffusion_cam as dc
from diffusion_cam.datasets import shapes
from diffusion_cam.errors import ModelLoadError
from diffusion_cam.models.shapes_tiny import WEIGHTS_DIR

EXAMPLES = Path(shapes.__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def model():
    return dc.load_model("shapes-tiny")


@pytest.fixture(scope="module")
def scenes():
    """The shipped example scenes (drawn before the model was trained), regenerated from their seeds."""
    meta = json.loads((EXAMPLES / "scenes.json").read_text())["scenes"]
    out = []
    for entry in meta:
        scene = shapes.generate_scene(entry["seed"], n_objects=entry["n_objects"])
        assert np.array_equal(np.asarray(Image.open(EXAMPLES / entry["image"]).convert("RGB")), scene.image)
        out.append(scene)
    return out


def test_loads_by_name_with_a_middle_default_layer(model):
    assert model.family == "shapes-tiny"
    n = len(model.blocks())
    assert 0 < model.default_layer < n - 1


def test_captions_and_counts_on_fixed_scenes(model, scenes):
    # describe (97.4 %) and count (100 %) pass their accuracy gates; colour and shape
    # questions (62 % / 67 %, benchmarks/shapes_accuracy.py) do not yet, see TRAINING.md
    method = dc.DiffusionCAM(model)
    for scene in scenes:
        for prompt in ("describe the image", "how many objects"):
            run = method.generate(scene.image, prompt)
            assert model.join(run.texts) == shapes.answer(scene, prompt), (scene.seed, prompt)


def test_same_scene_same_answer_and_maps(model, scenes):
    a = dc.DiffusionCAM(model).explain(scenes[0].image, "describe the image")
    b = dc.DiffusionCAM(model).explain(scenes[0].image.copy(), "describe the image")
    assert a.answer == b.answer and a.steps == b.steps
    assert np.array_equal(a.maps, b.maps) and np.array_equal(a.raw_maps, b.raw_maps)


@pytest.mark.xfail(strict=True, reason="known gap: at the default layer the argmax lies inside the referent "
                   "for 8 of 22 colour/shape words of these scenes (layer sweep in the README)")
def test_default_layer_localises_colour_and_shape_words(model, scenes):
    method = dc.DiffusionCAM(model)
    hits = total = 0
    for scene in scenes:
        exp = method.explain(scene.image, "describe the image")
        masks = shapes.referent_masks(scene, "describe the image", exp.tokens)
        for word, mask, grid_map in zip(exp.tokens, masks, exp.grid_maps):
            if word in shapes.COLOURS or word in shapes.SHAPES:
                total += 1
                hits += bool(dc.metrics.pointing_game(grid_map, mask))
    assert total >= 10
    assert hits == total, f"argmax inside the referent for {hits}/{total} colour/shape words"


def test_corrupt_or_truncated_weights_are_refused(tmp_path):
    for damage in ("flip", "truncate"):
        d = tmp_path / damage
        shutil.copytree(WEIGHTS_DIR, d)
        w = d / "model.safetensors"
        data = bytearray(w.read_bytes())
        if damage == "flip":
            data[len(data) // 2] ^= 0xFF
        else:
            data = data[: len(data) // 3]
        w.write_bytes(bytes(data))
        with pytest.raises(ModelLoadError, match="sha256|truncated|corrupt"):
            dc.load_model("shapes-tiny", weights_dir=d)


def test_missing_weights_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        dc.load_model("shapes-tiny", weights_dir=tmp_path / "nowhere")
