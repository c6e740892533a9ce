"""``diffusion-gemma-shapes``: a stock ``DiffusionGemmaForBlockDiffusion`` trained on the Shapes world.

The shipped folder ``weights/`` is an ordinary transformers checkpoint
(config, safetensors, tokenizer, image processor, chat template): it loads
with ``from_pretrained`` and is explained through the unchanged
``DiffusionGemmaAdapter``, like a released checkpoint.
"""

from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"
