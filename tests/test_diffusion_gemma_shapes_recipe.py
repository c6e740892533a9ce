"""The diffusion-gemma-shapes recipe without its trained weights: stock parts, checkpoint folder, sampler, resume."""

import copy
import json

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "DiffusionGemmaForBlockDiffusion"):
    pytest.skip("transformers without DiffusionGemma (needs >=5.13)", allow_module_level=True)

from diffusion_cam.adapters.diffusion_gemma import DiffusionGemmaAdapter, load_diffusion_gemma
from diffusion_cam.datasets import shapes
from diffusion_cam.models.diffusion_gemma_shapes import build
from diffusion_cam.models.diffusion_gemma_shapes import train as recipe

# raised inside torch by transformers' Gemma-4 code on import, not by this package
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A freshly initialised model saved the way the trained one is shipped."""
    path = tmp_path_factory.mktemp("dg") / "weights"
    recipe.save_checkpoint_folder(recipe.new_model(0).eval(), path)
    return path


def test_tokenizer_reads_the_template_and_decodes_words_with_their_space():
    tok = build.make_tokenizer()
    text = tok.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                    "text": "what color is the cross"}]}], tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert build.UNK not in ids
    assert tok.convert_ids_to_tokens(ids)[:4] == ["<bos>", "<|turn>", "\u2581user", "<|image|>"]
    assert [tok.decode([i]) for i in tok("a blue cross", add_special_tokens=False)["input_ids"]] == [
        " a", " blue", " cross"]
    assert recipe.canvas_ids(tok, "a red circle and a blue square and a green cross")[-1] == build.EOS
    with pytest.raises(ValueError, match="does not fit"):
        recipe.canvas_ids(tok, " ".join(["a red circle and"] * 3))


def test_the_folder_is_a_plain_checkpoint_and_the_adapter_sees_a_16x16_grid(folder):
    names = {f.name for f in folder.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "SHA256SUMS",
            "preprocessor_config.json"} <= names
    listed = {line.split()[1] for line in (folder / "SHA256SUMS").read_text().splitlines()}
    assert listed == names - {"SHA256SUMS"}
    adapter = load_diffusion_gemma(str(folder))
    assert type(adapter) is DiffusionGemmaAdapter
    assert type(adapter.model) is transformers.DiffusionGemmaForBlockDiffusion
    inputs = adapter.prepare([shapes.generate_scene(3).image], "describe the image", 12)
    (grid,) = adapter.image_grids(inputs, inputs.input_ids)
    assert grid.shape == (16, 16) and inputs.gen_length == adapter.canvas_length == 12
    # the training loop lays out the same prompt the adapter builds
    assert inputs.input_ids[: inputs.answer_start].tolist() == recipe.prompt_ids(
        adapter.tokenizer, "describe the image", 256)


def test_recorded_sampler_gives_the_tokens_of_the_models_own_generate(folder, own_generate):
    """Both greedy. The model's ``generate`` samples from softmax(logits / T) on its linear temperature schedule
    and re-noises from the global RNG; the adapter proposes the argmax and draws from its own seeded generator.
    With T near zero the model's sample is its argmax and every token is accepted at once, so from the same
    starting canvas the two runs are one computation and their tokens must be equal."""
    adapter = load_diffusion_gemma(str(folder), t_min=1e-3, t_max=2e-3)
    config = copy.deepcopy(adapter.model.generation_config)
    config.t_min, config.t_max = 1e-3, 2e-3
    for seed in range(3):
        scene = shapes.generate_scene(seed)
        for prompt in shapes.prompts_for(scene)[:2]:
            inputs = adapter.prepare([scene.image], prompt, adapter.canvas_length)
            ours = adapter.generate(inputs, adapter.default_generation).answer_ids
            assert ours == own_generate(adapter, inputs, config), (seed, prompt)


def _killed(monkeypatch, out, hp, loss: str, at_step: int) -> None:
    """Run ``hp`` in ``out`` and stop it, as a kill would, when the step function ``loss`` is asked for
    ``at_step`` (counted as that function counts)."""
    real = getattr(recipe, loss)

    def stopping(runner, heads, hp_, step):
        if step == at_step:
            raise KeyboardInterrupt
        return real(runner, heads, hp_, step)

    monkeypatch.setattr(recipe, loss, stopping)
    with pytest.raises(KeyboardInterrupt):
        recipe.train(out, hp, progress=False)
    monkeypatch.setattr(recipe, loss, real)


def _same_final_weights(a, b) -> bool:
    a = transformers.DiffusionGemmaForBlockDiffusion.from_pretrained(a / "final").state_dict()
    b = transformers.DiffusionGemmaForBlockDiffusion.from_pretrained(b / "final").state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_killed_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    hp = recipe.HParams(vision_steps=0, steps=2, batch_images=1, warmup=1, eval_every=1000, ckpt_every=1)
    recipe.train(tmp_path / "straight", hp, progress=False)
    _killed(monkeypatch, tmp_path / "resumed", hp, "step_loss", 1)
    with pytest.raises(ValueError, match="other settings"):
        recipe.train(tmp_path / "resumed", hp.with_options(lr=1e-4), progress=False)
    recipe.train(tmp_path / "resumed", hp, progress=False)
    assert _same_final_weights(tmp_path / "straight", tmp_path / "resumed")


def test_the_sampler_setting_is_written_into_the_checkpoint_and_may_change_after_training(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # the suite runs on one thread; threads is recorded
    hp = recipe.HParams(vision_steps=0, steps=1, batch_images=1, warmup=1, eval_every=1000, ckpt_every=1,
                        entropy_bound=0.1)
    recipe.train(tmp_path / "run", hp, progress=False)
    final = tmp_path / "run" / "final"
    assert load_diffusion_gemma(str(final)).sampler["entropy_bound"] == 0.1
    before = (final / "model.safetensors").read_bytes()
    # a finished run rerun with another bound only rewrites its checkpoint folder
    summary = json.loads((final / "training.json").read_text())
    recipe.train(tmp_path / "run", hp.with_options(entropy_bound=1e-6, threads=2), progress=False)
    assert (final / "model.safetensors").read_bytes() == before
    # the record of the training is unchanged but for the bound
    summary["hparams"]["entropy_bound"] = 1e-6
    assert json.loads((final / "training.json").read_text()) == summary
    saved = json.loads((final / "generation_config.json").read_text())
    assert saved["sampler_config"]["entropy_bound"] == 1e-6
    assert load_diffusion_gemma(str(final)).sampler["entropy_bound"] == 1e-6


def test_stage_one_trains_the_vision_side_only_and_its_heads_can_be_read(tmp_path):
    hp = recipe.HParams(vision_steps=2, steps=0, batch_images=2, warmup=1, ckpt_every=1, object_shape=True,
                        lookup_layer=-1, caption_lookup=False)  # no lookup heads: their accuracies are read below
    recipe.train(tmp_path / "run", hp, progress=False)
    fresh = recipe.new_model(hp.seed).state_dict()
    trained = transformers.DiffusionGemmaForBlockDiffusion.from_pretrained(tmp_path / "run" / "final").state_dict()
    vision = [k for k in fresh if "vision" in k or "embed_vision" in k]
    language = [k for k in fresh if "language_model" in k or ".decoder." in k]
    assert vision and language
    assert all(torch.equal(fresh[k], trained[k]) for k in language)  # no language-model step yet
    assert any(not torch.equal(fresh[k], trained[k]) for k in vision)
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all("obj_shape" in r and 0 <= r["object_shape"] <= 1 and "diffusion" not in r for r in rows)
    acc = recipe.head_accuracy(tmp_path / "run" / "checkpoint.pt", scenes=2)
    assert acc["step"] == 2 and set(acc) == {"step", "vision", "embedded"} and "object_shape" in acc["embedded"]
    assert all(0.0 <= v <= 1.0 for part in ("vision", "embedded") for v in acc[part].values())


def test_the_object_shape_head_reads_one_label_per_object():
    scenes = [shapes.generate_scene(s, n_objects=n) for s, n in ((11, 3), (12, 1))]
    heads = recipe.AuxHeads(64, 8, object_shape=True)
    target = recipe.aux_targets(scenes)
    torch.manual_seed(0)
    embedded = torch.randn(len(target), 8)
    seen = []
    heads.objects.forward = lambda x: seen.append(x) or torch.zeros(len(x), len(shapes.SHAPES))
    loss, accuracy = heads.object_loss(embedded, target)
    (pooled,) = seen
    assert pooled.shape == (4, 8)  # 3 + 1 objects
    grid = recipe.GRID * recipe.GRID
    first = target[:grid]
    assert torch.allclose(pooled[0], embedded[:grid][first[:, 2] == 1].mean(0))
    assert float(loss) == pytest.approx(float(np.log(len(shapes.SHAPES))))


def test_the_lookup_head_reads_each_questions_last_word_at_its_block():
    hp = recipe.HParams(vision_steps=0, steps=1, batch_images=2, lookup_layer=1, caption_lookup=False)
    model, heads = recipe.model_and_heads(hp)
    runner = recipe.Runner(model, build.make_tokenizer(), build.make_processor())
    read, blocks = [], []
    heads.lookup.forward = lambda x: read.append(x.detach()) or torch.zeros(len(x), heads.lookup.out_features)
    model.model.encoder.language_model.layers[1].register_forward_hook(
        lambda _m, inputs, out: blocks.append((out[0] if isinstance(out, tuple) else out).detach()))
    calls = []
    real_encode = runner.encode
    runner.encode = lambda ids, soft: calls.append(ids) or real_encode(ids, soft)
    _, stats = recipe.step_loss(runner, heads, hp, 0)
    assert stats["lookup"] == pytest.approx(float(np.log(heads.lookup.out_features)))  # zero logits: uniform
    # one encoder pass per prompt kind, describe first (the decoder has its own blocks); the head saw the questions'
    assert len(calls) == len(blocks) == 4 and len(read) == 3
    questions = list(zip(calls, blocks))[1:]
    tok = build.make_tokenizer()
    for (ids, out), rows in zip(questions, read):
        words = [tok.convert_ids_to_tokens(row[-4:].tolist()) for row in ids]
        assert all(w[1:] == ["<turn|>", "<|turn>", "\u2581model"] for w in words)
        assert {w[0] for w in words} <= {"\u2581" + x for x in (*shapes.SHAPES, *shapes.COLOURS, "objects")}
        assert torch.equal(rows, out[:, -4])


def test_every_decoded_canvas_weighs_the_same_and_captions_may_get_more(monkeypatch):
    hp = recipe.HParams(vision_steps=0, steps=1, batch_images=2, canvases_per_prompt=1, caption_canvases=3,
                        lookup_layer=-1, caption_lookup=False)  # the denoising loss alone
    model, heads = recipe.model_and_heads(hp)
    runner = recipe.Runner(model, build.make_tokenizer(), build.make_processor())
    per_canvas = []  # the denoising loss of each decoded canvas, in order
    real_ce = recipe.F.cross_entropy

    def cross_entropy(logits, target, *args, **kwargs):
        loss = real_ce(logits, target, *args, **kwargs)
        if logits.shape[-1] == model.config.text_config.vocab_size and target.ndim == 1:
            per_canvas.append(loss.detach())
        return loss

    monkeypatch.setattr(recipe.F, "cross_entropy", cross_entropy)
    total, stats = recipe.step_loss(runner, heads, hp.with_options(aux_weight=0.0, aux_weight_final=0.0), 0)
    # 2 captions x 3 canvases, then 2 sequences x 1 canvas for each of the three question kinds
    assert len(per_canvas) == 3 + 3
    decoded = 2 * 3 + 3 * 2 * 1
    expected = sum(loss * (2 / decoded) for loss in per_canvas)
    assert float(stats["diffusion"]) == pytest.approx(float(expected))
    assert float(total.detach()) == pytest.approx(float(expected))


def test_a_checkpoint_older_than_a_setting_reads_as_that_setting_off():
    state = {"hparams": {"canvases_per_prompt": 2, "steps": 5}}
    saved = recipe._saved_settings(state)
    assert saved["caption_canvases"] == 2  # captions were decoded like every other prompt
    assert (saved["lookup_layer"], saved["caption_lookup"], saved["lm_aux_layer"]) == (-1, False, -1)
    assert recipe._saved_settings({"hparams": {"lookup_layer": 1}})["lookup_layer"] == 1


def test_the_lookup_heads_are_read_back_per_prompt_kind(tmp_path):
    hp = recipe.HParams(vision_steps=0, steps=1, batch_images=1, warmup=1, eval_every=1000, lookup_layer=0,
                        caption_lookup=True)
    recipe.train(tmp_path / "run", hp, progress=False)
    acc = recipe.head_accuracy(tmp_path / "run" / "checkpoint.pt", scenes=4)
    assert set(acc["lookup"]) == set(recipe.KINDS)
    assert all(v in (0.0, 0.25, 0.5, 0.75, 1.0) for v in acc["lookup"].values())  # shares of 4 scenes


def test_the_caption_heads_read_colour_and_shape_by_rank_with_none_past_the_last_object(tmp_path):
    scene = shapes.generate_scene(11, n_objects=2)
    heads = recipe.CaptionHeads(1)
    feats = torch.ones(1, 1)

    def confident(classes, order):
        rows = torch.full((recipe._RANKS, len(classes) + 1), -50.0)
        for k, word in enumerate(order):
            rows[k, classes.index(word) + 1] = 50.0
        rows[len(order):, 0] = 50.0  # no object at the remaining ranks
        return rows.reshape(-1)

    for head, classes, attr in ((heads.colour, shapes.COLOURS, "colour"), (heads.shape, shapes.SHAPES, "shape")):
        torch.nn.init.zeros_(head.weight)
        with torch.no_grad():
            head.bias.copy_(confident(classes, [getattr(o, attr) for o in scene.objects]))
    assert float(heads.loss(feats, [scene]).detach()) < 1e-6
    with torch.no_grad():  # right to left: every colour is named at the wrong rank
        heads.colour.bias.copy_(confident(shapes.COLOURS, [o.colour for o in reversed(scene.objects)]))
    assert float(heads.loss(feats, [scene]).detach()) > 10
    with pytest.raises(ValueError, match="caption_lookup needs lookup_layer"):
        recipe.train(tmp_path, recipe.HParams(lookup_layer=-1, caption_lookup=True), progress=False)


def test_auxiliary_targets_follow_the_objects():
    scene = shapes.generate_scene(11, n_objects=3)
    target = recipe.aux_targets([scene]).reshape(-1, 3).tolist()
    for rank, obj in enumerate(scene.objects, start=1):
        assert [shapes.COLOURS.index(obj.colour) + 1, shapes.SHAPES.index(obj.shape) + 1, rank] in target
    flat = np.array(target)
    assert (flat[:, 0] == 0).mean() > 0.5  # most tokens show background
    assert np.isin(flat[:, 2], [-100, 0, 1, 2, 3]).all()


# ----------------------------------------------------------------------------- the name, resolved to the folder

@pytest.fixture
def shipped(folder, monkeypatch):
    """The package's checkpoint folder, holding the freshly initialised model."""
    from diffusion_cam.models import diffusion_gemma_shapes

    monkeypatch.setattr(diffusion_gemma_shapes, "WEIGHTS_DIR", folder)
    return folder


