"""The built-in model warns when an image is unlike its Shapes world, instead of answering nonsense silently."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import diffusion_cam as dc
from diffusion_cam.adapters.shapes_world import MIN_CONFIDENCE, image_reason
from diffusion_cam.cli import main
from diffusion_cam.datasets.shapes import generate_scenes

PROMPT = "describe the image"


@pytest.fixture(scope="module")
def shapes():
    return dc.load_model("shapes-tiny")


def _grey(image: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(Image.fromarray(image).convert("L"))[..., None], 3, axis=2)


def test_scenes_pass_and_other_images_say_why_not():
    for scene in dc.example_scenes():
        assert image_reason(np.asarray(Image.open(scene.image).convert("RGB"))) is None, scene.name
    assert all(image_reason(s.image) is None for s in generate_scenes(123_456, 40))
    scene = generate_scenes(7, 1)[0].image
    photo = np.full((480, 640, 3), 120, np.uint8)
    assert "640x480 pixels" in image_reason(photo)
    assert "2x2 pixels" in image_reason(np.full((2, 2, 3), (220, 40, 40), np.uint8))
    assert "no object in the Shapes colours" in image_reason(_grey(scene))
    noise = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    assert "neither a flat background nor an object" in image_reason(noise)
    assert "background colour" in image_reason(np.clip(scene.astype(int) - 100, 0, 255).astype(np.uint8))


def test_other_models_make_no_claim():
    tiny = dc.load_model("tiny-random")
    inputs = tiny.prepare([np.zeros((48, 48, 3), np.uint8)], PROMPT, 8)
    assert tiny.out_of_world(inputs) is None


def test_an_unsure_answer_is_out_of_world(shapes):
    scene = dc.example_scenes()[0]
    inputs = shapes.prepare([np.asarray(Image.open(scene.image).convert("RGB"))], PROMPT, 8)
    red = shapes.token_id("red")
    sure = SimpleNamespace(steps=[SimpleNamespace(committed_ids=[red], probabilities=[0.99])])
    unsure = SimpleNamespace(steps=[SimpleNamespace(committed_ids=[red], probabilities=[MIN_CONFIDENCE / 2])])
    assert shapes.out_of_world(inputs, sure) is None
    assert "unsure of its answer (probability 0.45 for 'red'" in shapes.out_of_world(inputs, unsure)


def test_generation_records_the_probability_of_each_committed_word(shapes):
    method = dc.DiffusionCAM(shapes)
    run = method.generate(dc.example_scenes()[2].image, PROMPT)
    for step in run.generation.steps:
        with torch.no_grad():
            logits = shapes.forward(run.inputs, step.sequence[None])[0].float()
        probs = torch.softmax(logits, -1)
        for p, tid, q in zip(step.committed, step.committed_ids, step.probabilities):
            assert q == pytest.approx(float(probs[run.inputs.answer_start + p, tid]), abs=1e-6)


def test_explain_warns_records_and_saves_the_reason(shapes, tmp_path):
    method = dc.DiffusionCAM(shapes)
    scene = dc.example_scenes()[4]
    with pytest.warns(dc.errors.OutOfWorldWarning, match="no object in the Shapes colours.*likely meaningless"):
        exp = method.explain(_grey(np.asarray(Image.open(scene.image).convert("RGB"))), PROMPT)
    assert len(exp.warnings) == 1 and "likely meaningless" in exp.warnings[0]
    assert dc.Explanation.load(exp.save(tmp_path / "grey")).warnings == exp.warnings
    assert "warning: the image shows no object" in exp.to_html()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", dc.errors.OutOfWorldWarning)
        assert method.explain(scene.image, PROMPT).warnings == []


def test_cli_prints_one_warning_line(tmp_path, capsys):
    photo = tmp_path / "photo.png"
    img = np.full((480, 640, 3), 120, np.uint8)
    img[100:300, 200:400] = (40, 70, 220)
    Image.fromarray(img).save(photo)
    assert main(["explain", str(photo), "--prompt", PROMPT, "--no-pictures", "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["warning: the image is 640x480 pixels, unlike the 96x96 Shapes scenes the model knows; "
                   "the answer is likely meaningless"]
    assert json.loads((tmp_path / "o" / "result.json").read_text())["warnings"] == [err[0][len("warning: "):]]


def test_known_gap_a_scene_like_image_with_an_unknown_shape_passes(shapes):
    """Recorded, not hidden: a red star on a grey canvas looks like a scene to every check, and the model
    calls it a red cross without doubt."""
    import cv2

    img = np.full((96, 96, 3), 120, np.uint8)
    angles = -np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, 16, 7)
    star = np.stack([48 + radii * np.cos(angles), 48 + radii * np.sin(angles)], axis=1).astype(np.int32)
    cv2.fillPoly(img, [star], (220, 40, 40))
    method = dc.DiffusionCAM(shapes)
    run = method.generate(img, PROMPT)
    assert shapes.join(run.texts) == "a red cross" and shapes.out_of_world(run.inputs, run.generation) is None
