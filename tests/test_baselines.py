"""Baselines (spec §4) on the tiny random model: registration, formulas, determinism."""

import numpy as np
import pytest
import torch

import diffusion_cam as dc
from diffusion_cam.baselines.tam import eci
from diffusion_cam.extract import ActivationRecorder
from diffusion_cam.refine import rank_gaussian_filter

PROMPT = "describe the image"
BASELINES = ("gradcam", "layercam", "llava-cam", "tam", "center", "diffusion-cam-raw")


@pytest.fixture(scope="module")
def tiny_mod():
    from diffusion_cam.testing import tiny_adapter

    return tiny_adapter(seed=3, gen_length=6)


@pytest.fixture(scope="module")
def img():
    from diffusion_cam.testing import random_image

    return random_image(1)


@pytest.mark.parametrize("name", BASELINES)
def test_each_baseline_is_registered_and_deterministic(tiny_mod, img, name):
    assert name in dc.available_methods()
    a = dc.get_method(name, tiny_mod).explain(img, PROMPT)
    b = dc.get_method(name, tiny_mod).explain(img, PROMPT)
    assert a.method == name and a.settings["method"] == name and a.settings["modules"] == []
    assert a.maps.shape == (len(a.tokens), 48, 48) and a.maps.dtype == np.float32
    assert 0.0 <= a.maps.min() and a.maps.max() <= 1.0
    np.testing.assert_array_equal(a.maps, b.maps)
    np.testing.assert_array_equal(a.grid_maps, b.grid_maps)


def test_options_outside_a_baselines_recipe_do_not_apply(tiny_mod):
    m = dc.get_method("gradcam", tiny_mod, modules=["akd", "cba"], cam="poscam", sicd_mode="causal", layer=1)
    assert m.modules == () and m.cam == "gradcam" and m.layers == [1]
    assert dc.get_method("tam", tiny_mod, layer=1, modules=["akd"]).settings()["layers"] == [3]


def test_gradcam_is_gradient_cam_with_the_gradcam_formula_and_no_modules(tiny_mod, img):
    ours = dc.get_method("gradcam", tiny_mod, layer=1).explain(img, PROMPT)
    ref = dc.GradientCAM(tiny_mod, layer=1, cam="gradcam", modules=()).explain(img, PROMPT)
    np.testing.assert_array_equal(ours.maps, ref.maps)
    np.testing.assert_array_equal(ours.maps, ours.raw_maps)


def test_llava_cam_is_one_thresholded_map_for_every_token(tiny_mod, img):
    exp = dc.get_method("llava-cam", tiny_mod, layer=1).explain(img, PROMPT)
    g = exp.raw_grid_maps
    assert len(exp.tokens) > 1
    for k in range(1, len(g)):
        np.testing.assert_array_equal(g[k], g[0])
    assert g[0].max() == pytest.approx(1.0)
    assert g[0][g[0] > 0].min() >= 0.5
    assert exp.settings["state"] == "final"


def test_llava_cam_matches_a_direct_computation(tiny_mod, img):
    method = dc.get_method("llava-cam", tiny_mod, layer=2, threshold=0.9)  # high enough to zero some patches
    run = method.generate(img, PROMPT)
    raw = method.compute(run, [0])
    seq = run.generation.sequence
    with ActivationRecorder(tiny_mod.blocks(), [2], tiny_mod.unwrap) as rec, torch.enable_grad():
        logits = tiny_mod.forward(run.inputs, seq[None])[0]
        hidden = rec.get(2)
        score = sum(logits[run.canvas_position(i), t] for i, t in enumerate(run.answer_ids))
        (grad,) = torch.autograd.grad(score, hidden)
    pos = list(tiny_mod.image_grids(run.inputs, seq)[0].positions)
    a, gr = hidden[0, pos].detach(), grad[0, pos]
    h = (a.clamp(min=0) * gr.clamp(min=0).mean(0)).mean(-1).reshape(6, 6)
    h = h / h.max()
    h[h < 0.9] = 0
    assert (h == 0).any() and (h > 0).any()
    np.testing.assert_allclose(raw.grid_maps[0][0], h.numpy(), rtol=1e-5, atol=1e-6)


def test_tam_first_token_is_the_filtered_logit_lens_of_the_last_block(tiny_mod, img):
    method = dc.get_method("tam", tiny_mod, state="final")
    run = method.generate(img, PROMPT)
    raw = method.compute(run, [0])
    seq = run.generation.sequence
    last = len(tiny_mod.blocks()) - 1
    with torch.no_grad(), ActivationRecorder(tiny_mod.blocks(), [last], tiny_mod.unwrap) as rec:
        tiny_mod.forward(run.inputs, seq[None])
        hidden = rec.get(last)[0]
    pos = list(tiny_mod.image_grids(run.inputs, seq)[0].positions)
    lens = tiny_mod._model.head(tiny_mod._model.norm(hidden[pos]))[:, run.answer_ids[0]].clamp(min=0)
    m = lens.reshape(6, 6).detach().double().numpy()
    expected = rank_gaussian_filter(m / m.max(), 3)  # no earlier token: no ECI
    np.testing.assert_allclose(raw.grid_maps[0][0], expected, rtol=1e-5, atol=1e-7)


