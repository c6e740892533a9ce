"""Model adapters: the only code that knows a model family."""

from .base import STATES, Adapter, GenerationConfig, ImageGrid, ModelInputs
from .registry import ModelEntry, available_models, load_model, register_model, register_resolver
from . import shapes_tiny  # noqa: F401  (registers the built-in model)
from . import builtin_checkpoints  # noqa: F401  (registers the built-in transformers checkpoints)
from .config_adapter import register_builtin_families

register_builtin_families()  # real-model families described in families/*.json

__all__ = ["STATES", "Adapter", "GenerationConfig", "ImageGrid", "ModelEntry", "ModelInputs",
           "available_models", "load_model", "register_model", "register_resolver"]
