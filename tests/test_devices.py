"""``--device auto`` / ``--dtype auto``, ``--device-map``: resolution with CUDA faked, and what reaches the loaders."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

import diffusion_cam as dc
from diffusion_cam.cli import build_parser, main
from diffusion_cam.devices import resolve_device, resolve_dtype
from diffusion_cam.errors import ModelLoadError, UnknownNameError


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def cuda(monkeypatch, no_gpu):
    """A machine whose torch reports a CUDA GPU (the weights are never moved there)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch, no_gpu):
    assert resolve_device("auto") == resolve_device(None) == "cpu"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cpu") == "cpu" and resolve_device("cuda:1") == "cuda:1"  # named devices as given


def test_auto_dtype_is_bf16_only_on_a_gpu_that_has_it(monkeypatch, cuda):
    assert resolve_dtype("auto", "cuda") == "bfloat16" and resolve_dtype("auto", "cuda:1") == "bfloat16"
    assert resolve_dtype("auto", "cpu") == "float32" and resolve_dtype("auto", "mps") == "float32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a V100 or T4
    assert resolve_dtype("auto", "cuda") == "float32"
    assert resolve_dtype("float16", "cpu") == "float16"
    with pytest.raises(UnknownNameError, match="unknown dtype 'fp8'"):
        resolve_dtype("fp8", "cpu")


def _options(monkeypatch, argv):
    """What ``explain``'s model options hand to ``load_model``."""
    from diffusion_cam import adapters
    from diffusion_cam.cli.options import load_adapter

    seen = {}
    monkeypatch.setattr(adapters, "load_model", lambda name, **options: seen.update(name=name, **options))
    load_adapter(build_parser().parse_args(["explain", "x.png", "--prompt", "p", *argv]))
    return seen


def test_cli_defaults_pick_the_gpu_and_bf16_for_checkpoints(monkeypatch, cuda):
    assert _options(monkeypatch, ["--model", "owner/checkpoint"]) == {
        "name": "owner/checkpoint", "device": "cuda", "dtype": "bfloat16"}
    # the built-in models are measured in float32: auto keeps them there, also on a GPU
    assert _options(monkeypatch, []) == {"name": "shapes-tiny", "device": "cuda", "dtype": "float32"}
    assert _options(monkeypatch, ["--device", "cpu", "--model", "owner/checkpoint"])["dtype"] == "float32"
    assert _options(monkeypatch, ["--dtype", "float16"])["dtype"] == "float16"
    mapped = _options(monkeypatch, ["--model", "owner/checkpoint", "--device-map", "auto"])
    assert mapped == {"name": "owner/checkpoint", "device_map": "auto", "dtype": "bfloat16"}


def test_device_and_dtype_are_recorded_in_the_result(tmp_path, no_gpu):
    from diffusion_cam.testing import random_image
    from PIL import Image

    path = tmp_path / "p.png"
    Image.fromarray(random_image(0)).save(path)
    assert main(["explain", str(path), "--prompt", "describe the image", "--model", "tiny-random", "--layer", "1",
                 "--gen-length", "4", "--steps", "4", "--no-pictures", "--out", str(tmp_path / "o")]) == 0
    settings = json.loads((tmp_path / "o" / "result.json").read_text())["settings"]
    assert settings["device"] == "cpu" and settings["dtype"] == "float32"
    adapter = dc.load_model("tiny-random", device="auto", dtype="bfloat16")
    assert dc.get_method("diffusion-cam", adapter, layer=1).settings()["dtype"] == "bfloat16"


def test_device_map_is_refused_for_built_in_models_and_with_a_device():
    with pytest.raises(ModelLoadError, match="built in"):
        dc.load_model("tiny-random", device_map="auto")
    with pytest.raises(ModelLoadError, match="not both"):
        dc.load_model("owner/checkpoint", device_map="auto", device="cuda")


def test_loading_options_keep_big_checkpoints_out_of_host_memory(monkeypatch):
    from diffusion_cam.adapters.hub import loading_options

    v4, v5 = types.SimpleNamespace(__version__="4.46.3"), types.SimpleNamespace(__version__="5.23.0")
    monkeypatch.setitem(sys.modules, "accelerate", types.ModuleType("accelerate"))
    assert loading_options(None, v4) == {"low_cpu_mem_usage": True}
    assert loading_options("auto", v4) == {"low_cpu_mem_usage": True, "device_map": "auto"}
    assert loading_options(None, v5) == {}  # transformers 5 always loads shard by shard
    assert loading_options("auto", v5) == {"device_map": "auto"}
    monkeypatch.setitem(sys.modules, "accelerate", None)  # not installed
    assert loading_options(None, v4) == {}
    with pytest.raises(ModelLoadError, match="needs accelerate"):
        loading_options("auto", v5)


def test_device_map_reaches_from_pretrained(tmp_path, monkeypatch):
    pytest.importorskip("accelerate")
    transformers = pytest.importorskip("transformers")
    from test_adapter_diffusion_gemma import tiny_parts

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tokenizer, processor = tiny_parts()
    for part in (model, tokenizer, processor):
        part.save_pretrained(tmp_path)
    cls = transformers.DiffusionGemmaForBlockDiffusion
    original, seen = cls.from_pretrained.__func__, {}

    def spy(klass, *args, **kwargs):
        seen.update(kwargs)
        return original(klass, *args, **kwargs)

    monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    adapter = dc.load_model(str(tmp_path), device_map="auto", max_denoising_steps=4)
    assert seen["device_map"] == "auto"  # accelerate places the weights (all on the CPU here)
    assert str(adapter.device) == "cpu"
