"""Family descriptions, registration, safe loading and memory-aware chunking (offline)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import diffusion_cam as dc
from diffusion_cam.adapters.config_adapter import ConfigAdapter, builtin_specs, read_spec
from diffusion_cam.cli import main
from diffusion_cam.errors import ModelLoadError, PromptError
from diffusion_cam.extract import memory

FAMILIES = {"llada-v", "lavida", "mmada", "lumina-dimoo", "dimple", "diffusion-gemma"}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_builtin_families_are_described_and_listed(capsys):
    specs = {s.name: s for s in builtin_specs()}
    assert FAMILIES <= set(specs)
    entries = {e.name: e for e in dc.available_models()}
    for name in FAMILIES:
        assert entries[name].verified.startswith("no"), "no big model was run on its released weights"
        assert set(entries[name].states) == {"trajectory", "final"}
    assert entries["tiny-random"].verified.startswith("n/a"), "random weights are no real weights"
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in FAMILIES:
        assert name in out


def test_remote_code_families_need_explicit_permission(capsys, tmp_path):
    for hub_id in ("GSAI-ML/LLaDA-V", "jacklishufan/lavida-llada-v1.0-instruct", "rp-yu/Dimple-7B"):
        with pytest.raises(ModelLoadError, match="trust_remote_code=True"):
            dc.load_model(hub_id)
    picture = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(picture)
    assert main(["explain", str(picture), "--model", "Gen-Verse/MMaDA-8B-MixCoT", "--prompt", "hi",
                 "--out", str(tmp_path / "out")]) != 0
    assert "--trust-remote-code" in capsys.readouterr().err


def test_missing_weights_say_so_offline():
    with pytest.raises(ModelLoadError) as err:
        dc.load_model("GSAI-ML/LLaDA-V", trust_remote_code=True)
    assert "not available locally" in str(err.value) or "transformers" in str(err.value)


def test_resolver_picks_a_family_for_hub_variants_and_local_folders(tmp_path):
    with pytest.raises(ModelLoadError, match="trust_remote_code"):
        dc.load_model("hbXNov/lavida-llada-reason")  # a LaViDa variant by hub pattern
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llava_llada"}))
    with pytest.raises(ModelLoadError, match="trust_remote_code"):
        dc.load_model(str(folder))
    named = tmp_path / "Dimple-7B"  # no model_type: recognised by the folder's name
    named.mkdir()
    (named / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="dimple runs model code"):
        dc.load_model(str(named))
    unknown = tmp_path / "something-else"
    unknown.mkdir()
    with pytest.raises(dc.errors.UnknownNameError):
        dc.load_model(str(unknown))


def test_pickle_checkpoints_are_refused_unless_allowed(tmp_path):
    pytest.importorskip("transformers")
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "mmada"}))
    (folder / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(ModelLoadError, match="allow_pickle=True"):
        dc.load_model(str(folder), trust_remote_code=True)
    # allowed: the pickle check passes and loading stops at the missing repository package instead
    with pytest.raises(ModelLoadError, match="`models` package"):
        dc.load_model(str(folder), trust_remote_code=True, allow_pickle=True)


def test_folder_without_weights(tmp_path):
    pytest.importorskip("transformers")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "dimple"}))
    with pytest.raises(ModelLoadError, match="no weight files"):
        dc.load_model(str(tmp_path), trust_remote_code=True)


def test_bad_family_files_name_the_problem(tmp_path):
    bad = tmp_path / "fam.json"
    bad.write_text(json.dumps({"name": "x", "family": "x", "blocks": "model.layers", "colour": 1}))
    with pytest.raises(ModelLoadError, match="colour"):
        read_spec(bad)
    bad.write_text(json.dumps({"name": "x", "family": "x", "blocks": "model.layers", "mask_token_id": 3,
                               "image": {"rule": "spiral"}, "prompt": {"template": "{prompt}"}}))
    with pytest.raises(ModelLoadError, match="spiral"):
        read_spec(bad)
    bad.write_text("{not json")
    with pytest.raises(ModelLoadError, match="invalid JSON"):
        read_spec(bad)


class PixelModel(nn.Module):
    """A new family in the wild: 'model.body.layers' blocks, 4x4 image tokens fed by ``pixels``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(64, 16)
        self.patch = nn.Linear(3, 16)
        self.body = nn.Module()
        self.body.layers = nn.ModuleList(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True) for _ in range(3))
        self.head = nn.Linear(16, 64)

    def forward(self, ids, pixels):
        x = self.embed(ids)
        feats = torch.nn.functional.adaptive_avg_pool2d(pixels, 4).flatten(2).transpose(1, 2)
        x = x.masked_scatter((ids == 9)[..., None], self.patch(feats).expand(x.shape[0], -1, -1))
        for layer in self.body.layers:
            x = layer(x)
        return self.head(x)