def test_eci_removes_a_pure_copy_of_the_interference_and_ignores_zero_relevance():
    rng = np.random.default_rng(0)
    earlier = rng.random((2, 5, 5))
    m = 0.7 * earlier[0]
    np.testing.assert_allclose(eci(m, earlier, [1.0, 0.0]), 0.0, atol=1e-12)
    np.testing.assert_array_equal(eci(m, earlier, [0.0, 0.0]), m)  # no relevance: no change
    np.testing.assert_array_equal(eci(m, earlier[:0], np.zeros(0)), m)  # first token: nothing to remove
    out = eci(m + earlier[1], earlier, [1.0, 1.0])
    assert (out >= 0).all() and np.linalg.norm(out) < np.linalg.norm(m + earlier[1])


def test_center_prior_is_the_centred_gaussian_at_the_patch_centres(tiny_mod, img):
    exp = dc.get_method("center", tiny_mod).explain(img, PROMPT)
    g = exp.raw_grid_maps[0]
    c = (np.arange(6) + 0.5) * 8 - 24  # patch centres relative to the image centre, pixels
    sigma = 48 / 4
    expected = np.exp(-(c[:, None] ** 2 + c[None, :] ** 2) / (2 * sigma**2))
    np.testing.assert_allclose(g, expected, rtol=1e-6)
    for k in range(len(exp.tokens)):
        np.testing.assert_array_equal(exp.maps[k], exp.maps[0])


def test_explain_cli_selects_a_baseline(tmp_path, monkeypatch):
    from diffusion_cam.cli import main
    from diffusion_cam.testing import random_image
    from PIL import Image

    path = tmp_path / "im.png"
    Image.fromarray(random_image(2)).save(path)
    rc = main(["explain", str(path), "--prompt", PROMPT, "--model", "tiny-random", "--method", "tam",
               "--out", str(tmp_path / "out"), "--no-pictures"])
    assert rc == 0
    assert dc.Explanation.load(tmp_path / "out").method == "tam"


def test_layercam_is_the_published_formula_on_uncentred_activations(tiny_mod, img):
    """ReLU(sum_c ReLU(g) A) per position, min-max, no module; not the centred ``layercam`` formula."""
    method = dc.get_method("layercam", tiny_mod, layer=1, modules=["akd"], cam="poscam")
    assert method.modules == () and method.cam == "layercam-published"
    exp = method.explain(img, PROMPT, targets=[0])
    np.testing.assert_array_equal(exp.maps, exp.raw_maps)
    run = method.generate(img, PROMPT)
    from diffusion_cam.extract import grid_gradients, target_scores

    seq, members = [(s, m) for s, m in method.forwards(run, [0])][0]
    targets = method.targets(run, members)
    gg = grid_gradients(tiny_mod, run.inputs, seq, [1], lambda lg: target_scores(lg, targets, method.score), 16,
                        n_targets=1)
    acts = gg.acts[0][0].double().numpy()
    grads = gg.grads[0][0].double().numpy()
    heat = np.maximum(np.einsum("khwd,hwd->khw", np.maximum(grads, 0), acts), 0)[0]
    expected = (heat - heat.min()) / (heat.max() - heat.min())
    np.testing.assert_allclose(exp.raw_grid_maps[0], expected, atol=1e-5)
    centred = dc.DiffusionCAM(tiny_mod, layer=1, cam="layercam", modules=()).explain(img, PROMPT, targets=[0])
    assert not np.allclose(centred.raw_grid_maps, exp.raw_grid_maps, atol=1e-3)


def test_diffusion_cam_raw_is_diffusion_cam_without_modules(tiny_mod, img):
    raw = dc.get_method("diffusion-cam-raw", tiny_mod, layer=1, modules=["akd"], akd_border="zero")
    assert raw.modules == () and raw.name == "diffusion-cam-raw"
    ours = raw.explain(img, PROMPT)
    ref = dc.DiffusionCAM(tiny_mod, layer=1, modules=()).explain(img, PROMPT)
    np.testing.assert_array_equal(ours.maps, ref.maps)
    full = dc.DiffusionCAM(tiny_mod, layer=1).explain(img, PROMPT)
    np.testing.assert_array_equal(ours.raw_maps, full.raw_maps)
    assert not np.array_equal(ours.maps, full.maps)
