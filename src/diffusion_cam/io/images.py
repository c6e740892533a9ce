"""Load an image from a path, a PIL image or an array into RGB uint8."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import ImageLoadError

#: host memory an explanation needs per input pixel, beyond the model's own: the decoded picture,
#: its RGB array and the resized copies made from it (the maps stay at grid resolution).  Measured
#: with benchmarks/bench_big_image.py on shapes-tiny: a 4000 x 3000 picture peaks 119 MB (10 B/px)
#: above a 96 x 96 one; 16 leaves room for adapters that keep more copies
BYTES_PER_PIXEL = 16
#: images above this many pixels are refused before decoding (decompression-bomb guard):
#: 64 million pixels imply about 1 GB (BYTES_PER_PIXEL each)
MAX_PIXELS = 64_000_000
MIN_SIDE = 2


def available_memory() -> int | None:
    """Bytes the host can still give (``MemAvailable``), or None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def _to_rgb_array(img: Image.Image, source: str) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit grey keeps its brightness (65535 -> 255) so the model sees what the user sees;
        # only values outside the 16-bit range (32-bit int, float images) are scaled by their own range
        arr = np.asarray(img, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise ImageLoadError(f"{source}: image has non-finite pixel values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo >= 0 and hi <= 65535 and img.mode != "F":
            arr = arr / 257.0
        else:
            arr = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        img = Image.fromarray(arr.round().astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        # composite on white rather than keeping whatever colour hides under alpha
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


def _check_size(height: int, width: int, source: str) -> None:
    if height < MIN_SIDE or width < MIN_SIDE:
        raise ImageLoadError(f"{source}: image is {width}x{height} pixels; at least {MIN_SIDE}x{MIN_SIDE} is needed")
    pixels = height * width
    if pixels > MAX_PIXELS:
        raise ImageLoadError(
            f"{source}: image is {width}x{height} = {pixels:,} pixels, above the limit of "
            f"{MAX_PIXELS:,} (about {_gb(MAX_PIXELS * BYTES_PER_PIXEL)} of memory); downscale it first"
        )
    free = available_memory()
    if free is not None and pixels * BYTES_PER_PIXEL > free:
        raise ImageLoadError(
            f"{source}: image is {width}x{height} pixels, which needs about {_gb(pixels * BYTES_PER_PIXEL)} of memory "
            f"and this machine has {_gb(free)} available; downscale it or free memory"
        )


def load_image(image: Any) -> np.ndarray:
    """Return ``image`` as an (H, W, 3) uint8 RGB array.

    Accepts a path, a PIL image or a numpy array ((H, W), (H, W, 1|3|4); values
    0..255 of any numeric dtype, or floats in [0, 1]).  Grayscale, RGBA, palette and 16-bit images are
    converted.  Anything unreadable raises :class:`ImageLoadError` naming the
    source and the problem.
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        source = str(path)
        if not path.exists():
            raise ImageLoadError(f"{source}: no such file")
        if path.is_dir():
            raise ImageLoadError(f"{source}: is a directory, not an image file")
        if path.stat().st_size == 0:
            raise ImageLoadError(f"{source}: file is empty (0 bytes)")
        width = height = 0
        try:
            with warnings.catch_warnings():
                # our own MAX_PIXELS check below refuses big images; PIL's bomb warning would only add noise
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as img:  # lazy: reads the header only, so the size check runs before decoding
                    width, height = img.size
                    _check_size(height, width, source)
                    img.load()
                    return _to_rgb_array(img, source)
        except ImageLoadError:
            raise
        except MemoryError:
            raise ImageLoadError(f"{source}: out of memory decoding the image ({width}x{height} pixels need about "
                                 f"{_gb(width * height * BYTES_PER_PIXEL)}); downscale it or free memory") from None
        except Image.DecompressionBombError as err:  # PIL refuses at open above ~2x its own limit
            raise ImageLoadError(f"{source}: image is too large to decode safely ({err}); "
                                 f"the limit is {MAX_PIXELS:,} pixels, downscale it first") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise ImageLoadError(f"{source}: cannot decode image ({err})") from None
    if isinstance(image, Image.Image):
        width, height = image.size
        _check_size(height, width, "PIL image")
        return _to_rgb_array(image, "PIL image")
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
            raise ImageLoadError(f"array image has shape {image.shape}; expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
        _check_size(arr.shape[0], arr.shape[1], "array image")
        if arr.dtype != np.uint8:
            if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
                raise ImageLoadError(f"array image of dtype {arr.dtype} has non-finite or non-numeric values")
            if np.issubdtype(arr.dtype, np.floating) and arr.min() >= 0 and arr.max() <= 1:
                arr = arr * 255.0
            lo, hi = float(arr.min()), float(arr.max())
            if lo < 0 or hi > 255:
                # clipping would show the model another picture than the one passed
                raise ImageLoadError(f"array image of dtype {image.dtype} has values {lo:g}..{hi:g}; expected 0..255 "
                                     "(or floats in 0..1)")
            arr = np.round(arr).astype(np.uint8)
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        elif arr.shape[2] == 4:
            return _to_rgb_array(Image.fromarray(arr, mode="RGBA"), "array image")
        return np.ascontiguousarray(arr)
    raise ImageLoadError(f"unsupported image type {type(image).__name__}; pass a path, a PIL image or a numpy array")
