"""diffusion-cam: faithful visual explanations for diffusion multimodal LLMs.

>>> import diffusion_cam as dc
>>> adapter = dc.load_model("shapes-tiny")
>>> exp = dc.DiffusionCAM(adapter).explain("scene.png", "describe the image")
>>> exp.answer, exp.maps.shape
"""

from __future__ import annotations

from . import errors, extract, metrics, refine
from .adapters import Adapter, GenerationConfig, ImageGrid, ModelInputs, available_models, load_model
from .errors import DiffusionCamError
from .explanation import Explanation
from .io import example_scenes, load_image
from .methods import DiffusionCAM, ExplanationMethod, GradientCAM, available_methods, get_method, register_method
from . import baselines  # noqa: E402,F401  (registers gradcam, llava-cam, tam, center)
from .calibration import calibrate, check, load_profile  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Adapter", "DiffusionCAM", "calibrate", "check", "load_profile", "DiffusionCamError", "Explanation", "ExplanationMethod", "GenerationConfig",
    "GradientCAM", "ImageGrid", "ModelInputs", "available_methods", "available_models", "errors", "extract",
    "example_scenes", "get_method", "load_image", "load_model", "metrics", "refine", "register_method", "__version__",
]
