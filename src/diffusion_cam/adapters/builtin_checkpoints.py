"""Built-in models shipped as ordinary transformers checkpoint folders.

They are loaded exactly as a user's copy of a released checkpoint would be
(through the family's own loader); the only thing added here is the name and
the integrity check of every file against the folder's ``SHA256SUMS``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ModelLoadError
from .base import Adapter
from .registry import ModelEntry, register_model

SUMS = "SHA256SUMS"


def verify_folder(folder: str | Path) -> None:
    """Refuse a checkpoint folder whose files do not match its ``SHA256SUMS`` (a ModelLoadError naming the file)."""
    from ..safe_load import verify_sha256

    folder = Path(folder)
    sums = folder / SUMS
    if not sums.is_file():
        raise ModelLoadError(f"{folder} has no {SUMS}: the built-in checkpoint is incomplete; reinstall the package")
    for line in sums.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        digest, _, name = line.strip().partition("  ")
        if not name or "/" in name or name.startswith("."):
            raise ModelLoadError(f"{sums}: malformed line {line!r}")
        verify_sha256(folder / name, digest)


def load_diffusion_gemma_shapes(verify: bool = True, **options: Any) -> Adapter:
    from ..models import diffusion_gemma_shapes
    from .diffusion_gemma import load_diffusion_gemma

    folder = diffusion_gemma_shapes.WEIGHTS_DIR
    if not _shipped():
        raise ModelLoadError(f"diffusion-gemma-shapes has no weights in {folder} (an incomplete install?); "
                             "reinstall the package, or train them with 'diffusion-cam train-shapes --arch "
                             "diffusion-gemma --out DIR' and pass --model DIR/final")
    if verify:
        verify_folder(folder)
    adapter = load_diffusion_gemma(str(folder), **options)
    adapter.name = "diffusion-gemma-shapes"
    return adapter


def _shipped() -> bool:
    from ..models import diffusion_gemma_shapes

    return (diffusion_gemma_shapes.WEIGHTS_DIR / "config.json").is_file()


register_model(ModelEntry(
    name="diffusion-gemma-shapes", loader=load_diffusion_gemma_shapes, family="diffusion-gemma",
    verified="n/a (built-in)" if _shipped() else "n/a (weights missing from this install)",
    description="stock transformers DiffusionGemmaForBlockDiffusion trained on the Shapes world, loaded from "
                "the package's checkpoint folder (needs transformers>=5.13)",
))
