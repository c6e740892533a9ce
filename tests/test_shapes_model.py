"""The built-in shapes model: interface, bidirectionality, image dependence, I/O."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion_cam.datasets import shapes as sw
from diffusion_cam.models.shapes_tiny import (
    WEIGHTS_DIR,
    ShapesTinyConfig,
    ShapesTinyModel,
    ShapesTokenizer,
    load_pretrained,
    save_pretrained,
)
from diffusion_cam.models.shapes_tiny import train as tr

GEN = 12


@pytest.fixture(scope="module")
def tok() -> ShapesTokenizer:
    return ShapesTokenizer()


@pytest.fixture(scope="module")
def model(tok) -> ShapesTinyModel:
    torch.manual_seed(0)
    cfg = ShapesTinyConfig(vocab_size=tok.vocab_size, tokenizer=tok.to_dict(), d_model=32, vision_dim=32,
                           stem_channels=(8, 16, 32), stem_blocks=(0, 0, 1), n_layers=4, vision_layers=1, n_heads=2, vision_heads=2)
    m = ShapesTinyModel(cfg).eval()
    # Non-trivial positional tables, so position-dependent checks are meaningful.
    with torch.no_grad():
        m.pos.normal_(0, 0.5)
        m.vision_pos.normal_(0, 0.5)
    return m


def _inputs(tok, model, prompt="describe the image", seeds=(1,)):
    ids, start = tok.build_input_ids(prompt, GEN)
    ids = ids.unsqueeze(0).repeat(len(seeds), 1)
    pix = model.preprocess(np.stack([sw.generate_scene(s).image for s in seeds]))
    return ids, start, pix


def test_tokenizer_round_trip(tok):
    for s in sw.generate_scenes(0, 20):
        for p in sw.prompts_for(s):
            assert tok.decode(tok.encode(p)) == p
            a = sw.answer(s, p)
            assert tok.decode(tok.answer_canvas(a, GEN)) == a
    assert len(tok.vocab) == len(set(tok.vocab))
    ids = {tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id, tok.image_id, tok.sep_id}
    assert len(ids) == 6
    assert ShapesTokenizer.from_dict(json.loads(json.dumps(tok.to_dict()))).vocab == tok.vocab


def test_tokenizer_unknown_word(tok):
    with pytest.raises(ValueError, match="'zebra'"):
        tok.encode("what color is the zebra")
    with pytest.raises(ValueError, match="'zebra'"):
        tok.build_input_ids("what color is the zebra", GEN)


def test_build_input_ids_layout(tok):
    ids, start = tok.build_input_ids("how many objects", GEN)
    assert ids.dtype == torch.long and ids.ndim == 1
    assert ids[0] == tok.bos_id
    assert int((ids == tok.image_id).sum()) == 144
    assert ids[start - 1] == tok.sep_id
    assert len(ids) == start + GEN and bool((ids[start:] == tok.mask_id).all())
    assert tok.decode(ids[145:start]) == "how many objects"


def test_forward_shapes(tok, model):
    ids, _, pix = _inputs(tok, model, seeds=(1, 2))
    assert pix.shape == (2, 3, 96, 96) and pix.dtype == torch.float32
    with torch.no_grad():
        logits = model(ids, pix)
    assert logits.shape == (2, ids.shape[1], tok.vocab_size)
    assert torch.isfinite(logits).all()
    assert model.grid_size == (12, 12)
    assert len(model.blocks) >= 4


def test_blocks_return_tensors(tok, model):
    ids, _, pix = _inputs(tok, model)
    seen = []
    hooks = [b.register_forward_hook(lambda mod, inp, out: seen.append(out)) for b in model.blocks]
    try:
        with torch.no_grad():
            model(ids, pix)
    finally:
        for h in hooks:
            h.remove()
    assert len(seen) == len(model.blocks)
    assert all(isinstance(o, torch.Tensor) and o.shape == (1, ids.shape[1], model.config.d_model) for o in seen)


def test_bidirectional(tok, model):
    ids, start, pix = _inputs(tok, model)
    other = ids.clone()
    other[0, -1] = tok.encode("red")[0]
    with torch.no_grad():
        a = model(ids, pix)[0, start]
        b = model(other, pix)[0, start]
    assert not torch.allclose(a, b)


def test_image_dependence_and_gradient(tok, model):
    ids, start, pix = _inputs(tok, model, seeds=(1, 2))
    with torch.no_grad():
        logits = model(ids, pix)
    assert not torch.allclose(logits[0, start:], logits[1, start:])
    # Gradients of an answer logit reach the image-token hidden states of a middle block.
    store = {}
    h = model.blocks[1].register_forward_hook(lambda mod, inp, out: store.__setitem__("a", out))
    try:
        out = model(ids[:1], pix[:1])
    finally:
        h.remove()
    g = torch.autograd.grad(out[0, start, tok.eos_id], store["a"])[0]
    img = (ids[0] == tok.image_id).nonzero().squeeze(1)
    assert g[0, img].abs().sum() > 0


def test_image_count_checked(tok, model):
    ids, _, pix = _inputs(tok, model)
    with pytest.raises(ValueError, match="144"):
        model(torch.cat([ids[:, :1], ids[:, 2:]], dim=1), pix)


def test_preprocess_accepts_numpy_and_tensor(model):
    img = sw.generate_scene(3).image
    a = model.preprocess(img)
    b = model.preprocess(torch.from_numpy(img[None]))
    assert torch.equal(a, b)
    with pytest.raises(ValueError):
        model.preprocess(np.zeros((2, 64, 64, 3), np.uint8))


def test_save_load_round_trip(tmp_path, tok, model):
    save_pretrained(model, tmp_path)
    doc = json.loads((tmp_path / "config.json").read_text())
    assert doc["tokenizer"]["vocab"] == tok.vocab and len(doc["weights_sha256"]) == 64
    loaded = load_pretrained(tmp_path)
    assert ShapesTinyConfig.from_dict(doc).to_dict() == model.config.to_dict()
    ids, _, pix = _inputs(tok, model)
    with torch.no_grad():
        assert torch.equal(model(ids, pix), loaded(ids, pix))
    with open(tmp_path / "model.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(ValueError, match="sha256"):
        load_pretrained(tmp_path)


def test_projector_aux_follows_weights(tmp_path, tok, model):
    assert len(model.projected_aux_logits(torch.zeros(1, 144, model.config.d_model))) == 3
    cfg = ShapesTinyConfig.from_dict({**model.config.to_dict(), "projector_aux": False})
    plain = ShapesTinyModel(cfg)
    assert plain.proj_aux_head is None and plain.projected_aux_logits(torch.zeros(1, 144, 32)) == []
    save_pretrained(plain, tmp_path)
    doc = json.loads((tmp_path / "config.json").read_text())
    doc.pop("projector_aux")
    (tmp_path / "config.json").write_text(json.dumps(doc))
    assert load_pretrained(tmp_path).proj_aux_head is None


def test_padding_is_ignored(tok, model):
    ids, start, pix = _inputs(tok, model)
    padded = torch.cat([ids, torch.full((1, 3), tok.pad_id)], dim=1)
    with torch.no_grad():
        a = model(ids, pix)
        b = model(padded, pix)[:, : ids.shape[1]]
    assert torch.allclose(a, b, atol=1e-5)


def test_training_batch_and_targets(tok):
    pool = tr.ScenePool.generate(0, 8)
    rng = np.random.default_rng(0)
    idx = np.arange(8)
    flip = np.array([False, True] * 4)
    ids, starts, rows, kinds = tr.build_sequences(tok, pool, idx, flip, ["describe", "color", "shape", "count"], rng, GEN)
    assert ids.shape[0] == 32
    scenes = sw.generate_scenes(0, 8)
    for s in range(ids.shape[0]):
        sc = scenes[int(rows[s])]
        text = tok.decode(ids[s, starts[s]:])
        prompt = tok.decode(ids[s, 145 : starts[s] - 1])
        if tr.PROMPT_KINDS[int(kinds[s])] == "describe" and flip[int(rows[s])]:
            want = " and ".join(f"a {o.colour} {o.shape}" for o in reversed(sc.objects))
        else:
            want = sw.answer(sc, prompt)
        assert text == want
    aux = tr.aux_targets(pool, idx, flip, 12)
    assert aux.shape == (8, 144, 3)
    # A mirrored scene's rank targets count from the other side.
    i = 1
    n = sc_n = scenes[i].n_objects
    ranks = set(aux[i, :, 2].tolist()) - {0, -100}
    assert ranks <= set(range(1, sc_n + 1)) and n >= 1


def test_greedy_generate_runs(tok, model):
    imgs = np.stack([sw.generate_scene(s).image for s in (1, 2, 3)])
    out = tr.greedy_generate(model, tok, imgs, ["how many objects", "describe the image", "what shape is red"], GEN)
    assert len(out) == 3 and all(isinstance(o, str) for o in out)


def test_shipped_weights():
    if not (WEIGHTS_DIR / "model.safetensors").is_file():
        pytest.skip(f"trained weights not shipped yet ({WEIGHTS_DIR} has no model.safetensors)")
    m = load_pretrained(WEIGHTS_DIR)
    assert m.grid_size == (12, 12)
    total = sum(p.stat().st_size for p in WEIGHTS_DIR.iterdir())
    assert total < 20 * 2**20
    t = ShapesTokenizer.from_dict(m.config.tokenizer)
    s = sw.generate_scene(424242)
    pred = tr.greedy_generate(m, t, s.image[None], ["how many objects"], m.config.gen_length)
    assert pred[0] == sw.answer(s, "how many objects")


def _tiny_config(tok) -> ShapesTinyConfig:
    return ShapesTinyConfig(vocab_size=tok.vocab_size, tokenizer=tok.to_dict(), d_model=32, vision_dim=32,
                            stem_channels=(8, 16, 32), stem_blocks=(0, 0, 1), n_layers=2, vision_layers=1,
                            n_heads=2, vision_heads=2, word_grounding=True)


def test_killed_training_resumes_to_the_same_weights(tmp_path, tok):
    from safetensors.torch import load_file

    common = dict(steps=3, batch_size=2, pool_size=16, vision_warmup=1, vision_batch_size=2, eval_every=0,
                  final_eval_per_kind=1, ckpt_every=1, progress=False, threads=1, curriculum="")
    tr.train(tmp_path / "straight", config=_tiny_config(tok), **common)
    tr.train(tmp_path / "killed", config=_tiny_config(tok), stop_at=2, **common)  # stops with a checkpoint
    assert json.loads((tmp_path / "killed" / "summary.json").read_text())["steps"] == 2
    tr.train(tmp_path / "killed", config=_tiny_config(tok), **common)
    a = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and "ground_gain" in a
    assert all(torch.equal(a[k], b[k]) for k in a)
    # another setting on the same directory is refused instead of silently mixing two runs
    with pytest.raises(ValueError, match="other settings"):
        tr.train(tmp_path / "killed", config=_tiny_config(tok), **{**common, "lr": 1e-4})


def test_questions_of_one_image_ask_about_different_objects(tok):
    pool = tr.ScenePool.generate(3, 64)
    idx = np.flatnonzero(pool.n_obj == 3)[:6]
    ids, starts, rows, _ = tr.build_sequences(tok, pool, idx, np.zeros(len(idx), bool), ["color"] * 3 + ["shape"] * 3,
                                              np.random.default_rng(0), GEN)
    prompts = [tok.decode(ids[s, 145 : starts[s] - 1]) for s in range(ids.shape[0])]
    for r in range(len(idx)):
        mine = [p for p, row in zip(prompts, rows.tolist()) if row == r]
        assert len(set(mine[:3])) == 3 and len(set(mine[3:])) == 3  # three objects, three distinct questions


def test_text_grounding_gives_a_question_word_its_patches_vector(tok):
    with pytest.raises(ValueError, match="needs word_grounding"):
        ShapesTinyModel(ShapesTinyConfig(vocab_size=tok.vocab_size, tokenizer=tok.to_dict(), text_grounding=True,
                                         word_grounding=False))
    torch.manual_seed(0)
    plain = ShapesTinyModel(_tiny_config(tok)).eval()
    grounded = ShapesTinyModel(ShapesTinyConfig(**{**_tiny_config(tok).to_dict(), "text_grounding": True})).eval()
    grounded.load_state_dict(plain.state_dict())
    ids, _ = tok.build_input_ids("what color is the circle", GEN)
    ids = ids.unsqueeze(0)
    img = torch.zeros(1, plain.config.n_image_tokens, plain.config.d_model)
    with torch.no_grad():
        diff = grounded.embed_inputs(ids, img) - plain.embed_inputs(ids, img)
    word = ids[0] == tok.token_to_id["circle"]
    unit = torch.nn.functional.normalize(plain.embed.weight[tok.token_to_id["circle"]], dim=0)
    torch.testing.assert_close(diff[0, word][0], plain.ground_gain.detach() * unit)
    assert diff[0, ~word].abs().max() == 0  # every other token, image tokens included, is unchanged


def test_focus_shapes_draws_scenes_that_hold_them(tmp_path, tok, monkeypatch):
    seen = []
    real = tr.build_sequences

    def spy(tok_, pool, idx, flip, kinds, rng, gen):
        seen.append(([{sw.SHAPES[k] for k in pool.shape[i] if k >= 0} for i in idx], list(kinds)))
        return real(tok_, pool, idx, flip, kinds, rng, gen)

    monkeypatch.setattr(tr, "build_sequences", spy)
    common = dict(steps=2, batch_size=2, pool_size=64, vision_warmup=0, eval_every=0, final_eval_per_kind=1,
                  ckpt_every=1, progress=False, threads=1, curriculum="", focus_start=0, focus_steps=2,
                  focus_batch_size=2, focus_shapes="circle,cross")
    tr.train(tmp_path / "focus", config=_tiny_config(tok), **common)
    state = torch.load(tmp_path / "focus" / "checkpoint" / "train_state.pt", weights_only=True)
    assert state["hparams"]["focus_shapes"] == "circle,cross"
    with pytest.raises(ValueError, match="unknown focus shape\\(s\\) star; choose from circle"):
        tr.train(tmp_path / "bad", config=_tiny_config(tok), **{**common, "focus_shapes": "circle,star"})
    assert len(seen) == 2
    for shapes_of_scenes, kinds in seen:
        assert kinds == ["color"] * 3
        assert all({"circle", "cross"} <= held for held in shapes_of_scenes)


def test_the_recipe_chains_nine_stages_and_skips_finished_ones(tmp_path, monkeypatch):
    calls = []

    def fake_train(out_dir, config, init_from, **settings):
        calls.append((Path(out_dir).name, config, init_from, settings))
        (Path(out_dir) / "final").mkdir(parents=True)
        (Path(out_dir) / "summary.json").write_text(json.dumps({"stage": Path(out_dir).name}))
        return {"stage": Path(out_dir).name}

    monkeypatch.setattr(tr, "train", fake_train)
    assert tr.train_recipe(tmp_path, stages=3, threads=1) == {"stage": "stage-3"}
    assert [c[0] for c in calls] == ["stage-1", "stage-2", "stage-3"]
    assert calls[0][2] is None and calls[1][2] == tmp_path / "stage-1" / "final"
    assert not calls[0][1].projector_aux and not calls[0][1].word_grounding
    assert calls[1][1].projector_aux and not calls[1][1].word_grounding and calls[2][1].word_grounding
    assert calls[0][3]["stop_at"] == 800 and all(c[3]["threads"] == 1 for c in calls)
    calls.clear()
    assert tr.train_recipe(tmp_path, threads=1) == {"stage": "stage-9"}  # resumes after the finished three
    assert [c[0] for c in calls] == [f"stage-{n}" for n in range(4, 10)]
    assert calls[0][2] == tmp_path / "stage-3" / "final"
    last = calls[-1]
    assert last[1].text_grounding and last[3]["focus_shapes"] == "circle,cross" and last[3]["focus_start"] == 0
    assert sum(s.get("steps", 1800) if "stop_at" not in s else s["stop_at"] for _, s in tr.RECIPE) == 6700


def test_train_shapes_cli_refuses_a_stage_count_outside_the_recipe(capsys):
    from diffusion_cam.cli import main

    assert main(["train-shapes", "--out", "unused", "--stages", "10"]) == 2
    assert "--stages must be between 1 and 9" in capsys.readouterr().err
