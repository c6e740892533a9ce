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
