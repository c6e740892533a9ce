"""Check the LLaDA-V, LaViDa, MMaDA, Lumina-DiMOO and Dimple adapters on the families' own code, with tiny random weights.

No released weights are needed (nor a GPU). For one family the script builds
a tiny random checkpoint with the family's own classes, at the real image
geometry:

* LLaDA-V and LaViDa: their ``llava`` package (a SigLIP tower at 384 px /
  14 px, the MLP projector, the LLaDA decoder, the anyres tiling with its
  newline column; LaViDa's 2 x 2 pooling and Prefix-DLM);
* MMaDA: its ``models`` package (MAGVIT-v2 at its real architecture, so
  512 px give 32 x 32 codes, and the LLaDA decoder with the code vocabulary);
* Lumina-DiMOO: its ``model`` package (the LLaDA decoder with its
  multimodal forward) and a diffusers VQ-VAE downsampling 16 times;
* Dimple: its remote code (``training-code/models``: the Qwen2-VL-style
  vision tower, the Dream decoder, its image processor and processor),
  copied next to the tiny weights as a hub checkpoint holds it, with a
  byte-level stand-in for the Qwen2 tokenizer.

It saves the checkpoint, loads it back through the adapter (which calls the
family's own loader and, for the LLaVA families, its
``prepare_inputs_labels_for_multimodal``), generates with the library's
sampler, checks the image layout against what the family's code produces,
and explains the answer with Diffusion-CAM: every map must be finite and
non-empty.

Each family runs in its own environment with transformers 4.46.3; ``--help``
prints the install lines of every family (``diffusion_cam.adapters.recipes``,
also in docs/models.md). Then:

    python benchmarks/verify_family_code.py --family llada-v --repo LLaDA-V/train
    python benchmarks/verify_family_code.py --family lavida --repo LaViDa
    python benchmarks/verify_family_code.py --family mmada --repo MMaDA
    python benchmarks/verify_family_code.py --family lumina-dimoo --repo Lumina-DiMOO
    python benchmarks/verify_family_code.py --family dimple --repo Dimple

The tokenizers are stand-ins (a word-level vocabulary of the right size with
LLaDA's special tokens at their ids; for Dimple a byte-level one with
Qwen2's): the real tokenizers are not needed to check the image side, the
forward and the gradients.
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

REPO = Path(".")  # the family's repository (set from --repo)
VOCAB = 126464  # LLaDA's text vocabulary
SPECIAL = {126080: "<|startoftext|>", 126081: "<|endoftext|>", 126336: "<|mdm_mask|>", 126346: "<|start_header_id|>",
           126347: "<|end_header_id|>", 126348: "<|eot_id|>", 126084: "<|soi|>", 126085: "<|eoi|>", 126089: "<|mmu|>",
           0: "[PAD]", 1: "[UNK]"}
WORDS = ("a the and is what describe image this you are helpful language vision assistant able to understand "
         "visual content that user provides assist with variety of tasks using natural . , ?").split()
# LLaDA-8B's decoder, scaled down (the OLMo-style fields LaViDa's and MMaDA's copies read)
TINY_LLADA = dict(d_model=64, n_heads=4, n_kv_heads=4, n_layers=3, mlp_hidden_size=128, activation_type="silu",
                  block_type="llama", rope=True, rope_theta=500000.0, include_bias=False, include_qkv_bias=False,
                  layer_norm_type="rms", rms_norm_eps=1e-5, weight_tying=False, init_device="cpu",
                  mask_token_id=126336, pad_token_id=126081, eos_token_id=126081, attention_layer_norm=False,
                  scale_logits=False)
LLAVA_COMMON = dict(mm_projector_type="mlp2x_gelu", mm_hidden_size=32, use_mm_proj=True, mm_vision_select_layer=-2,
                    mm_vision_select_feature="patch", mm_patch_merge_type="spatial_unpad",
                    mm_tunable_parts="mm_vision_tower,mm_mlp_adapter,mm_language_model", mm_use_im_start_end=False,
                    mm_use_im_patch_token=False, tokenizer_model_max_length=8192, tokenizer_padding_side="right")


def _siglip(out: Path) -> Path:
    from llava.model.multimodal_encoder.siglip_encoder import SigLipVisionConfig, SigLipVisionModel

    tower = out / "siglip"  # the families' tower builders recognise SigLIP by this word in the path
    SigLipVisionModel(SigLipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                         num_attention_heads=2, image_size=384, patch_size=14)
                      ).save_pretrained(tower, safe_serialization=True)
    return tower


def _llada_v(out: Path):
    from llava.model.language_model.llava_llada import LlavaLLaDAConfig, LlavaLLaDAModelLM

    tower = _siglip(out)
    config = LlavaLLaDAConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                              num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=8192,
                              rope_theta=500000.0, tie_word_embeddings=False)
    # the image settings of LLaDA-V's fine-tuning script (train/scripts/llada_v_finetune.sh)
    config.update(dict(LLAVA_COMMON, mm_vision_tower=str(tower), image_aspect_ratio="anyres_max_4",
                       image_grid_pinpoints="(1x1),...,(6x6)", architectures=["LlavaLLaDAModelLM"]))
    return LlavaLLaDAModelLM(config), {}


def _lavida(out: Path):
    from llava.model.language_model.llava_llada import LlavaLladaConfig, LlavaLladaForMaskedDiffusion

    tower = _siglip(out)
    config = LlavaLladaConfig(**TINY_LLADA, vocab_size=VOCAB, embedding_size=VOCAB, max_sequence_length=8192)
    # LaViDa's image settings: anyres over five pinpoints, every view pooled 2 x 2 (bilinear)
    config.update(dict(LLAVA_COMMON, mm_vision_tower=str(tower), image_aspect_ratio="anyres",
                       image_grid_pinpoints=[[384, 768], [768, 384], [768, 768], [1152, 384], [384, 1152]],
                       mm_spatial_pool_mode="bilinear", mm_spatial_pool_stride=2, resampler_type=None,
                       vision_tower_pretrained="", architectures=["LlavaLladaForMaskedDiffusion"]))
    vision = dict(mm_vision_tower=str(tower), mm_resampler_type=None, mm_projector_type="mlp2x_gelu",
                  mm_hidden_size=32, use_mm_proj=True)
    # the shipped family file names the hub's SigLIP; point it at the tiny one
    return LlavaLladaForMaskedDiffusion(config, vision_kwargs=vision, init_params=True), {"vision_kwargs": vision}


def _mmada(out: Path):
    import models
    from models.configuration_llada import ModelConfig

    models.MAGVITv2().save_pretrained(out / "magvitv2")  # random weights, the real architecture
    fields = {k: getattr(v, "value", v) for k, v in ModelConfig().__dict__.items()}
    fields.update(TINY_LLADA, vocab_size=VOCAB + 8192, embedding_size=VOCAB + 8192, max_sequence_length=4096)
    config = models.MMadaConfig(**fields, llm_vocab_size=VOCAB, codebook_size=8192, num_vq_tokens=1024,
                                new_vocab_size=VOCAB + 8192, use_cache=False, architectures=["MMadaModelLM"])
    return models.MMadaModelLM(config, init_params=True), {"vq_model": str(out / "magvitv2")}


def _lumina(out: Path):
    import diffusers
    from model import LLaDAForMultiModalGeneration
    from model.configuration_llada import LLaDAConfig

    # a VQ-VAE that downsamples 16 times, as Lumina-DiMOO's, with tiny channels and random weights
    diffusers.VQModel(down_block_types=("DownEncoderBlock2D",) * 5, up_block_types=("UpDecoderBlock2D",) * 5,
                      block_out_channels=(8, 8, 16, 16, 16), layers_per_block=1, latent_channels=4,
                      num_vq_embeddings=8192, vq_embed_dim=4, norm_num_groups=4).save_pretrained(out / "vqvae")
    config = LLaDAConfig(**TINY_LLADA, vocab_size=126356 + 8192, embedding_size=126356 + 8192, max_sequence_length=8192)
    return LLaDAForMultiModalGeneration(config, init_params=True), {}


def _dimple(out: Path):
    """Dimple ships its code with the checkpoint (remote code): copy it next to the tiny weights."""
    import shutil

    import transformers

    code = REPO / "training-code" / "models"
    for f in code.glob("*.py"):
        shutil.copy(f, out / f.name)
    shutil.copy(code / "configuration_dimple.py", out / "configuration_Dimple.py")  # the spelling modeling imports
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2, window_size=112, out_hidden_size=64, fullatt_block_indexes=[1])
    (out / "config.json").write_text(json.dumps({
        "model_type": "dimple", "architectures": ["DimpleModel"],
        "auto_map": {"AutoConfig": "configuration_Dimple.DimpleConfig", "AutoModel": "modeling_dimple.DimpleModel"},
        "vocab_size": 151936, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 32768,
        "mrope_section": [2, 3, 3], "vision_config": vision}))
    # through transformers' remote-code loader, as a user's checkpoint would be read
    config = transformers.AutoConfig.from_pretrained(out, trust_remote_code=True)
    # a byte-level stand-in for the Qwen2 tokenizer: the 256 byte symbols, fillers up to 151643, Qwen2's specials
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = printable + [256 + k for k in range(256 - len(printable))]
    vocab = {chr(c): i for i, c in enumerate(symbols)}
    vocab.update({f"<filler_{i}>": i for i in range(len(vocab), 151643)})
    (out / "vocab.json").write_text(json.dumps(vocab))
    (out / "merges.txt").write_text("#version: 0.2\n")
    specials = {151643: "<|endoftext|>", 151644: "<|im_start|>", 151645: "<|im_end|>", 151652: "<|vision_start|>",
                151653: "<|vision_end|>", 151654: "<|vision_pad|>", 151655: "<|image_pad|>", 151656: "<|video_pad|>",
                151665: "<|beginoftext|>", 151666: "<|mask|>"}
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "DimpleTokenizer", "auto_map": {"AutoTokenizer": ["tokenization_dimple.DimpleTokenizer", None]},
        "added_tokens_decoder": {str(k): {"content": v, "special": True, "lstrip": False, "rstrip": False,
                                          "normalized": False, "single_word": False} for k, v in specials.items()},
        "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "model_max_length": 32768}))
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "DimpleImageProcessor", "processor_class": "DimpleProcessor",
        "auto_map": {"AutoImageProcessor": "image_processing_dimple.DimpleImageProcessor",
                     "AutoProcessor": "processing_dimple.DimpleProcessor"},
        "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "merge_size": 2, "temporal_patch_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}))
    model = transformers.AutoModel.from_config(config, trust_remote_code=True)
    return model, None  # None: the tokenizer is written, not the shared stand-in


# family -> (tiny model builder, shape of its first image grid for a 640 x 480 image)
FAMILIES = {"llada-v": (_llada_v, (27, 27)), "lavida": (_lavida, (14, 14)), "mmada": (_mmada, (32, 32)),
            "lumina-dimoo": (_lumina, (54, 72)),  # 640 x 480 at about 1024^2 pixels: 1152 x 864, / 16
            "dimple": (_dimple, (17, 23))}  # Qwen2-VL's resize to 476 x 644 px, 14 px patches merged 2 x 2


def build(family: str, out: Path) -> dict:
    """Write a tiny random checkpoint made with the family's own classes; returns loader options to use."""
    torch.manual_seed(0)
    model, loader_kwargs = FAMILIES[family][0](out)
    newline = getattr(model.get_model(), "image_newline", None) if hasattr(model, "get_model") else None
    if newline is not None:
        with torch.no_grad():  # LLaVA creates it with torch.empty; a trained checkpoint holds values
            newline.normal_(0, 0.02)
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    assert not bad, f"non-finite parameters in the tiny model: {bad}"
    model.save_pretrained(out, safe_serialization=True)
    if loader_kwargs is None:
        return {}
    vocab = [SPECIAL.get(i, f"[unused{i}]") for i in range(VOCAB)]
    for k, word in enumerate(dict.fromkeys(WORDS)):
        vocab[10 + k] = word
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "BertTokenizer", "do_lower_case": True, "unk_token": "[UNK]", "pad_token": "[PAD]",
        "additional_special_tokens": [v for k, v in SPECIAL.items() if k >= 126000], "model_max_length": 8192}))
    return loader_kwargs


