import os

import pytest

# the suite shares two cores with other jobs: keep torch from oversubscribing
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def tiny():
    from diffusion_cam.testing import tiny_adapter

    return tiny_adapter(seed=0, gen_length=8)


@pytest.fixture
def image():
    from diffusion_cam.testing import random_image

    return random_image(0)


def _own_generate(adapter, inputs, generation_config) -> list[int]:
    ids = inputs.input_ids[: inputs.answer_start][None]
    start = torch.randint(0, adapter.vocab_size, (adapter.canvas_length,),
                          generator=torch.Generator().manual_seed(adapter.seed))
    out = adapter.model.generate(
        input_ids=ids, pixel_values=inputs.extras["pixel_values"],
        image_position_ids=inputs.extras["image_position_ids"],
        mm_token_type_ids=(ids == adapter.image_token_id).long(), decoder_input_ids=start[None],
        generation_config=generation_config)
    return out.sequences[0, inputs.answer_start:].tolist()


@pytest.fixture
def own_generate():
    """A DiffusionGemma model's own ``generate``, from the canvas the adapter's sampler starts from:
    ``own_generate(adapter, inputs, generation_config)`` gives the answer's token ids."""
    return _own_generate


@pytest.fixture(scope="session")
def example_scenes():
    """The shipped example scenes (drawn before either built-in model was trained), regenerated from their seeds
    and checked against the shipped images, label maps and captions."""
    import numpy as np
    from PIL import Image

    import diffusion_cam as dc
    from diffusion_cam.datasets import shapes

    out = []
    for example in dc.example_scenes():
        scene = shapes.generate_scene(example.seed, n_objects=len(example.objects))
        assert np.array_equal(np.asarray(Image.open(example.image).convert("RGB")), scene.image)
        assert np.array_equal(np.asarray(Image.open(example.labels)), shapes.label_image(scene))
        assert example.caption == shapes.answer(scene, "describe the image")
        assert [o["shape"] for o in example.objects] == [o.shape for o in scene.objects]
        out.append(scene)
    return out


def _caption_pointing(method, scenes) -> tuple[int, int]:
    import diffusion_cam as dc
    from diffusion_cam.datasets import shapes

    hits = total = 0
    for scene in scenes:
        exp = method.explain(scene.image, "describe the image")
        words = [t.strip() for t in exp.tokens]  # DiffusionGemma's tokens carry their leading space
        for word, mask, grid_map in zip(words, shapes.referent_masks(scene, "describe the image", words),
                                        exp.grid_maps):
            if word in shapes.COLOURS or word in shapes.SHAPES:
                total += 1
                hits += bool(dc.metrics.pointing_game(grid_map, mask))
    return hits, total


@pytest.fixture(scope="session")
def measure_caption_pointing():
    """``measure_caption_pointing(method, scenes)`` -> (hits, total): the colour/shape words of the scenes'
    captions whose map's argmax lies inside the object the word names."""
    return _caption_pointing