def test_the_name_loads_the_folder_through_the_unchanged_adapter(shipped):
    import diffusion_cam as dc

    adapter = dc.load_model("diffusion-gemma-shapes")
    assert type(adapter) is DiffusionGemmaAdapter and adapter.name == "diffusion-gemma-shapes"
    assert type(adapter.model) is transformers.DiffusionGemmaForBlockDiffusion
    reference = transformers.DiffusionGemmaForBlockDiffusion.from_pretrained(shipped)
    assert all(torch.equal(a, b) for a, b in zip(adapter.model.state_dict().values(),
                                                  reference.state_dict().values()))


def test_by_name_and_by_folder_the_cli_writes_the_same_maps(shipped, tmp_path):
    from PIL import Image

    from diffusion_cam.cli import main

    image = tmp_path / "scene.png"
    Image.fromarray(shapes.generate_scene(10_000_000).image).save(image)
    written = []
    for k, model in enumerate(("diffusion-gemma-shapes", str(shipped))):
        out = tmp_path / f"out{k}"
        assert main(["explain", str(image), "--prompt", "how many objects", "--model", model, "--quiet",
                     "--out", str(out)]) == 0
        written.append((out / "maps.npz").read_bytes())
    assert written[0] == written[1]


def test_an_altered_or_unlisted_file_is_refused(folder, tmp_path, monkeypatch):
    import shutil

    import diffusion_cam as dc
    from diffusion_cam.adapters.builtin_checkpoints import verify_folder
    from diffusion_cam.errors import ModelLoadError
    from diffusion_cam.models import diffusion_gemma_shapes

    copy_ = tmp_path / "weights"
    shutil.copytree(folder, copy_)
    verify_folder(copy_)  # intact: nothing to say
    weights = copy_ / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="model.safetensors.*sha256"):
        verify_folder(copy_)
    monkeypatch.setattr(diffusion_gemma_shapes, "WEIGHTS_DIR", copy_)
    with pytest.raises(ModelLoadError, match="integrity"):
        dc.load_model("diffusion-gemma-shapes")
    (copy_ / "SHA256SUMS").unlink()
    with pytest.raises(ModelLoadError, match="SHA256SUMS"):
        dc.load_model("diffusion-gemma-shapes")


