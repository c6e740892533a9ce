"""Explanation methods, looked up by name."""

from __future__ import annotations

from typing import Any, Callable

from ..errors import UnknownNameError
from .base import ExplanationMethod, RawMaps, Run
from .gradient import DiffusionCAM, DiffusionCAMRaw, GradientCAM

_METHODS: dict[str, Callable[..., ExplanationMethod]] = {}


def register_method(name: str, factory: Callable[..., ExplanationMethod]) -> None:
    """Make ``factory(adapter, **options)`` available as ``get_method(name, ...)``."""
    _METHODS[name] = factory


def available_methods() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str, adapter, **options: Any) -> ExplanationMethod:
    """Instantiate the explanation method ``name`` for ``adapter``."""
    try:
        factory = _METHODS[name]
    except KeyError:
        raise UnknownNameError(f"unknown method {name!r}; choose one of {', '.join(available_methods())}") from None
    return factory(adapter, **options)


register_method("diffusion-cam", DiffusionCAM)
register_method("diffusion-cam-raw", DiffusionCAMRaw)

__all__ = ["DiffusionCAM", "DiffusionCAMRaw", "ExplanationMethod", "GradientCAM", "RawMaps", "Run", "available_methods",
           "get_method", "register_method"]
