"""Label-free calibration, profiles, and the sanity checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import diffusion_cam as dc
from diffusion_cam.calibration import calibrate, load_profile
from diffusion_cam.calibration.checks import cascade, check, restored, spearman, ssim
from diffusion_cam.calibration.grid import build_grid, default_layers
from diffusion_cam.calibration.sweep import _Variants
from diffusion_cam.errors import ImageLoadError, LayerError, ProfileError, PromptError, UnknownNameError

SMALL = dict(cams=["poscam", "layercam"], layers=[0], progress=False)


@pytest.fixture(scope="module")
def tiny_mod():
    from diffusion_cam.testing import tiny_adapter

    return tiny_adapter(seed=0, gen_length=8)


@pytest.fixture(scope="module")
def images():
    from diffusion_cam.testing import random_image

    return [random_image(0), random_image(1)]


@pytest.fixture(scope="module")
def calibration(tiny_mod, images):
    return calibrate(tiny_mod, images, ["describe"], **SMALL)


# ------------------------------------------------------------------ the sweep
def test_grid_defaults_and_stages(tiny_mod):
    grid = build_grid(tiny_mod)
    assert grid.scores[0] == tiny_mod.default_score and grid.borders[0] == tiny_mod.default_akd_border
    assert grid.layers[0] == tiny_mod.default_layer and len(tiny_mod.blocks()) - 1 not in grid.layers[1:]
    stage_one = grid.stage_one()
    assert len(stage_one) == len(grid.cams) * len(grid.layers) * 2
    around = grid.around(stage_one[0])
    assert [c.score for c in around if c.score != stage_one[0].score] == list(grid.scores[1:])
    assert all(c.modules for c in around if c.akd_border != grid.borders[0])
    assert default_layers(32, 0) == (0, 15, 30)
    full = build_grid(tiny_mod, cams=["layercam"], layers=[0, 1], scores=["logit", "logodds"]).factorial()
    # the border varies only with the modules on: 2 blocks x 2 scores x (3 borders + no modules)
    assert len(full) == 2 * 2 * 4 and len(set(full)) == len(full)


def test_calibration_table_profile_and_page(calibration, tmp_path):
    rows = calibration.rows
    # 2 formulas x 1 block x modules on/off, then the best with the other score and the two other borders
    assert len(rows) == 4 + (1 + 2 if calibration.best.modules else 1)
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    assert all(a["score"] >= b["score"] for a, b in zip(rows, rows[1:]))
    assert calibration.best.label() == rows[0]["label"]
    for r in rows:
        assert r["score"] == pytest.approx(r["insertion_auc"] - r["deletion_auc"])
    written = calibration.save(tmp_path)
    profile = json.loads((tmp_path / "profile.json").read_text())
    assert written == ["profile.json", "calibration.html"]
    assert profile["model"]["name"] == "tiny-random" and profile["package_version"] == dc.__version__
    assert profile["settings"]["cam"] == calibration.best.cam and profile["sweep"] == rows
    assert len(profile["images"]) == 2 and all(len(i["sha256"]) == 64 for i in profile["images"])
    page = (tmp_path / "calibration.html").read_text()
    assert "◀ chosen" in page and rows[0]["label"] in page and page.count("<rect") == len(rows)


def test_calibration_is_deterministic(tiny_mod, images, calibration):
    again = calibrate(tiny_mod, images, ["describe"], **SMALL)
    assert again.rows == calibration.rows


def test_variants_equal_single_methods(calibration, tiny_mod):
    run = calibration.queries[0].run
    idx = list(range(len(run.answer_ids)))
    v = _Variants(tiny_mod, [0, 1], ["poscam", "layercam"], "logit")
    for (layer, cam), raw in v.split(v.compute(run, idx)).items():
        ref = dc.GradientCAM(tiny_mod, layer=layer, cam=cam, score="logit", modules=()).compute(run, idx)
        np.testing.assert_array_equal(ref.grid_maps[0], raw.grid_maps[0])
        np.testing.assert_array_equal(ref.degenerate, raw.degenerate)


def test_calibrate_refuses_bad_inputs(tiny_mod, images):
    with pytest.raises(ImageLoadError, match="no images"):
        calibrate(tiny_mod, [], ["describe"], **SMALL)
    with pytest.raises(PromptError, match="no prompt"):
        calibrate(tiny_mod, images, [], **SMALL)
    with pytest.raises(PromptError, match="empty"):
        calibrate(tiny_mod, images, ["  "], **SMALL)
    with pytest.raises(UnknownNameError, match="unknown map formula 'nope'"):
        calibrate(tiny_mod, images, ["describe"], cams=["nope"], progress=False)
    with pytest.raises(LayerError, match="out of range"):
        calibrate(tiny_mod, images, ["describe"], layers=[9], progress=False)
    with pytest.raises(ImageLoadError, match="missing.png"):
        calibrate(tiny_mod, ["missing.png"], ["describe"], **SMALL)


# ------------------------------------------------------------------ profiles
@pytest.fixture
def profile_file(calibration, tmp_path):
    calibration.save(tmp_path)
    return tmp_path / "profile.json"


def test_profile_sets_the_method_and_is_recorded(tiny_mod, profile_file, images, calibration):
    best = calibration.best
    method = dc.DiffusionCAM(tiny_mod, profile=profile_file)
    s = method.settings()
    assert (s["cam"], s["layers"], s["score"], s["akd_border"]) == (best.cam, [best.layer], best.score, best.akd_border)
    assert s["profile"]["file"] == str(profile_file) and len(s["profile"]["sha256"]) == 64
    explicit = dc.DiffusionCAM(tiny_mod, **{k: v for k, v in calibration.settings.items() if k != "method"})
    a = method.explain(images[0], "describe")
    b = explicit.explain(images[0], "describe")
    np.testing.assert_array_equal(a.maps, b.maps)
    assert a.settings["profile"]["sha256"] == s["profile"]["sha256"]


def test_explicit_options_override_the_profile(tiny_mod, profile_file, calibration):
    other = "gradcam" if calibration.best.cam != "gradcam" else "layercam"
    method = dc.get_method("diffusion-cam", tiny_mod, profile=str(profile_file), cam=other, modules=["akd"])
    assert method.cam == other and method.modules == ("akd",)
    assert method.score == calibration.best.score


def _edited(profile_file, tmp_path, edit):
    data = json.loads(profile_file.read_text())
    edit(data)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    return path


def test_profile_refusals(tiny_mod, profile_file, tmp_path):
    unknown = _edited(profile_file, tmp_path, lambda d: d["settings"].update(temperature=0.7))
    with pytest.raises(ProfileError, match="unknown setting.*'temperature'"):
        dc.DiffusionCAM(tiny_mod, profile=unknown)
    foreign = _edited(profile_file, tmp_path, lambda d: d["model"].update(name="shapes-tiny"))
    with pytest.raises(ProfileError, match="calibrated for model 'shapes-tiny'.*not for 'tiny-random'"):
        dc.DiffusionCAM(tiny_mod, profile=foreign)
    other_weights = _edited(profile_file, tmp_path, lambda d: d["model"].update(weights="ab" * 32))
    tiny_mod.weights_id = "cd" * 32
    try:
        with pytest.raises(ProfileError, match="calibrated for"):
            dc.DiffusionCAM(tiny_mod, profile=other_weights)
    finally:
        tiny_mod.weights_id = None
    with pytest.raises(ProfileError, match="configures method 'diffusion-cam', not 'gradient-cam'"):
        dc.GradientCAM(tiny_mod, profile=profile_file)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ProfileError, match="not valid JSON"):
        load_profile(broken)
    with pytest.raises(ProfileError, match="cannot read profile"):
        load_profile(tmp_path / "absent.json")
    with pytest.raises(ProfileError, match="lacks"):
        load_profile({"settings": {}})


# ------------------------------------------------------------------- checks
def test_similarity_helpers():
    a = np.arange(64, dtype=float).reshape(8, 8) / 63
    assert spearman(a, a) == pytest.approx(1.0) and ssim(a, a) == pytest.approx(1.0)
    assert spearman(a, 1 - a) == pytest.approx(-1.0)
    assert spearman(a, np.zeros_like(a)) == 0.0 and spearman(np.zeros_like(a), np.zeros_like(a)) == 1.0
    assert np.isnan(ssim(a[:2, :2], a[:2, :2]))


def test_cascade_goes_top_down():
    assert cascade(4) == [[3], [3, 2], [3, 2, 1], [3, 2, 1, 0]]
    stages = cascade(32)
    assert len(stages) == 8 and stages[0] == [31, 30, 29, 28] and stages[-1] == list(range(31, -1, -1))


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_restored_puts_weights_back_after_an_error(tiny_mod):
    before = _state(tiny_mod.model)
    with pytest.raises(RuntimeError, match="boom"):
        with restored([tiny_mod.model]):
            with torch.no_grad():
                for p in tiny_mod.model.parameters():
                    p.add_(1.0)
            raise RuntimeError("boom")
    after = _state(tiny_mod.model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_check_center_prior_fails_randomization_and_leaves_the_model_unchanged(tiny_mod, images):
    before = _state(tiny_mod.model)
    rng = torch.get_rng_state()
    report = check(tiny_mod, images[:1], ["describe"], method="center")
    after = _state(tiny_mod.model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(rng, torch.get_rng_state())  # the caller's random stream is untouched too
    names = [r.name for r in report.results]
    assert names == ["randomization", "degenerate", "faithfulness"]
    rand = report.results[0]
    assert not rand.passed and rand.figures["stages"][-1]["spearman"] == 1.0
    assert rand.figures["stages"][-1]["randomized"] == "whole model"
    assert not report.passed and report.lines()[0].startswith("randomization  FAIL")


def test_check_gradient_maps_change_with_the_weights(tiny_mod, images):
    before = _state(tiny_mod.model)
    report = check(tiny_mod, images[:1], ["describe"], cam="layercam", layer=0)
    assert all(torch.equal(before[k], v) for k, v in _state(tiny_mod.model).items())
    stages = report.results[0].figures["stages"]
    assert len(stages) == len(tiny_mod.blocks()) + 1
    assert stages[-1]["spearman"] < 0.99  # a gradient map is not fixed by the input alone
    faith = report.results[2].figures
    assert 0 <= faith["random_deletion_auc"] <= 1 and faith["answers"] == 1


def test_check_refuses_no_images(tiny_mod):
    with pytest.raises(ImageLoadError, match="no images"):
        check(tiny_mod, [], ["describe"])
