"""Deletion / insertion through the adapter protocol, on a model whose evidence region is known."""

import numpy as np
import pytest
import torch
from torch import nn

from diffusion_cam.adapters.base import Adapter, ImageGrid, ModelInputs
from diffusion_cam.metrics.faithfulness import (
    FRACTIONS, PerturbationTarget, _cells, auc, blurred, deletion_insertion, patch_order, patch_scores, perturbed_images,
    linear_imputation, replacement_image)

SIZE, GRID = 32, 4


class RegionModel(Adapter):
    """Token 1's logit is 10 * (brightness of the top-left quadrant - 0.5): only that region is evidence."""

    family, name = "region", "region"

    def __init__(self, list_extra: bool = False):
        self._m = nn.Linear(1, 1)
        self.calls: list[int] = []
        self.list_extra = list_extra

    @property
    def model(self):
        return self._m

    def blocks(self):
        return [self._m]

    @property
    def mask_token_id(self):
        return 0

    def prepare(self, images, prompt, gen_length):
        px = torch.from_numpy(np.asarray(images[0], dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        extras = {"pixels": px}
        if self.list_extra:
            extras["raw"] = np.asarray(images[0])  # an array per image: nothing the batcher can stack
        ids = torch.tensor([2] * (GRID * GRID) + [0] * gen_length)
        return ModelInputs(ids, GRID * GRID, gen_length, list(images), prompt, extras)

    def forward(self, inputs, sequence):
        self.calls.append(sequence.shape[0])
        px = inputs.extras["pixels"].expand(sequence.shape[0], -1, -1, -1)
        evidence = px[:, :, : SIZE // 2, : SIZE // 2].mean(dim=(1, 2, 3))
        logits = torch.zeros(sequence.shape[0], sequence.shape[1], 3)
        logits[:, :, 1] = 10.0 * (evidence[:, None] - 0.5)
        return logits

    def image_grids(self, inputs, sequence):
        return [ImageGrid(tuple(range(GRID * GRID)), (GRID, GRID), (0.0, 0.0, float(SIZE), float(SIZE)))]

    def decode(self, ids):
        return [str(i) for i in ids]


def _image():
    img = np.full((SIZE, SIZE, 3), 30, dtype=np.uint8)
    img[: SIZE // 2, : SIZE // 2] = 250  # the bright evidence
    return img


def _maps():
    good = np.zeros((SIZE, SIZE), np.float32)
    good[: SIZE // 2, : SIZE // 2] = 1.0
    bad = np.zeros((SIZE, SIZE), np.float32)
    bad[SIZE // 2:, SIZE // 2:] = 1.0
    return good, bad


def _curves(adapter, maps, **kw):
    img = _image()
    inputs = adapter.prepare([img], "p", 2)
    seq = inputs.input_ids.clone()
    seq[GRID * GRID:] = 1
    targets = [PerturbationTarget(GRID * GRID, 1, m) for m in maps]
    kw.setdefault("blur_sigma", SIZE / 2)  # strong enough to wipe the evidence out of a blurred patch
    return deletion_insertion(adapter, inputs, seq, targets, **kw)


def test_auc_is_the_trapezoid_over_fractions():
    assert auc(np.full(11, 0.3)) == pytest.approx(0.3)
    assert auc(FRACTIONS) == pytest.approx(0.5)
    assert auc([1.0, 0.0], [0.0, 1.0]) == pytest.approx(0.5)


def test_a_map_on_the_evidence_deletes_faster_and_inserts_faster_than_one_off_it():
    good, bad = _maps()
    rg, rb = _curves(RegionModel(), [good, bad])
    assert rg.deletion_auc < rb.deletion_auc - 0.2
    assert rg.insertion_auc > rb.insertion_auc + 0.2
    # endpoints: nothing removed = the intact image; everything removed = the blurred image
    assert rg.deletion[0] == pytest.approx(rb.deletion[0]) and rg.deletion[0] == pytest.approx(rg.insertion[-1])
    assert rg.deletion[-1] == pytest.approx(rg.insertion[0])
    # the evidence is 4 of 16 patches: with the right map it is gone after 30 % (fractions round to 25 % + 1 patch)
    assert rg.deletion[3] == pytest.approx(rg.deletion[-1], abs=0.02)
    assert len(rg.deletion) == len(rg.insertion) == 11


def test_mean_colour_replacement_removes_the_evidence_too():
    img = _image()
    # 1/4 of the pixels at 250, 3/4 at 30: mean 85 in every channel
    np.testing.assert_array_equal(replacement_image(img, "mean"), np.full_like(img, 85))
    np.testing.assert_array_equal(replacement_image(img, "blur", 3.0), blurred(img, 3.0))
    with pytest.raises(ValueError, match="unknown replacement 'noise'"):
        replacement_image(img, "noise")
    good, bad = _maps()
    adapter = RegionModel()
    cache: dict = {}
    rg, rb = _curves(adapter, [good, bad], replacement="mean", cache=cache)
    assert rg.deletion_auc < rb.deletion_auc - 0.2 and rg.insertion_auc > rb.insertion_auc + 0.2
    # a blur run on the same cache forwards its own images instead of reusing the mean ones
    (blur_run,) = _curves(adapter, [good], cache=cache)
    assert blur_run.deletion[-1] != pytest.approx(rg.deletion[-1])
    assert {key[3] for key in cache} == {("mean", None), ("blur", SIZE / 2)}


def test_road_imputation_recovers_a_linear_ramp_and_is_seeded():
    yy, xx = np.mgrid[0:20, 0:24]
    ramp = np.stack([2 * xx + 3 * yy + 10, 100 + xx, 200 - 4 * yy], axis=-1).astype(np.uint8)
    removed = np.zeros((20, 24), bool)
    removed[5:12, 3:17] = True
    # away from the border a linear function is the weighted mean of its 8 symmetric neighbours: exact
    np.testing.assert_array_equal(linear_imputation(ramp, removed, noise=0), ramp)
    # in a corner the neighbours are one-sided; the imputation stays within the values around it
    corner = np.zeros((20, 24), bool)
    corner[0:4, 20:24] = True
    filled = linear_imputation(ramp, corner, noise=0)
    np.testing.assert_array_equal(filled[~corner], ramp[~corner])
    around = ramp[0:5, 19:24][~corner[0:5, 19:24]]
    assert (filled[corner] >= around.min(axis=0)).all() and (filled[corner] <= around.max(axis=0)).all()
    flat = np.full((16, 16, 3), 120, np.uint8)
    hole = np.zeros((16, 16), bool)
    hole[4:12, 4:12] = True
    a, b = linear_imputation(flat, hole), linear_imputation(flat, hole)
    np.testing.assert_array_equal(a, b)  # seeded noise
    assert (a[~hole] == 120).all() and 1.5 < a[hole].astype(float).std() < 3.5  # ROAD's noise, 0.01 of 255
    everything = np.ones((16, 16), bool)
    np.testing.assert_array_equal(linear_imputation(_image(), np.ones((SIZE, SIZE), bool), noise=0),
                                  replacement_image(_image(), "mean"))
    assert linear_imputation(flat, everything, noise=0).tolist() == flat.tolist()


def test_road_replacement_ranks_maps_like_blur():
    good, bad = _maps()
    rg, rb = _curves(RegionModel(), [good, bad], replacement="road")
    assert rg.deletion_auc < rb.deletion_auc - 0.2 and rg.insertion_auc > rb.insertion_auc + 0.2
    # the removed evidence is interpolated from the dark pixels around it, not smeared from a blur
    img = _image()
    cells = _cells((GRID, GRID), (0, 0, SIZE, SIZE), (SIZE, SIZE))
    deleted = perturbed_images(img, good, cells, None)[3]  # 30 %: the 4 evidence patches and one more
    assert deleted[: SIZE // 2, : SIZE // 2].mean() < 40


def test_perturbations_are_batched_in_one_forward_and_equal_single_forwards():
    good, bad = _maps()
    batched = RegionModel()
    one = RegionModel()
    rb = _curves(batched, [good, bad])
    r1 = _curves(one, [good, bad], batch_size=1)
    # 2 maps x (11 deletion + 11 insertion) images, of which the intact and the fully blurred image are
    # the same for both curves and both maps (same token): 38 distinct images, one forward (<= 64)
    assert batched.calls[-1] == 38 and len(batched.calls) == 4  # after the one-time batching check (1, 1, 2)
    assert max(one.calls) == 1
    for a, b in zip(rb, r1):
        np.testing.assert_allclose(a.deletion, b.deletion, rtol=1e-6)
        np.testing.assert_allclose(a.insertion, b.insertion, rtol=1e-6)


def test_inputs_that_cannot_be_stacked_fall_back_to_single_forwards():
    good, _ = _maps()
    adapter = RegionModel(list_extra=True)
    (res,) = _curves(adapter, [good])
    assert max(adapter.calls) == 1 and len(adapter.calls) == 20  # 22 images, 2 of them shared by both curves
    assert res.deletion_auc < res.insertion_auc


def test_perturbed_images_replace_exactly_the_ranked_patches():
    img = _image()
    good, _ = _maps()
    cells = _cells((GRID, GRID), (0, 0, SIZE, SIZE), (SIZE, SIZE))
    blur = blurred(img)
    ims = perturbed_images(img, good, cells, blur)
    assert len(ims) == 22
    np.testing.assert_array_equal(ims[0], img)  # deletion 0 %
    np.testing.assert_array_equal(ims[10], blur)  # deletion 100 %
    np.testing.assert_array_equal(ims[11], blur)  # insertion 0 %
    np.testing.assert_array_equal(ims[21], img)  # insertion 100 %
    # deletion 50 %: 8 of the 16 patches come from the blurred copy, the 4 top-ranked ones among them
    np.testing.assert_array_equal(ims[5][: SIZE // 2, : SIZE // 2], blur[: SIZE // 2, : SIZE // 2])
    from_blur = [(ims[5][y0:y1, x0:x1] == blur[y0:y1, x0:x1]).all() and not (blur[y0:y1, x0:x1] == img[y0:y1, x0:x1]).all()
                 for y0, y1, x0, x1 in cells]
    kept = [(ims[5][y0:y1, x0:x1] == img[y0:y1, x0:x1]).all() for y0, y1, x0, x1 in cells]
    assert all(k or b for k, b in zip(kept, from_blur))
    assert sum(not k for k in kept) <= 8


def test_ties_are_broken_by_a_fixed_permutation_not_raster_order():
    cells = _cells((GRID, GRID), (0, 0, SIZE, SIZE), (SIZE, SIZE))
    flat = patch_scores(np.zeros((SIZE, SIZE)), cells, (GRID, GRID))
    o1, o2 = patch_order(flat), patch_order(flat)
    np.testing.assert_array_equal(o1, o2)
    assert sorted(o1.tolist()) == list(range(GRID * GRID)) and o1.tolist() != list(range(GRID * GRID))


def test_wrong_map_shape_is_rejected():
    with pytest.raises(ValueError, match="saliency map has shape \\(5, 5\\), the image is \\(32, 32\\) and its grid \\(4, 4\\)"):
        _curves(RegionModel(), [np.zeros((5, 5))])


def test_tiny_model_batched_and_unbatched_agree(tiny, image):
    import diffusion_cam as dc

    exp_method = dc.get_method("center", tiny)
    run = exp_method.generate(image, "describe the image")
    idx = [0, 1]
    exp = exp_method.build(run, idx, exp_method.compute(run, idx))
    targets = [PerturbationTarget(run.canvas_position(i), run.answer_ids[i], exp.maps[r]) for r, i in enumerate(idx)]
    a = deletion_insertion(tiny, run.inputs, run.generation.sequence, targets)
    b = deletion_insertion(tiny, run.inputs, run.generation.sequence, targets, batch_size=1)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.deletion, y.deletion, rtol=1e-5)
        assert 0.0 <= x.deletion_auc <= 1.0 and 0.0 <= x.insertion_auc <= 1.0


def test_a_grid_resolution_map_ranks_patches_like_its_image_resolution_twin_and_the_cache_skips_repeats():
    good, _ = _maps()
    grid_map = good[::8, ::8]  # constant per 8x8 patch: the same ranking at 4x4
    adapter = RegionModel()
    cache = {}
    (a,) = _curves(adapter, [good], cache=cache)
    n = len(adapter.calls)
    (b,) = _curves(adapter, [grid_map], cache=cache)
    assert len(adapter.calls) == n  # every perturbed image was already forwarded
    assert a.deletion == b.deletion and a.insertion == b.insertion
    assert len(cache) == 20  # 11 + 11 images, the intact and the blurred one shared by both curves
