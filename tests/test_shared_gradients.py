"""A bench item explains one answer with many configurations: formulas reading the same block and score share one
backward, and the maps are the same bits as when every configuration runs its own."""

import numpy as np

import diffusion_cam as dc


def test_formulas_share_the_backward_and_give_the_same_maps(tiny, monkeypatch):
    from diffusion_cam.methods import gradient

    image = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    methods = [dc.get_method(name, tiny, **{"layer": 1, "score": "logit", **opts})
               for name, opts in (("diffusion-cam", {"cam": "layercam"}), ("diffusion-cam-raw", {"cam": "poscam"}),
                                  ("gradcam", {}), ("diffusion-cam", {"cam": "poscam", "score": "logodds"}))]
    calls = []
    real = gradient.grid_gradients
    monkeypatch.setattr(gradient, "grid_gradients", lambda *a, **k: calls.append(1) or real(*a, **k))
    run = methods[0].generate(image, "describe the image")
    indices = list(range(len(run.answer_ids)))
    alone = []
    for m in methods:
        run.gradients = None
        alone.append(m.compute(run, indices))
    n_alone, calls[:] = len(calls), []
    run.gradients = {}
    shared = [m.compute(run, indices) for m in methods]
    forwards = len(methods[0].forwards(run, indices))
    assert n_alone == 4 * forwards
    assert len(calls) == 2 * forwards  # logit at block 1 once for three formulas, logodds once
    for a, b in zip(alone, shared):
        assert all(np.array_equal(x, y) for x, y in zip(a.grid_maps, b.grid_maps))
        assert np.array_equal(a.degenerate, b.degenerate) and np.array_equal(a.scores, b.scores)
