"""Large pictures: maps kept at grid resolution, drawn on demand, old files still read, memory named."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import diffusion_cam as dc
from diffusion_cam.errors import ImageLoadError, OutputError, ResourceError
from diffusion_cam.explanation import DISPLAY_SIDE, MAPS_FILE, RESULT_FILE, GridView, write_npz
from diffusion_cam.extract import place_maps
from diffusion_cam.testing import random_image


@pytest.fixture
def big(tiny):
    """A 1500 x 1100 picture explained by the test model (grid 6 x 6, one view over the whole image)."""
    rng = np.random.default_rng(3)
    picture = rng.integers(0, 256, (1100, 1500, 3), dtype=np.uint8)
    return dc.GradientCAM(tiny, layer=1, modules=("akd",)).explain(picture, "describe the image")


def test_maps_are_drawn_from_the_grid_views_as_placement_did(big):
    assert big.image_size == (1100, 1500) and big.image.shape[:2] == (1100, 1500)
    assert len(big.views) == 1 and big.views[0].box == (0.0, 0.0, 1500.0, 1100.0)
    assert big._maps is None  # nothing at image resolution until asked for
    grid = type("G", (), {"region": big.views[0].box, "image_index": 0})()
    expected = place_maps([big.views[0].maps], [grid], big.image_size)
    np.testing.assert_array_equal(big.map(0), expected[0])
    np.testing.assert_array_equal(big.maps, expected)
    assert not np.array_equal(big.raw_maps, big.maps)  # AKD changed them: raw is drawn from the raw grids


def test_two_views_average_where_they_overlap():
    base = np.full((1, 2, 2), 0.2, np.float32)
    crop = np.full((1, 2, 2), 0.6, np.float32)
    exp = dc.Explanation("x", ["x"], [1], [0], [0], image=np.zeros((10, 20, 3), np.uint8), image_size=(10, 20),
                         views=[GridView(base, base, (0, 0, 20, 10)), GridView(crop, crop, (10, 0, 20, 10))])
    m = exp.map(0)
    np.testing.assert_allclose(m[:, :10], 0.2, atol=1e-6)
    np.testing.assert_allclose(m[:, 10:], 0.4, atol=1e-6)
    small = exp.map(0, size=(5, 10))  # the boxes are scaled to the size drawn
    np.testing.assert_allclose(small[:, :5], 0.2, atol=1e-6)
    np.testing.assert_allclose(small[:, 5:], 0.4, atol=1e-6)


def test_saved_file_holds_grids_and_a_display_copy_only(big, tmp_path):
    big.save(tmp_path / "r")
    with np.load(tmp_path / "r" / MAPS_FILE) as npz:
        arrays = {k: npz[k] for k in npz.files}
    assert "maps" not in arrays and "raw_maps" not in arrays
    assert arrays["image"].shape == (751, 1024, 3)  # longest side DISPLAY_SIDE
    assert list(arrays["image_size"]) == [1100, 1500] and arrays["grid_boxes"].shape == (1, 4)
    assert max(a.nbytes for k, a in arrays.items() if k != "image") < 10_000
    back = dc.Explanation.load(tmp_path / "r")
    assert back.image_size == (1100, 1500) and back.image.shape[:2] == (751, 1024)
    assert back.maps.shape == (len(big), 751, 1024)  # drawn at the size of the image held
    np.testing.assert_array_equal(back.map(0, size=big.image_size), big.map(0))  # the full size on demand
    assert json.loads((tmp_path / "r" / RESULT_FILE).read_text())["image_size"] == [1100, 1500]
    back.save(tmp_path / "again")  # a loaded result saves the same bytes
    assert (tmp_path / "again" / MAPS_FILE).read_bytes() == (tmp_path / "r" / MAPS_FILE).read_bytes()


def test_pictures_are_drawn_at_display_size(big, tmp_path):
    from diffusion_cam.report import write_pictures

    written = write_pictures(big, tmp_path)
    overlays = [w for w in written if w.startswith("overlay")]
    assert overlays
    for name in overlays:
        with Image.open(tmp_path / name) as im:
            assert max(im.size) == DISPLAY_SIDE
    assert big._maps is None  # the full-size maps were never drawn


def test_evaluate_draws_at_the_mask_size_after_loading(big, tmp_path):
    mask = np.zeros(big.image_size, np.int64)
    mask[100:600, 200:900] = 1
    fresh = big.evaluate(mask)
    big.save(tmp_path / "r")
    back = dc.Explanation.load(tmp_path / "r")
    assert back.evaluate(mask) == fresh
    with pytest.raises(dc.DiffusionCamError, match="1500x1100"):
        back.evaluate(np.ones((751, 1024), np.int64))


def test_a_format_1_file_still_loads(tmp_path):
    """A result folder as the release before grid storage wrote it: maps at image resolution."""
    rng = np.random.default_rng(0)
    maps = rng.random((2, 30, 40)).astype(np.float32)
    raw = rng.random((2, 30, 40)).astype(np.float32)
    folder = tmp_path / "old"
    folder.mkdir()
    doc = {"format_version": 1, "answer": "a cat", "prompt": "what?", "model": "m", "method": "diffusion-cam",
           "settings": {}, "image_size": [30, 40], "grid_size": [3, 4], "answer_tokens": ["a", "cat"],
           "tokens": [{"text": t, "id": i, "index": i, "step": 0, "score": 1.0, "degenerate": False}
                      for i, t in enumerate(["a", "cat"])],
           "words": [], "trajectory": [], "metrics": {}, "faithfulness": {}}
    (folder / RESULT_FILE).write_text(json.dumps(doc))
    write_npz(folder / MAPS_FILE, {"maps": maps, "raw_maps": raw, "grid_maps": maps[:, ::10, ::10].copy(),
                                    "raw_grid_maps": raw[:, ::10, ::10].copy(),
                                    "image": rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)})
    exp = dc.Explanation.load(folder)
    np.testing.assert_array_equal(exp.maps, maps)
    np.testing.assert_array_equal(exp.map("cat", raw=True), raw[1])
    assert exp.map(1, size=(15, 20)).shape == (15, 20)
    doc["format_version"] = 99
    (folder / RESULT_FILE).write_text(json.dumps(doc))
    with pytest.raises(OutputError, match="format_version 99 is newer"):
        dc.Explanation.load(folder)


def test_image_memory_limit_names_the_memory(tmp_path, monkeypatch):
    from diffusion_cam.io import images

    path = tmp_path / "p.png"
    Image.fromarray(random_image(0)).save(path)
    monkeypatch.setattr(images, "available_memory", lambda: 10_000)  # 48 x 48 x 16 B = 36,864 B needed
    with pytest.raises(ImageLoadError, match=r"needs about 0\.0 GB of memory and this machine has 0\.0 GB available"):
        images.load_image(path)
    monkeypatch.setattr(images, "available_memory", lambda: None)  # unknown: only the fixed ceiling applies
    assert images.load_image(path).shape == (48, 48, 3)


def test_running_out_of_memory_names_the_step(tiny, image, monkeypatch):
    method = dc.GradientCAM(tiny, layer=1, modules=(), chunk_size=4)

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(method, "compute", no_memory)
    with pytest.raises(ResourceError, match=r"in the backward passes of \d+ token\(s\), 4 per batched backward.*"
                                            r"--chunk-size"):
        method.explain(image, "describe the image")
    monkeypatch.setattr(method, "generate", no_memory)
    with pytest.raises(ResourceError, match="while generating the answer; try --dtype bfloat16"):
        method.explain(image, "describe the image")