def test_without_shipped_weights_the_name_says_how_to_get_them(tmp_path, monkeypatch):
    import diffusion_cam as dc
    from diffusion_cam.errors import ModelLoadError
    from diffusion_cam.models import diffusion_gemma_shapes

    monkeypatch.setattr(diffusion_gemma_shapes, "WEIGHTS_DIR", tmp_path / "absent")
    with pytest.raises(ModelLoadError, match="train-shapes --arch diffusion-gemma"):
        dc.load_model("diffusion-gemma-shapes")


def test_switches_on_the_command_line_are_flags(monkeypatch):
    seen = []
    monkeypatch.setattr(recipe, "train", lambda out, hp, progress=True: seen.append(hp))
    recipe.main(["--out", "unused", "--no-object-shape", "--vision-steps", "3"])
    recipe.main(["--out", "unused"])
    assert (seen[0].object_shape, seen[0].vision_steps) == (False, 3)
    assert seen[1].object_shape is True and seen[1] == recipe.RECIPE
    read = []
    monkeypatch.setattr(recipe, "head_accuracy", lambda ck, scenes=16: read.append((ck, scenes)) or {})
    recipe.main(["--heads", "run/checkpoint.pt", "--head-scenes", "96"])
    recipe.main(["--heads", "run/checkpoint.pt"])
    assert read == [("run/checkpoint.pt", 96), ("run/checkpoint.pt", 16)]


