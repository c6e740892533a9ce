"""Check the LLaDA-V adapter against LLaDA-V's own model code, with a tiny random configuration.

No released weights are needed (nor a GPU): the script builds a tiny random
checkpoint with LLaDA-V's own classes (its ``llava`` package: SigLIP tower
at the real 384 px / 14 px geometry, MLP projector, LLaDA decoder, anyres_max_4
tiling, newline column), saves it, and loads it back through the adapter,
which calls LLaDA-V's own ``load_pretrained_model`` and
``prepare_inputs_labels_for_multimodal``. It then generates with the
library's sampler, checks the image layout against the embeddings LLaDA-V's
code splices in, and explains the answer with Diffusion-CAM.

    git clone https://github.com/ML-GSAI/LLaDA-V
    pip install "transformers==4.46.3" einops accelerate   # LLaDA-V's code predates transformers 5
    python benchmarks/verify_llada_v.py --repo LLaDA-V/train --out /tmp/tiny-llada-v

The tokenizer is a stand-in (a word-level vocabulary of the right size with
LLaDA's special tokens at their ids): LLaDA's real tokenizer is not needed to
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


def build(out: Path) -> None:
    """A tiny random LLaDA-V checkpoint made with LLaDA-V's own classes."""
    from llava.model.language_model.llava_llada import LlavaLLaDAConfig, LlavaLLaDAModelLM
    from llava.model.multimodal_encoder.siglip_encoder import SigLipVisionConfig, SigLipVisionModel

    torch.manual_seed(0)
    tower = out / "siglip"
    SigLipVisionModel(SigLipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                         num_attention_heads=2, image_size=384, patch_size=14)
                      ).save_pretrained(tower, safe_serialization=True)
    config = LlavaLLaDAConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                              num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=8192,
                              rope_theta=500000.0, tie_word_embeddings=False)
    # the settings of LLaDA-V's fine-tuning script (train/scripts/llada_v_finetune.sh)
    config.update(dict(mm_vision_tower=str(tower), mm_projector_type="mlp2x_gelu", mm_hidden_size=32,
                       mm_vision_select_layer=-2, mm_vision_select_feature="patch", use_mm_proj=True,
                       image_aspect_ratio="anyres_max_4", image_grid_pinpoints="(1x1),...,(6x6)",
                       mm_patch_merge_type="spatial_unpad",
                       mm_tunable_parts="mm_vision_tower,mm_mlp_adapter,mm_language_model",
                       mm_use_im_start_end=False, mm_use_im_patch_token=False, tokenizer_model_max_length=8192,
                       tokenizer_padding_side="right", architectures=["LlavaLLaDAModelLM"]))
    model = LlavaLLaDAModelLM(config)
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


def check(out: Path, size: tuple[int, int]) -> None:
    import diffusion_cam as dc

    t0 = time.perf_counter()
    adapter = dc.load_model(str(out), trust_remote_code=True, dtype="float32")
    print(f"loaded {adapter.family} through LLaDA-V's load_pretrained_model in {time.perf_counter() - t0:.1f} s")
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
    assert grids[0].shape == (27, 27), "the base view of LLaDA-V is 27 x 27 SigLIP tokens"
    assert np.isfinite(exp.maps).all() and exp.maps.shape == (len(exp.tokens), size[1], size[0])
    assert not any(exp.degenerate), "every map should carry evidence"
    print(f"maps {exp.maps.shape}, every map non-empty: OK")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", required=True, help="LLaDA-V's train/ folder (holding its llava package)")
    ap.add_argument("--out", default="tiny-llada-v", help="where to write the tiny checkpoint")
    ap.add_argument("--size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"), help="test image size")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(args.repo).resolve()))
    warnings.filterwarnings("ignore")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    build(out)
    check(out, tuple(args.size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
