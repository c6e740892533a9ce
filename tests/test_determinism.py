"""Determinism: the same command gives the same bytes; sampling happens only with an explicit seed.

(The CLI refusing ``--temperature 0.7`` without ``--seed`` is the
``sampling_without_seed`` row of ``test_bad_inputs.py``.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import diffusion_cam as dc
from diffusion_cam.errors import GenerationError
from diffusion_cam.datasets.shapes import generate_scene
from diffusion_cam.testing import tiny_adapter

MODEL = "shapes-tiny"  # the default model
PROMPT = "describe the image"
TIME_KEYS = ("time", "date", "timestamp", "created", "elapsed", "duration")


def _keys(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield f"{prefix}{k}"
            yield from _keys(v, f"{prefix}{k}.")
    elif isinstance(obj, list):
        for v in obj:
            yield from _keys(v, prefix)


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def two_cli_runs(tmp_path_factory):
    """The same seeded-sampling ``explain`` command, twice, as concurrent processes."""
    d = tmp_path_factory.mktemp("determinism")
    Image.fromarray(generate_scene(3).image).save(d / "scene.png")
    env = {k: v for k, v in os.environ.items() if k != "DIFFUSION_CAM_DEBUG"}
    env["OMP_NUM_THREADS"] = "1"
    procs = []
    for name in ("a", "b"):
        argv = [sys.executable, "-m", "diffusion_cam.cli", "explain", str(d / "scene.png"), "--prompt", PROMPT,
                "--temperature", "0.7", "--seed", "5", "--out", str(d / name)]  # the default model
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    try:
        for p in procs:
            out, err = p.communicate(timeout=900)
            assert p.returncode == 0, err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return d / "a", d / "b"


def test_same_command_gives_identical_bytes(two_cli_runs):
    a, b = two_cli_runs
    files_a, files_b = _files(a), _files(b)
    assert {"result.json", "maps.npz"} <= set(files_a)
    assert files_a.keys() == files_b.keys()
    for name in files_a:  # result.json, maps.npz and any pictures
        assert files_a[name] == files_b[name], f"{name} differs between two identical runs"
    doc = json.loads(files_a["result.json"])
    assert not [k for k in _keys(doc) if any(t in k.rsplit(".", 1)[-1].lower() for t in TIME_KEYS)]
    assert doc["model"] == MODEL
    assert doc["settings"]["generation"]["seed"] == 5 and doc["settings"]["generation"]["temperature"] == 0.7


def test_api_greedy_runs_save_identical_bytes(tmp_path):
    image = generate_scene(4).image
    dc.DiffusionCAM(dc.load_model(MODEL)).explain(image, PROMPT).save(tmp_path / "one")
    # a fresh adapter and method: nothing carried over from the first run
    dc.DiffusionCAM(dc.load_model(MODEL)).explain(image, PROMPT).save(tmp_path / "two")
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
    loaded = dc.Explanation.load(tmp_path / "one")
    loaded.save(tmp_path / "three")
    assert _files(tmp_path / "three") == _files(tmp_path / "one")


def test_sampling_needs_a_seed_and_the_seed_decides(image):
    # the random test model: its flat distributions make different seeds sample differently
    adapter = tiny_adapter(seed=0)
    base = adapter.default_generation
    with pytest.raises(GenerationError, match="explicit seed"):
        dc.DiffusionCAM(adapter, generation=replace(base, temperature=0.7)).explain(image, PROMPT)
    with pytest.raises(GenerationError, match="explicit seed"):
        dc.DiffusionCAM(adapter, generation=replace(base, remasking="random")).explain(image, PROMPT)

    def sample(seed):
        m = dc.GradientCAM(adapter, generation=replace(base, temperature=1.0, seed=seed), modules=())
        return m.explain(image, PROMPT)

    first, again = sample(11), sample(11)
    assert first.answer == again.answer and first.trajectory == again.trajectory
    assert np.array_equal(first.maps, again.maps)
    # the seed is really used: some other seed samples a different trajectory
    assert any(sample(s).trajectory != first.trajectory for s in (12, 13, 14))