def check(family: str, out: Path, loader_kwargs: dict, size: tuple[int, int]) -> None:
    import diffusion_cam as dc
    from diffusion_cam.adapters.config_adapter import FAMILIES_DIR
    from PIL import Image

    # the shipped family file, with its hub-hosted parts (vision tower, VQ model) pointed at the tiny ones
    spec = json.loads((FAMILIES_DIR / f"{family.replace('-', '_')}.json").read_text())
    for key, value in loader_kwargs.items():
        spec.setdefault("loader_kwargs", {}).setdefault(key, {})
        spec["loader_kwargs"][key] = {**spec["loader_kwargs"][key], **value} if isinstance(value, dict) else value
    family_file = out / "family.json"
    family_file.write_text(json.dumps(spec))
    t0 = time.perf_counter()
    adapter = dc.load_model(str(family_file), checkpoint=str(out), trust_remote_code=True, dtype="float32")
    print(f"loaded {adapter.family} through the family's own loader in {time.perf_counter() - t0:.1f} s")
    image = np.asarray(Image.open(dc.example_scenes()[2].image).convert("RGB").resize(size))
    method = dc.DiffusionCAM(adapter, layer=1,
                             generation=replace(adapter.default_generation, gen_length=8, steps=8, block_length=8))
    t0 = time.perf_counter()
    exp = method.explain(image, "describe the image")
    print(f"generated and explained {len(exp.tokens)} tokens in {time.perf_counter() - t0:.1f} s")
    run = method.generate(image, "describe the image")
    grids = adapter.image_grids(run.inputs, run.generation.sequence)
    print(f"sequence of {run.inputs.input_ids.numel()} positions; image grids "
          + ", ".join(f"{g.shape[0]}x{g.shape[1]}" for g in grids))
    expected = FAMILIES[family][1]
    assert grids[0].shape == expected, f"the first grid should be {expected[0]} x {expected[1]}, not {grids[0].shape}"
    assert np.isfinite(exp.maps).all() and exp.maps.shape == (len(exp.tokens), size[1], size[0])
    assert not any(exp.degenerate), "every map should carry evidence"
    print(f"maps {exp.maps.shape}, every map finite and non-empty: OK")
    check_head_rows(adapter, run)
    check_logit_lens(adapter, run, image)


