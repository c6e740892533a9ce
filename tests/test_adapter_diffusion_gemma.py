"""DiffusionGemma adapter on the real transformers class with a tiny random config (offline, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "DiffusionGemmaForBlockDiffusion"):
    pytest.skip("transformers without DiffusionGemma (needs >=5.13)", allow_module_level=True)

import diffusion_cam as dc
from diffusion_cam.adapters.diffusion_gemma import FINAL, DiffusionGemmaAdapter, image_grid_shape
from diffusion_cam.errors import InfeasibleStateError, PromptError

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<|image|>", "<|image>", "<image|>", "<|turn>", "<turn|>"]
WORDS = ["user", "model", "describe", "the", "image", "what", "is", "this", "a", "red", "square", "circle"]
IMG, BOI, EOI = 4, 5, 6
# Gemma-4's turn format, written for a word-level tokenizer (tokens separated by spaces)
TEMPLATE = (
    "<bos> {% for m in messages %}<|turn> {{ m['role'] }} {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|image|> {% else %}{{ c['text'] }} {% endif %}{% endfor %}<turn|> {% endfor %}"
    "{% if add_generation_prompt %}<|turn> model {% endif %}"
)


def tiny_parts(seed: int = 0, canvas: int = 8):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion, PreTrainedTokenizerFast
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>",
        extra_special_tokens={"image_token": "<|image|>", "boi_token": "<|image>", "eoi_token": "<image|>"},
    )
    tokenizer.chat_template = TEMPLATE
    text = dict(vocab_size=64, hidden_size=32, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
                num_key_value_heads=2, head_dim=16, global_head_dim=16, max_position_embeddings=512, pad_token_id=0,
                bos_token_id=2, eos_token_id=1, num_experts=4, top_k_experts=2, moe_intermediate_size=8,
                layer_types=["sliding_attention", "sliding_attention", "full_attention"], sliding_window=64,
                use_bidirectional_attention="vision")
    vision = dict(model_type="gemma4_vision", hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=2, head_dim=8, patch_size=4, pooling_kernel_size=2,
                  position_embedding_size=64)
    torch.manual_seed(seed)
    config = DiffusionGemmaConfig(text_config=text, vision_config=vision, image_token_id=IMG, boi_token_id=BOI,
                                  eoi_token_id=EOI, canvas_length=canvas)
    model = DiffusionGemmaForBlockDiffusion(config).eval()
    processor = Gemma4ImageProcessorPil(patch_size=4, pooling_kernel_size=2, max_soft_tokens=70)
    return model, tokenizer, processor


def tiny_adapter(seed: int = 0, **kw) -> DiffusionGemmaAdapter:
    model, tokenizer, processor = tiny_parts(seed)
    kw.setdefault("max_denoising_steps", 4)
    return DiffusionGemmaAdapter(model, tokenizer, processor, name="tiny-diffusion-gemma", **kw)


def image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def adapter():
    return tiny_adapter()


def test_grid_of_non_square_image(adapter):
    inputs = adapter.prepare([image(48, 72)], "describe the image", 8)
    (grid,) = adapter.image_grids(inputs, inputs.input_ids)
    # 48x72 px -> 48x80 (multiples of patch 4 x pooling 2 within 280 patches) -> 12x20 patches -> 6x10 tokens
    assert grid.shape == (6, 10)
    ids = inputs.input_ids
    assert all(int(ids[p]) == IMG for p in grid.positions)
    assert int(ids[grid.positions[0] - 1]) == BOI and int(ids[grid.positions[-1] + 1]) == EOI
    assert grid.region == (0.0, 0.0, 72.0, 48.0)


def test_grid_shape_from_position_ids():
    pos = torch.tensor([[x, y] for y in range(4) for x in range(6)] + [[-1, -1]] * 5)
    assert image_grid_shape(pos, 2) == (2, 3)


def test_multiple_images_get_their_own_grids(adapter):
    inputs = adapter.prepare([image(48, 72), image(64, 32, seed=1)], "what is this", 8)
    grids = adapter.image_grids(inputs, inputs.input_ids)
    assert [g.image_index for g in grids] == [0, 1]
    assert grids[0].shape == (6, 10)
    # 64x32 is upsampled to the 280-patch budget: factor sqrt(280*16/(64*32)) = 1.479 -> 94.7x47.3,
    # floored to multiples of 8 (patch 4 x pooling 2) -> 88x40 px -> 22x10 patches -> 11x5 tokens
    assert grids[1].shape == (11, 5)
    assert grids[1].region == (0.0, 0.0, 32.0, 64.0)
    assert grids[0].positions[-1] < grids[1].positions[0]


def test_gradients_reach_the_hooked_encoder_layer(adapter):
    from diffusion_cam.extract import Target, grid_gradients, target_scores

    inputs = adapter.prepare([image(48, 72)], "describe the image", 8)
    result = adapter.generate(inputs, adapter.default_generation)
    seq = result.steps[0].sequence
    targets = [Target(inputs.answer_start + i, result.answer_ids[i]) for i in range(3)]
    gg = grid_gradients(adapter, inputs, seq, [0, 1], lambda lg: target_scores(lg, targets, "logit"))
    for layer_grads in gg.grads:
        g = layer_grads[0]
        assert g.shape == (3, 6, 10, 32)
        assert torch.isfinite(g).all() and float(g.abs().sum()) > 0


def test_trajectory_replay_matches_generation(adapter):
    inputs = adapter.prepare([image(48, 72)], "describe the image", 8)
    result = adapter.generate(inputs, adapter.default_generation)
    assert result.steps and all(0 <= s < len(result.steps) for s in result.commit_step)
    # replaying the last step reproduces the logits whose argmax is the answer
    last = result.steps[-1].sequence
    with torch.no_grad():
        logits = adapter.forward(inputs, last[None])[0]
    canvas = logits[inputs.answer_slice].argmax(-1).tolist()
    assert canvas == result.answer_ids
    assert int(result.sequence[-1]) == FINAL


def test_each_committed_token_records_its_probability_at_the_step_that_committed_it(adapter):
    """A slot is committed at the first step from which its argmax stays; its recorded probability is the
    untempered softmax of that step's logits at that token (the confidence grounding reads)."""
    inputs = adapter.prepare([image(48, 72, seed=3)], "describe the image", 8)
    result = adapter.generate(inputs, adapter.default_generation)
    seen = 0
    for step in result.steps:
        assert len(step.probabilities) == len(step.committed) == len(step.committed_ids)
        if not step.committed:
            continue
        with torch.no_grad():
            logits = adapter.forward(inputs, step.sequence[None])[0][inputs.answer_slice].float()
        expected = torch.softmax(logits, -1)[step.committed, step.committed_ids]
        assert step.probabilities == pytest.approx(expected.tolist(), abs=1e-5)
        seen += len(step.committed)
    assert seen == len(result.answer_ids)


