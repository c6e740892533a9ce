"""The built-in shapes-world masked-diffusion VLM (LLaDA-V style, a few MB)."""

from pathlib import Path

from .model import ShapesTinyConfig, ShapesTinyModel, load_pretrained, save_pretrained, tokenizer_for
from .tokenizer import SPECIAL_TOKENS, ShapesTokenizer

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

__all__ = [
    "SPECIAL_TOKENS",
    "ShapesTinyConfig",
    "ShapesTinyModel",
    "ShapesTokenizer",
    "WEIGHTS_DIR",
    "load_pretrained",
    "save_pretrained",
    "tokenizer_for",
]