def check_logit_lens(adapter, run, image) -> None:
    """The family file's final_norm with the head is the model's own read-out (TAM's logit lens)."""
    import diffusion_cam as dc
    from diffusion_cam.extract import ActivationRecorder

    seq, a0 = run.generation.sequence[None], run.inputs.answer_start
    last = len(adapter.blocks()) - 1
    with torch.no_grad(), ActivationRecorder(adapter.blocks(), [last], adapter.unwrap) as rec:
        logits = adapter.forward(run.inputs, seq)
        lens = adapter.logit_lens(rec.get(last, len(rec.outputs[last]) - 1))  # LaViDa: its answer pass
    if lens.shape[1] != logits.shape[1]:
        logits = logits[:, a0:]  # a prefix pass: the answer rows
    elif adapter.spec.logits_shift:
        lens, logits = lens[:, :-1], logits[:, 1:]
    # LLaDA scales its logits by a constant when the config says so (scale_logits)
    scale = float((logits * lens).sum() / (lens * lens).sum())
    torch.testing.assert_close(lens * scale, logits, rtol=1e-4, atol=1e-4)
    exp = dc.get_method("tam", adapter, generation=run.generation.config).explain(image, "describe the image")
    assert np.isfinite(exp.maps).all()
    print(f"logit lens (final_norm {adapter.spec.final_norm} + head) equals the model's logits (scale {scale:.4f}); "
          f"TAM explained {len(exp.tokens)} tokens: OK")


