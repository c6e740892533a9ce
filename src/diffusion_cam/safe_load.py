"""Loading model weights without running code from the checkpoint.

Every loader in diffusion-cam (the built-in model and the Hugging Face family
loaders) reads weights through this module:

* :func:`load_weights` reads ``.safetensors`` files with
  ``safetensors.torch.load_file``.  Pickle-based checkpoints (``.bin``,
  ``.pt``, ``.pth``, ``.ckpt``, ``.pkl``) can execute arbitrary code when
  unpickled, so they are refused with :class:`~diffusion_cam.errors.ModelLoadError`
  unless the caller passes ``allow_pickle=True``; even then they are read with
  ``torch.load(weights_only=True)``, which only rebuilds tensors and plain
  containers.
* :func:`verify_sha256` checks a file against a recorded digest and says
  whether a mismatching file looks truncated (shorter than its safetensors
  header says, or than an expected size).
* :func:`weight_files` picks the files of a checkpoint directory: safetensors
  (sharded or not) when present, pickle files only when allowed.

Typical use in a loader::

    from diffusion_cam.safe_load import load_weights, verify_sha256

    verify_sha256(path, config["weights_sha256"])      # ModelLoadError on mismatch
    state = load_weights(path, device="cpu")           # ModelLoadError on bad/unsafe files
    model.load_state_dict(state)

Loaders that go through ``transformers.from_pretrained`` should pass
``use_safetensors=not allow_pickle`` and call :func:`weight_files` first so that
a pickle-only checkpoint fails with the same message as here.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import warnings
from pathlib import Path
from typing import Mapping

import torch

from .errors import ModelLoadError

SAFE_SUFFIXES = (".safetensors",)
#: suffixes of checkpoints that are unpickled when loaded
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SAFETENSORS_INDEX = "model.safetensors.index.json"

_PICKLE_HINT = ("pickle checkpoints can run arbitrary code when loaded; convert it to .safetensors, "
                "or pass allow_pickle=True (CLI: --allow-pickle) if you trust its source")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as err:
        raise ModelLoadError(f"cannot read weights file {path}: {err.strerror or err}") from None
    return digest.hexdigest()


def safetensors_expected_size(path: str | os.PathLike) -> int | None:
    """File size implied by a safetensors header, or None when the header is unreadable.

    The format is an 8-byte little-endian header length, a JSON header whose
    tensors give ``data_offsets`` into the data section, then the data.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return None
            (n,) = struct.unpack("<Q", head)
            if n > 100_000_000:  # the format caps headers far below this
                return None
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(header, dict):
        return None
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError):
            return None
    return 8 + n + end


def _truncation_note(path: Path, expected_size: int | None) -> str:
    actual = path.stat().st_size
    if expected_size is None and path.suffix in SAFE_SUFFIXES:
        expected_size = safetensors_expected_size(path)
    if expected_size is None:
        return f"size {actual:,} bytes"
    if actual < expected_size:
        return f"the file looks truncated: {actual:,} bytes, {expected_size:,} expected"
    if actual > expected_size:
        return f"size {actual:,} bytes, more than the {expected_size:,} expected"
    return f"size {actual:,} bytes as expected, so the content is corrupted or a different file"


def verify_sha256(path: str | os.PathLike, expected: str, *, expected_size: int | None = None) -> str:
    """Check that ``path`` hashes to ``expected`` (hex sha256); return the digest.

    Raises :class:`ModelLoadError` naming the file, the expected and the actual
    digest and whether the file looks truncated (compared with
    ``expected_size`` or, for safetensors, the size its header implies).
    """
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"weights file {p} does not exist")
    actual = sha256_file(p)
    if actual != expected.strip().lower():
        raise ModelLoadError(
            f"weights file {p} failed its integrity check: sha256 {actual}, expected {expected} "
            f"({_truncation_note(p, expected_size)}); download or copy it again"
        )
    return actual


def _check_pickle_allowed(path: Path, allow_pickle: bool) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:
        raise ModelLoadError(f"refusing to load pickle checkpoint {path}: {_PICKLE_HINT}")


def load_weights(path: str | os.PathLike, *, device: str | torch.device = "cpu", allow_pickle: bool = False,
                 expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read a state dict from one weights file.

    ``.safetensors`` files load with ``safetensors.torch.load_file``.  Pickle
    checkpoints raise :class:`ModelLoadError` unless ``allow_pickle`` is true,
    and are then read with ``torch.load(weights_only=True)``.  Any other
    suffix is refused.  A damaged file (truncated, bad header, not the
    format its name says) raises :class:`ModelLoadError` naming the file.
    ``expected_sha256`` is checked first when given.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in SAFE_SUFFIXES and suffix not in PICKLE_SUFFIXES:
        raise ModelLoadError(f"{p}: unknown weights format {suffix or '(no suffix)'!r}; expected a .safetensors file")
    _check_pickle_allowed(p, allow_pickle)
    if not p.is_file():
        raise ModelLoadError(f"weights file {p} does not exist")
    if expected_sha256 is not None:
        verify_sha256(p, expected_sha256)
    device = str(device)
    if suffix in SAFE_SUFFIXES:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device=device)
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise ModelLoadError(
                f"cannot read safetensors file {p} ({_truncation_note(p, None)}): {err}"
            ) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol notes add nothing to the error below
            state = torch.load(str(p), map_location=device, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        first = (str(err).strip().splitlines() or [""])[0]
        raise ModelLoadError(
            f"cannot read checkpoint {p} with weights_only=True (it is damaged or holds more than tensors): "
            f"{type(err).__name__}: {first}"
        ) from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"checkpoint {p} does not hold a flat state dict of tensors")
    return dict(state)


def weight_files(directory: str | os.PathLike, *, allow_pickle: bool = False) -> list[Path]:
    """Weight files of a checkpoint directory, safetensors first.

    Follows ``model.safetensors.index.json`` for sharded checkpoints.  A
    directory with only pickle checkpoints raises :class:`ModelLoadError`
    unless ``allow_pickle``; a directory with no weights at all raises too.
    """
    d = Path(directory)
    if not d.is_dir():
        raise ModelLoadError(f"model directory {d} does not exist")
    index = d / SAFETENSORS_INDEX
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise ModelLoadError(f"cannot read shard index {index}: {err}") from None
        files = [d / s for s in shards]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelLoadError(f"checkpoint {d} lacks shard(s) {', '.join(missing)} listed in {index.name}")
        return files
    safe = sorted(p for p in d.iterdir() if p.suffix in SAFE_SUFFIXES and p.is_file())
    if safe:
        return safe
    pickled = sorted(p for p in d.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file())
    if pickled:
        if not allow_pickle:
            raise ModelLoadError(
                f"checkpoint {d} holds pickle weights only ({', '.join(p.name for p in pickled[:3])}): {_PICKLE_HINT}"
            )
        return pickled
    raise ModelLoadError(f"checkpoint {d} has no weight files (*.safetensors)")


__all__ = ["PICKLE_SUFFIXES", "SAFE_SUFFIXES", "load_weights", "safetensors_expected_size", "sha256_file",
           "verify_sha256", "weight_files"]
