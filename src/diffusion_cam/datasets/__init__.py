"""Datasets with pixel-exact ground truth for evaluating visual explanations."""

from .shapes import (
    COLOURS,
    COUNT_WORDS,
    PROMPT_TYPES,
    SHAPES,
    Scene,
    ShapeObject,
    answer,
    generate_scene,
    generate_scenes,
    label_image,
    prompt_type,
    prompts_for,
    referent_masks,
)

__all__ = [
    "COLOURS",
    "COUNT_WORDS",
    "PROMPT_TYPES",
    "SHAPES",
    "Scene",
    "ShapeObject",
    "answer",
    "generate_scene",
    "generate_scenes",
    "label_image",
    "prompt_type",
    "prompts_for",
    "referent_masks",
]