def test_logits_at_positions_equal_the_full_forward(adapter):
    inputs = adapter.prepare([image(48, 72)], "describe the image", 8)
    result = adapter.generate(inputs, adapter.default_generation)
    seq = result.steps[1].sequence[None]
    a0 = inputs.answer_start
    positions = [a0 + 5, a0, 3, a0 + 7]  # 3 lies in the prompt, outside the decoded canvas
    from diffusion_cam.testing import logits_both_ways

    full, part, shapes = logits_both_ways(adapter, inputs, seq, positions)
    assert [s[1] for s in shapes] == [adapter.canvas_length, 4]  # the decoder's head projected the four rows only
    assert part.shape == (1, 4, full.shape[-1])
    torch.testing.assert_close(part, full[:, positions])
    assert not part[0, 2].any() and part[0, 0].any()


def test_explain_is_deterministic_and_covers_both_states(adapter):
    img = image(48, 72)
    a = dc.DiffusionCAM(adapter, layer=1).explain(img, "describe the image", targets=[0, 1])
    b = dc.DiffusionCAM(adapter, layer=1).explain(img, "describe the image", targets=[0, 1])
    assert a.maps.shape == (2, 48, 72)
    assert a.answer == b.answer and a.token_ids == b.token_ids
    assert np.array_equal(a.maps, b.maps)
    assert np.array_equal(a.raw_grid_maps, b.raw_grid_maps)
    assert a.raw_grid_maps.shape == (2, 6, 10)
    final = dc.GradientCAM(adapter, layer=1, state="final").explain(img, "describe the image", targets=[0])
    assert final.raw_grid_maps.shape == (1, 6, 10)


