"""Exception and warning types.

Every failure a user can cause has its own type so that the Python API can be
handled precisely and the CLI can print one clear line instead of a traceback.
"""

from __future__ import annotations


class DiffusionCamError(Exception):
    """Base class of every error raised on purpose by diffusion-cam."""


class ImageLoadError(DiffusionCamError):
    """An image could not be read, decoded or accepted."""


class PromptError(DiffusionCamError):
    """The prompt is empty, too long or uses words the model cannot encode."""


class LayerError(DiffusionCamError):
    """A requested layer index does not exist in the hooked block list."""


class InfeasibleStateError(DiffusionCamError):
    """The requested denoising state does not hold the whole image-token span."""


class TargetError(DiffusionCamError):
    """A target token (index or word) is not part of the answer."""


class UnknownNameError(DiffusionCamError, KeyError):
    """An unknown model, method, module, score or state name was given."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class GenerationError(DiffusionCamError, ValueError):
    """Generation settings are inconsistent (steps, block length, sampling without a seed)."""


class ModelLoadError(DiffusionCamError):
    """Model weights or configuration are missing, corrupt or unsafe to load."""


class ExtractionError(DiffusionCamError):
    """Hooks captured nothing usable (no activation, no gradient path)."""


class OutputError(DiffusionCamError):
    """Results cannot be written where the user asked."""


class ProfileError(DiffusionCamError):
    """A calibration profile is unreadable, names an unknown setting or belongs to another model."""


class LaunchError(DiffusionCamError):
    """Several processes were started without the rank information that shares the work among them."""


class ResourceError(DiffusionCamError, MemoryError):
    """Memory ran out; the message says in which step and what would need less of it."""


class DegenerateMapWarning(UserWarning):
    """A map had no positive evidence (all-zero or non-finite gradients) and is reported as zeros."""


class OutOfWorldWarning(UserWarning):
    """The input is unlike anything the model was trained on, so its answer (and its maps) are likely meaningless."""
