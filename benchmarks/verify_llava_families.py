"""Check the LLaDA-V and LaViDa adapters against the families' own model code, with tiny random configurations.

No released weights are needed (nor a GPU): the script builds a tiny random
checkpoint with the family's own classes (its ``llava`` package: a SigLIP
tower at the real 384 px / 14 px geometry, the MLP projector, the LLaDA
decoder, the family's anyres tiling with its newline column; LaViDa's 2 x 2
pooling and Prefix-DLM), saves it, and loads it back through the adapter,
which calls the family's own ``load_pretrained_model`` and
``prepare_inputs_labels_for_multimodal``. It then generates with the
library's sampler, checks the image layout against the embeddings the
family's code splices in, and explains the answer with Diffusion-CAM.

    git clone https://github.com/ML-GSAI/LLaDA-V && git clone https://github.com/jacklishufan/LaViDa
    pip install "transformers==4.46.3" einops accelerate   # their code predates transformers 5
    pip install --no-deps deepspeed hjson ninja py-cpuinfo msgpack   # LaViDa imports deepspeed
    python benchmarks/verify_llava_families.py --family llada-v --repo LLaDA-V/train --out /tmp/tiny-llada-v
    python benchmarks/verify_llava_families.py --family lavida --repo LaViDa --out /tmp/tiny-lavida

The tokenizer is a stand-in (a word-level vocabulary of the right size with
LLaDA's special tokens at their ids): the real tokenizer is not needed to
check the image side, the forward and the gradients.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

VOCAB = 126464
SPECIAL = {126080: "<|startoftext|>", 126081: "<|endoftext|>", 126336: "<|mdm_mask|>", 126346: "<|start_header_id|>",
           126347: "<|end_header_id|>", 126348: "<|eot_id|>", 0: "[PAD]", 1: "[UNK]"}
WORDS = ("a the and is what describe image this you are helpful language vision assistant able to understand "
         "visual content that user provides assist with variety of tasks using natural . , ?").split()


LLAVA_COMMON = dict(mm_projector_type="mlp2x_gelu", mm_hidden_size=32, use_mm_proj=True, mm_vision_select_layer=-2,
                   mm_vision_select_feature="patch", mm_patch_merge_type="spatial_unpad",
                   mm_tunable_parts="mm_vision_tower,mm_mlp_adapter,mm_language_model", mm_use_im_start_end=False,
                   mm_use_im_patch_token=False, tokenizer_model_max_length=8192, tokenizer_padding_side="right")


def _llada_v(tower: Path):
    from llava.model.language_model.llava_llada import LlavaLLaDAConfig, LlavaLLaDAModelLM

    config = LlavaLLaDAConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                              num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=8192,
                              rope_theta=500000.0, tie_word_embeddings=False)
    # the image settings of LLaDA-V's fine-tuning script (train/scripts/llada_v_finetune.sh)
    config.update(dict(LLAVA_COMMON, mm_vision_tower=str(tower), image_aspect_ratio="anyres_max_4",
                       image_grid_pinpoints="(1x1),...,(6x6)", architectures=["LlavaLLaDAModelLM"]))
    return LlavaLLaDAModelLM(config)


def _lavida(tower: Path):
    from llava.model.language_model.llava_llada import LlavaLladaConfig, LlavaLladaForMaskedDiffusion

    # LLaDA-8B's OLMo-style fields, scaled down
    config = LlavaLladaConfig(d_model=64, n_heads=4, n_kv_heads=4, n_layers=3, mlp_hidden_size=128,
                              activation_type="silu", block_type="llama", rope=True, rope_theta=500000.0,
                              vocab_size=VOCAB, embedding_size=VOCAB, max_sequence_length=8192, include_bias=False,
                              include_qkv_bias=False, layer_norm_type="rms", rms_norm_eps=1e-5, weight_tying=False,
                              init_device="cpu", mask_token_id=126336, pad_token_id=126081, eos_token_id=126081,
                              attention_layer_norm=False, scale_logits=False)
    # LaViDa's image settings: anyres over five pinpoints, every view pooled 2 x 2 (bilinear)
    config.update(dict(LLAVA_COMMON, mm_vision_tower=str(tower), image_aspect_ratio="anyres",
                       image_grid_pinpoints=[[384, 768], [768, 384], [768, 768], [1152, 384], [384, 1152]],
                       mm_spatial_pool_mode="bilinear", mm_spatial_pool_stride=2, resampler_type=None,
                       vision_tower_pretrained="", architectures=["LlavaLladaForMaskedDiffusion"]))
    vision = dict(mm_vision_tower=str(tower), mm_resampler_type=None, mm_projector_type="mlp2x_gelu",
                  mm_hidden_size=32, use_mm_proj=True)
    return LlavaLladaForMaskedDiffusion(config, vision_kwargs=vision, init_params=True)


FAMILIES = {"llada-v": _llada_v, "lavida": _lavida}


def build(family: str, out: Path) -> None:
    """A tiny random checkpoint made with the family's own classes."""
    from llava.model.multimodal_encoder.siglip_encoder import SigLipVisionConfig, SigLipVisionModel

    torch.manual_seed(0)
    tower = out / "siglip"  # the family's tower builder recognises SigLIP by this word in the path
    SigLipVisionModel(SigLipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                         num_attention_heads=2, image_size=384, patch_size=14)
                      ).save_pretrained(tower, safe_serialization=True)
    model = FAMILIES[family](tower)
    with torch.no_grad():  # LLaVA creates the newline embedding with torch.empty; a trained checkpoint holds values
        model.get_model().image_newline.normal_(0, 0.02)
    model.save_pretrained(out, safe_serialization=True)
    vocab = [SPECIAL.get(i, f"[unused{i}]") for i in range(VOCAB)]
    for k, word in enumerate(dict.fromkeys(WORDS)):
        vocab[10 + k] = word
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "BertTokenizer", "do_lower_case": True, "unk_token": "[UNK]", "pad_token": "[PAD]",
        "additional_special_tokens": [v for k, v in SPECIAL.items() if k >= 126000], "model_max_length": 8192}))