def test_the_cli_passes_the_recipes_settings_and_refuses_them_for_the_other_arch(monkeypatch, capsys):
    from diffusion_cam.cli import main

    seen = []
    monkeypatch.setattr(recipe, "train", lambda out, hp, progress=True: seen.append((out, hp)))
    assert main(["train-shapes", "--arch", "diffusion-gemma", "--out", "run", "--steps", "2000", "--lookup-layer",
                 "2", "--no-caption-lookup", "--entropy-bound", "1e-6", "--seed", "4", "--no-progress"]) == 0
    assert main(["train-shapes", "--arch", "diffusion-gemma", "--out", "run", "--no-object-shape"]) == 0
    assert seen[0] == ("run", recipe.RECIPE.with_options(steps=2000, lookup_layer=2, caption_lookup=False,
                                                          entropy_bound=1e-6, seed=4))
    assert seen[0][1] != recipe.RECIPE
    assert seen[1][1] == recipe.RECIPE.with_options(object_shape=False)
    assert main(["train-shapes", "--out", "run", "--caption-canvases", "12"]) == 2
    assert "--caption-canvases applies to --arch diffusion-gemma only" in capsys.readouterr().err


def test_a_run_inside_stage_one_may_change_what_stage_one_never_reads(tmp_path, monkeypatch):
    """Stage 1's length, stage 2's settings and the encoder-block heads: the resumed run is the run planned with the
    new settings from the start, weight for weight."""
    planned = recipe.HParams(vision_steps=2, steps=1, batch_images=1, warmup=1, eval_every=1000, ckpt_every=1,
                             object_shape=True, lm_aux_layer=1, lookup_layer=0, caption_lookup=False, lr=3e-3)
    recipe.train(tmp_path / "planned", planned, progress=False)
    # planned otherwise, stopped after two of its stage-1 steps
    other = planned.with_options(vision_steps=4, steps=3, lm_aux_layer=-1, lookup_layer=-1, lr=2e-3)
    _killed(monkeypatch, tmp_path / "changed", other, "vision_step_loss", 2)
    recipe.train(tmp_path / "changed", planned, progress=False)
    assert _same_final_weights(tmp_path / "planned", tmp_path / "changed")
    with pytest.raises(ValueError, match="other settings"):  # past stage 1 they are part of the run
        recipe.train(tmp_path / "changed", planned.with_options(vision_steps=4), progress=False)