def test_image_tokens_attend_bidirectionally(adapter):
    """The adapter passes the vision-bidirectional mask that transformers' plain encoder forward drops."""
    inputs = adapter.prepare([image(48, 72)], "describe the image", 8)
    (grid,) = adapter.image_grids(inputs, inputs.input_ids)
    prefix = inputs.input_ids[None, : inputs.answer_start]
    enc = adapter.model.model.encoder
    seen = []
    handle = enc.language_model.layers[0].register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    try:
        with torch.no_grad():
            adapter._encode(inputs, prefix)
            enc(input_ids=prefix, pixel_values=inputs.extras["pixel_values"],
                image_position_ids=inputs.extras["image_position_ids"], mm_token_type_ids=(prefix == IMG).long())
    finally:
        handle.remove()
    ours, plain = seen
    first, last = grid.positions[0], grid.positions[-1]
    assert torch.equal(ours[0, :first], plain[0, :first])  # text before the image: causal either way
    # the image's first token sees later image tokens only with the bidirectional mask
    assert not torch.allclose(ours[0, first], plain[0, first])
    assert torch.allclose(ours[0, last], plain[0, last], atol=1e-5)


def test_bfloat16_forward(adapter):
    bf = tiny_adapter()
    bf.to(dtype="bfloat16")
    exp = dc.GradientCAM(bf, layer=0).explain(image(48, 72), "describe the image", targets=[0])
    assert exp.maps.dtype == np.float32 and np.isfinite(exp.maps).all()


def test_multi_canvas_final_state_is_refused():
    ad = tiny_adapter()
    inputs = ad.prepare([image(48, 72)], "describe the image", 12)
    assert inputs.gen_length == 16  # two canvases of 8
    seq = inputs.input_ids.clone()
    seq[-1] = FINAL
    with pytest.raises(InfeasibleStateError, match="canvases"):
        ad.forward(inputs, seq[None])


def test_prompt_errors(adapter):
    with pytest.raises(PromptError):
        adapter.prepare([image(48, 72)], "  ", 8)
    with pytest.raises(PromptError):
        adapter.prepare([], "describe the image", 8)


def test_load_model_from_a_local_folder_and_refuse_pickles(tmp_path, monkeypatch):
    from diffusion_cam.errors import ModelLoadError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tokenizer, processor = tiny_parts()
    safe, unsafe = tmp_path / "safe", tmp_path / "unsafe"
    for folder in (safe, unsafe):
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        processor.save_pretrained(folder)
    # the same weights as a pickle checkpoint only
    for weights in unsafe.glob("*.safetensors"):
        weights.unlink()
    torch.save(model.state_dict(), unsafe / "pytorch_model.bin")
    loaded = dc.load_model(str(safe), max_denoising_steps=4)  # picked by config.json's model_type
    assert isinstance(loaded, DiffusionGemmaAdapter)
    direct = DiffusionGemmaAdapter(model, tokenizer, processor, max_denoising_steps=4)
    img = image(48, 72)
    a = dc.GradientCAM(loaded, layer=1).explain(img, "describe the image", targets=[0])
    b = dc.GradientCAM(direct, layer=1).explain(img, "describe the image", targets=[0])
    # from_pretrained sets the model up through other code paths (kernel choices), so the numbers agree
    # to float rounding rather than bit for bit; each adapter on its own is bit-deterministic
    assert a.answer == b.answer and np.allclose(a.maps, b.maps, atol=1e-4)
    with pytest.raises(ModelLoadError, match="allow_pickle"):
        dc.load_model(str(unsafe))
    assert isinstance(dc.load_model(str(unsafe), allow_pickle=True), DiffusionGemmaAdapter)
    with pytest.raises(ModelLoadError, match="not available locally"):
        dc.load_model("google/diffusiongemma-26B-A4B-it")
