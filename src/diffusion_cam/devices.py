"""``auto`` device and dtype: the accelerator the machine has, and the precision it computes well in."""

from __future__ import annotations

import torch

from .errors import UnknownNameError

DTYPES = ("float32", "bfloat16", "float16")


def resolve_device(name: str | None) -> str:
    """``auto`` (or None): ``cuda`` when a CUDA GPU is usable, then Apple's ``mps``, else ``cpu``; other names as given."""
    if name not in (None, "auto"):
        return str(name)
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(name: str | None, device: str) -> str:
    """``auto`` (or None): ``bfloat16`` on a CUDA GPU that computes in it, else ``float32``.

    Apple's MPS gets float32 too: its bfloat16 support depends on the OS
    release, which torch does not report.
    """
    if name not in (None, "auto"):
        if name not in DTYPES:
            raise UnknownNameError(f"unknown dtype {name!r}; choose auto, {', '.join(DTYPES)}")
        return name
    if torch.device(device).type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "float32"


def describe(model: torch.nn.Module) -> dict[str, str]:
    """Where the weights are and in what dtype (``device`` names every device of a model spread by a device map)."""
    devices = getattr(model, "hf_device_map", None)
    params = list(model.parameters())
    dtype = str(params[0].dtype).removeprefix("torch.") if params else "float32"
    if devices:
        spread = sorted({str(d) for d in devices.values()})
        return {"device": ",".join(spread), "dtype": dtype, "device_map": "auto"}
    return {"device": str(params[0].device) if params else "cpu", "dtype": dtype}