class Tok:
    words = {"<s>": 10, "user:": 11, "what": 12, "is": 13, "this": 14, "answer:": 15}

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [self.words[w] for w in text.split()]}

    def decode(self, ids):
        return " ".join(str(i) for i in ids)


def test_a_new_family_from_a_yaml_file_needs_no_code(tmp_path):
    yaml = pytest.importorskip("yaml")
    path = tmp_path / "new_family.yaml"
    path.write_text(yaml.safe_dump({
        "name": "pixel-dlm", "family": "pixel-dlm", "loader": "auto", "blocks": "model.body.layers",
        "mask_token_id": 3, "stop_token_ids": [2], "join": " ", "forward": "ids",
        "image": {"rule": "token_runs", "image_token_id": 9, "grid": [4, 4]},
        "prompt": {"template": "<s> {image} user: {prompt} answer:"},
        "generation": {"gen_length": 4},
    }))
    spec = read_spec(path)

    def pixels(images):
        arr = np.stack([np.asarray(im.resize((16, 16)), dtype=np.float32) / 255 for im in images])
        return {"pixels": torch.from_numpy(arr).permute(0, 3, 1, 2)[:1]}

    adapter = ConfigAdapter(spec, {"model": PixelModel(), "tokenizer": Tok(), "image_fn": pixels})
    img = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    inputs = adapter.prepare([img], "what is this", 4)
    (grid,) = adapter.image_grids(inputs, inputs.input_ids)
    assert grid.positions == tuple(range(1, 17)) and grid.shape == (4, 4)
    a = dc.DiffusionCAM(adapter, layer=1).explain(img, "what is this")
    b = dc.DiffusionCAM(adapter, layer=1).explain(img, "what is this")
    assert a.maps.shape[1:] == (20, 30) and np.array_equal(a.maps, b.maps)
    with pytest.raises(PromptError):
        adapter.prepare([img, img], "what is this", 4)
    # load_model accepts the file; without a checkpoint to load it says what is missing
    with pytest.raises(ModelLoadError, match="checkpoint="):
        dc.load_model(str(path))


# ------------------------------------------------------------------ memory


class _Stub:
    """Sizes of an 8B LLaDA without its weights."""

    def __init__(self):
        self.model = nn.Linear(1, 1).to(torch.bfloat16)
        self.model.config = type("C", (), {"hidden_size": 4096, "vocab_size": 126464})()
        self._blocks = nn.ModuleList(nn.Identity() for _ in range(32))
        self.device = torch.device("cuda")

    def blocks(self):
        return self._blocks

    def output_head(self):
        return self.head


def test_chunk_size_for_an_8b_model_on_80gb(monkeypatch):
    monkeypatch.setattr(memory, "free_bytes", lambda device: 63 * 10**9)
    stub = _Stub()
    stub.head = nn.Linear(1, 1)  # a head that forward_at narrows to the 64 scored rows
    for length, expected in ((2000, 44), (1000, 64), (3000, 27)):
        inputs = dc.ModelInputs(torch.zeros(length, dtype=torch.long), length - 64, 64, [], "")
        assert memory.auto_chunk_size(stub, inputs, 64) == expected  # the docstring's worked example
    stub.head = None  # every row projected: the logits' gradient is L x V per target
    for length, expected in ((2000, 18), (1000, 40), (3000, 11)):
        inputs = dc.ModelInputs(torch.zeros(length, dtype=torch.long), length - 64, 64, [], "")
        assert memory.auto_chunk_size(stub, inputs, 64) == expected


def test_chunk_size_bounds():
    adapter = dc.load_model("tiny-random")
    inputs = adapter.prepare([np.zeros((48, 48, 3), np.uint8)], "describe the image", 8)
    assert memory.auto_chunk_size(adapter, inputs, 5, budget_bytes=1) == 1
    assert memory.auto_chunk_size(adapter, inputs, 5, budget_bytes=10**12) == 5
    assert 1 <= memory.auto_chunk_size(adapter, inputs, 64) <= 64
