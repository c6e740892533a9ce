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
