"""``diffusion-gemma-shapes``: a stock ``DiffusionGemmaForBlockDiffusion`` trained on the Shapes world.

``build`` makes its untrained parts (configuration, tokenizer, image
processor) and ``train`` its recipe, which writes an ordinary transformers
checkpoint folder; TRAINING.md says how far the recipe gets.
"""

from pathlib import Path

#: the shipped checkpoint folder (config, safetensors, tokenizer, processor, chat template, SHA256SUMS)
WEIGHTS_DIR = Path(__file__).parent / "weights"