def check_head_rows(adapter, run) -> None:
    """The logits the library reads come from the family's head on the scored rows only."""
    from diffusion_cam.testing import logits_both_ways

    seq = run.generation.sequence[None]
    positions = [run.inputs.answer_start + i for i in (3, 0, 1)]
    assert adapter.output_head() is not None, "the family's model names no output head (get_output_embeddings)"
    full, part, shapes = logits_both_ways(adapter, run.inputs, seq, positions)
    rows = [s[-2] for s in shapes]  # the full forward's head calls come first, forward_at's last
    assert rows[-1] == len(positions), f"the head projected {rows} rows, not {len(positions)}"
    torch.testing.assert_close(part, full[:, positions], rtol=1e-4, atol=1e-5)
    print(f"logits at {len(positions)} positions: the head projected {len(positions)} rows instead of {rows[len(rows) // 2 - 1]}, "
          f"same values as the full forward (max difference {float((part - full[:, positions]).abs().max()):.1e}): OK")


def main() -> int:
    from diffusion_cam.adapters.recipes import FAMILY_TRANSFORMERS, recipe_text

    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Each family's code runs in its own environment with transformers=={FAMILY_TRANSFORMERS} "
               "(not the transformers 5 of the hf extra). Make it in a diffusion-cam checkout with:\n\n"
               + recipe_text() + "\n\nthen run, e.g.: python benchmarks/verify_family_code.py --family llada-v "
               "--repo LLaDA-V/train")
    ap.add_argument("--family", choices=sorted(FAMILIES), required=True)
    ap.add_argument("--repo", required=True, help="the folder holding the family's package "
                                                  "(LLaDA-V: its train/ folder; the others: the clone)")
    ap.add_argument("--out", default=None, help="where to write the tiny checkpoint (default: tiny-FAMILY)")
    ap.add_argument("--size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"), help="test image size")
    args = ap.parse_args()
    global REPO
    REPO = Path(args.repo).resolve()
    sys.path.insert(0, str(REPO))
    warnings.filterwarnings("ignore")
    out = Path(args.out or f"tiny-{args.family}")
    out.mkdir(parents=True, exist_ok=True)
    check(args.family, out, build(args.family, out), tuple(args.size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
