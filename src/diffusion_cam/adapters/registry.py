"""Models looked up by name: built-in names first, then loaders that accept ids or paths."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import ModelLoadError, UnknownNameError
from .base import Adapter


@dataclass
class ModelEntry:
    name: str
    loader: Callable[..., Adapter]
    description: str
    family: str
    states: tuple[str, ...] = ("trajectory", "final")
    verified: str = "yes"
    aliases: tuple[str, ...] = field(default_factory=tuple)


_MODELS: dict[str, ModelEntry] = {}
#: fallbacks tried in order for names that are not registered (HF ids, local paths)
_RESOLVERS: list[Callable[[str], Callable[..., Adapter] | None]] = []


def register_model(entry: ModelEntry) -> None:
    for key in (entry.name, *entry.aliases):
        _MODELS[key] = entry


def register_resolver(resolver: Callable[[str], Callable[..., Adapter] | None]) -> None:
    """Add a function mapping an unregistered name (hub id, path) to a loader, or None."""
    _RESOLVERS.append(resolver)


def available_models() -> list[ModelEntry]:
    seen, out = set(), []
    for entry in _MODELS.values():
        if entry.name not in seen:
            seen.add(entry.name)
            out.append(entry)
    return out


def load_model(name: str = "shapes-tiny", **options: Any) -> Adapter:
    """Return an adapter for ``name``: a built-in model, or an id/path a family loader accepts.

    ``device`` and ``dtype`` move the loaded model (``"auto"``: see
    :mod:`diffusion_cam.devices`); ``device_map="auto"`` instead loads a
    hub/path checkpoint across the available devices with accelerate.
    Other options go to the loader.
    Hub/path loaders receive ``dtype`` as ``torch_dtype`` so that large
    checkpoints are read in half precision instead of being cast after a
    full-precision load.
    """
    from ..devices import resolve_device, resolve_dtype

    device = options.pop("device", None)
    dtype = options.pop("dtype", None)
    if device == "auto":
        device = resolve_device(device)
    if dtype == "auto":
        dtype = resolve_dtype(dtype, device or "cpu")
    device_map = options.pop("device_map", None)
    if device_map is not None:
        if device is not None:
            raise ModelLoadError("device_map places the weights itself: give device_map or device, not both")
        options["device_map"] = device_map
    adapter = None
    if name in _MODELS:
        if device_map is not None:
            raise ModelLoadError(f"device_map is for checkpoints loaded with transformers; {name!r} is built in "
                                   "and fits one device: use device instead")
        adapter = _MODELS[name].loader(**options)
    else:
        for resolver in _RESOLVERS:
            loader = resolver(name)
            if loader is not None:
                if dtype is not None:
                    options["torch_dtype"] = dtype
                adapter = loader(name, **options)
                break
    if adapter is not None:
        return adapter.to(device=device, dtype=dtype)
    known = ", ".join(sorted(e.name for e in available_models()))
    raise UnknownNameError(f"unknown model {name!r}; known models: {known} (or a local path / hub id of a supported family)")


def _tiny_random(trust_remote_code: bool = False, allow_pickle: bool = False, **options: Any) -> Adapter:
    # loading flags are accepted and have nothing to act on: the weights are generated, not read
    from ..testing import tiny_adapter

    return tiny_adapter(**options)


register_model(ModelEntry(
    name="tiny-random", loader=_tiny_random, family="tiny-llada-v",
    verified="n/a (random weights)",
    description="randomly initialised 4-block LLaDA-V-style model for tests (meaningless answers)",
))
