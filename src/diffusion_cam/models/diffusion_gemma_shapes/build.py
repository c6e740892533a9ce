"""The parts of ``diffusion-gemma-shapes`` before training: config, tokenizer, image processor.

Everything here is stock transformers / tokenizers: a word-level vocabulary
over the Shapes world's words written SentencePiece-style (``▁red``), so that
a single token decodes with its leading space as Gemma's own tokenizer does,
and Gemma-4's turn format as the chat template.
"""

from __future__ import annotations

from typing import Any

from ...datasets import shapes as sw

SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>", "<|image|>", "<|image>", "<image|>", "<|turn>", "<turn|>")
PAD, EOS, BOS, UNK, IMAGE, BOI, EOI = range(7)
ROLES = ("user", "model")
SPACE = "\u2581"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|turn>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|image|>{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<turn|>\n{% endfor %}{% if add_generation_prompt %}<|turn>model\n{% endif %}"
)

#: soft-token grid side for a 96 x 96 scene: patch 3 x pooling 2 -> 16 x 16
PATCH, POOLING, MAX_SOFT_TOKENS = 3, 2, 280
CANVAS_LENGTH = 12  # the longest caption is 11 words, plus <eos>


def vocabulary() -> dict[str, int]:
    words = list(ROLES) + list(sw.WORDS)
    return {t: i for i, t in enumerate(list(SPECIALS) + [SPACE + w for w in words])}


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(vocab=vocabulary(), unk_token="<unk>"))
    # split on white space, then mark every word as word-initial (the template's newlines vanish)
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="always")]
    )
    backend.decoder = decoders.Replace(SPACE, " ")
    backend.add_special_tokens(list(SPECIALS))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>",
        extra_special_tokens={"image_token": "<|image|>", "boi_token": "<|image>", "eoi_token": "<image|>"},
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def make_processor():
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    return Gemma4ImageProcessorPil(patch_size=PATCH, pooling_kernel_size=POOLING, max_soft_tokens=MAX_SOFT_TOKENS)


def make_config(**overrides: Any):
    from transformers import DiffusionGemmaConfig

    n_vocab = len(vocabulary())
    text = dict(vocab_size=n_vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=2, head_dim=32, global_head_dim=32,
                max_position_embeddings=512, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
                num_experts=4, top_k_experts=2, moe_intermediate_size=64, sliding_window=512,
                layer_types=["full_attention"] * 4, use_bidirectional_attention="vision",
                final_logit_softcapping=30.0)
    vision = dict(model_type="gemma4_vision", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, head_dim=16, patch_size=PATCH,
                  pooling_kernel_size=POOLING, position_embedding_size=128)
    text.update(overrides.pop("text", {}))
    vision.update(overrides.pop("vision", {}))
    return DiffusionGemmaConfig(text_config=text, vision_config=vision, image_token_id=IMAGE, boi_token_id=BOI,
                                eoi_token_id=EOI, canvas_length=CANVAS_LENGTH, **overrides)
