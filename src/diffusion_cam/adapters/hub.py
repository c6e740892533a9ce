"""Finding checkpoints on disk or in the hub cache, safely.

Weights are loaded from safetensors only unless the user passes
``allow_pickle=True`` (``--allow-pickle``): pickle checkpoints (``.bin``,
``.pt``, ``.pth``, ``.ckpt``) can run arbitrary code when unpickled.  Without
a network (``HF_HUB_OFFLINE=1``) a hub id must already be in the local cache.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ModelLoadError
from ..safe_load import PICKLE_SUFFIXES, weight_files
_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "*.py", "*.yaml"]


def require_transformers(family: str, minimum: str | None = None):
    """Import transformers or explain how to get it."""
    try:
        import transformers
    except ImportError:
        need = f"transformers>={minimum}" if minimum else "transformers"
        raise ModelLoadError(f"{family} models need {need}: pip install 'diffusion-cam[hf]'") from None
    return transformers


def loading_options(device_map: str | None, transformers_module) -> dict:
    """``from_pretrained`` options that keep a big checkpoint out of host memory.

    ``low_cpu_mem_usage`` (transformers 4: build the model empty and fill it
    shard by shard; transformers 5 always loads so and no longer takes the
    option) and, when asked, ``device_map`` (weights go straight to the GPUs).
    Both need accelerate under transformers 4, ``device_map`` under 5 too.
    """
    major = int(str(transformers_module.__version__).split(".")[0])
    options: dict = {}
    if major < 5 or device_map is not None:
        try:
            import accelerate  # noqa: F401
        except ImportError:
            if device_map is not None:
                raise ModelLoadError(f"device_map={device_map!r} needs accelerate: pip install accelerate") from None
            return options  # transformers 4 without accelerate loads the plain way
    if major < 5:
        options["low_cpu_mem_usage"] = True
    if device_map is not None:
        options["device_map"] = device_map
    return options


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def resolve_checkpoint(name: str, *, allow_pickle: bool = False) -> str:
    """Local folder holding checkpoint ``name`` (a folder path or a hub id)."""
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{name}: a checkpoint must be a folder holding config.json and the weights")
        folder = path
    elif looks_like_hub_id(name):
        try:
            from huggingface_hub import snapshot_download
        except ImportError:
            raise ModelLoadError(f"loading {name!r} from the hub needs huggingface_hub: pip install 'diffusion-cam[hf]'") from None
        patterns = _FILES + ([f"*{s}" for s in PICKLE_SUFFIXES] if allow_pickle else [])
        try:
            folder = Path(snapshot_download(name, local_files_only=_offline(), allow_patterns=patterns))
        except Exception as err:  # hub errors have many types (offline, missing, gated, network)
            where = "offline (HF_HUB_OFFLINE=1)" if _offline() else "and could not be downloaded"
            raise ModelLoadError(
                f"model {name!r} is not available locally {where}: {type(err).__name__}; "
                "download it first or pass a local checkpoint folder"
            ) from None
    else:
        raise ModelLoadError(f"model {name!r} is neither a local folder nor a hub id (owner/name)")
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"checkpoint {name!r} ({folder}) has no config.json")
    weight_files(folder, allow_pickle=allow_pickle)  # refuses no weights, or pickle only unless allowed
    return str(folder)