def check(family: str, out: Path, size: tuple[int, int]) -> None:
    import diffusion_cam as dc
    from diffusion_cam.adapters.config_adapter import FAMILIES_DIR

    # the shipped family file, with the vision tower pointed at the tiny one (LaViDa's names a hub id)
    spec = json.loads((FAMILIES_DIR / f"{family.replace('-', '_')}.json").read_text())
    if "vision_kwargs" in spec.get("loader_kwargs", {}):
        spec["loader_kwargs"]["vision_kwargs"].update(mm_vision_tower=str(out / "siglip"), mm_hidden_size=32)
    family_file = out / "family.json"
    family_file.write_text(json.dumps(spec))
    t0 = time.perf_counter()
    adapter = dc.load_model(str(family_file), checkpoint=str(out), trust_remote_code=True, dtype="float32")
    print(f"loaded {adapter.family} through the family's load_pretrained_model in {time.perf_counter() - t0:.1f} s")
    scene = dc.example_scenes()[2]
    from PIL import Image

    image = np.asarray(Image.open(scene.image).convert("RGB").resize(size))
    method = dc.DiffusionCAM(adapter, layer=1,
                             generation=replace(adapter.default_generation, gen_length=8, steps=8, block_length=8))
    t0 = time.perf_counter()
    exp = method.explain(image, "describe the image", faithfulness=False)
    print(f"generated and explained {len(exp.tokens)} tokens in {time.perf_counter() - t0:.1f} s")
    run = method.generate(image, "describe the image")
    grids = adapter.image_grids(run.inputs, run.generation.sequence)
    print(f"sequence of {run.inputs.input_ids.numel()} positions; image grids "
          + ", ".join(f"{g.shape[0]}x{g.shape[1]}" for g in grids))
    base = {"llada-v": (27, 27), "lavida": (14, 14)}[family]  # LaViDa pools every view 2 x 2
    assert grids[0].shape == base, f"the base view should be {base[0]} x {base[1]} tokens"
    assert np.isfinite(exp.maps).all() and exp.maps.shape == (len(exp.tokens), size[1], size[0])
    assert not any(exp.degenerate), "every map should carry evidence"
    print(f"maps {exp.maps.shape}, every map non-empty: OK")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", choices=sorted(FAMILIES), required=True)
    ap.add_argument("--repo", required=True,
                    help="the folder holding the family's llava package (LLaDA-V: its train/ folder; LaViDa: the clone)")
    ap.add_argument("--out", default=None, help="where to write the tiny checkpoint (default: tiny-FAMILY)")
    ap.add_argument("--size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"), help="test image size")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(args.repo).resolve()))
    warnings.filterwarnings("ignore")
    out = Path(args.out or f"tiny-{args.family}")
    out.mkdir(parents=True, exist_ok=True)
    build(args.family, out)
    check(args.family, out, tuple(args.size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
