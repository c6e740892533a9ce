"""Pictures of an explanation: overlays, the captioned grid, the denoising animation.

Everything here is drawn with Pillow and OpenCV (both core dependencies), so
pictures and reports work without matplotlib.  Output is deterministic: the
same :class:`~diffusion_cam.explanation.Explanation` gives the same bytes.

>>> from diffusion_cam.visualize import overlay
>>> rgb = overlay(exp.image, exp.map("circle"))          # (H, W, 3) uint8

Writing them to a folder next to ``report.html`` is
:func:`diffusion_cam.report.write_pictures`.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import textwrap
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import DiffusionCamError, UnknownNameError

if TYPE_CHECKING:  # pragma: no cover
    from .explanation import Explanation

DEFAULT_CMAP = "jet"
DEFAULT_ALPHA = 0.5
GRID_FILE = "grid.png"
GIF_FILE = "trajectory.gif"
REPORT_FILE = "report.html"
OVERLAY_PATTERN = re.compile(r"^overlay_\d+_[a-z0-9-]+\.png$")

_CV2_CMAPS = {
    name: getattr(cv2, f"COLORMAP_{name.upper()}")
    for name in ("jet", "turbo", "inferno", "viridis", "magma", "plasma", "cividis", "hot", "parula", "bone",
                 "rainbow", "hsv", "ocean", "cool", "spring", "summer", "autumn", "winter", "pink", "twilight")
    if hasattr(cv2, f"COLORMAP_{name.upper()}")
}

# palette of the drawn pictures (not of the heatmaps)
_INK = (33, 37, 41)
_MUTED = (108, 117, 125)
_PAPER = (255, 255, 255)
_WARN = (176, 42, 55)
_MASK = (206, 212, 218)
_NEW = (255, 193, 7)


class VisualizationError(DiffusionCamError, ValueError):
    """A picture cannot be drawn with the options given (opacity, colour map, array shape)."""


# --------------------------------------------------------------------- colours
@functools.lru_cache(maxsize=32)
def colormap_lut(cmap: str = DEFAULT_CMAP) -> np.ndarray:
    """(256, 3) uint8 RGB look-up table of a colour map.

    OpenCV's maps are always available; any other matplotlib colour map name
    works when matplotlib is installed.
    """
    key = str(cmap).lower()
    if key in _CV2_CMAPS:
        ramp = np.arange(256, dtype=np.uint8).reshape(256, 1)
        return np.ascontiguousarray(cv2.applyColorMap(ramp, _CV2_CMAPS[key])[:, 0, ::-1])
    if importlib.util.find_spec("matplotlib") is not None:
        import matplotlib

        if cmap in matplotlib.colormaps:
            rgba = matplotlib.colormaps[cmap](np.linspace(0.0, 1.0, 256))
            return np.round(rgba[:, :3] * 255).astype(np.uint8)
    raise UnknownNameError(f"unknown colour map {cmap!r}; choose one of {', '.join(sorted(_CV2_CMAPS))}"
                           " (or a matplotlib colour map name when matplotlib is installed)")


def colorize(heatmap: np.ndarray, cmap: str = DEFAULT_CMAP) -> np.ndarray:
    """(H, W) map in [0, 1] -> (H, W, 3) uint8 RGB through ``cmap`` (values outside are clipped, NaN is 0)."""
    m = np.asarray(heatmap, dtype=np.float32)
    if m.ndim != 2:
        raise VisualizationError(f"a heatmap must be 2-D (H, W), got shape {m.shape}")
    m = np.clip(np.nan_to_num(m, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    return colormap_lut(cmap)[np.round(m * 255).astype(np.uint8)]


def overlay(image: np.ndarray, heatmap: np.ndarray, cmap: str = DEFAULT_CMAP,
            alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """Blend a coloured heatmap on an RGB image: ``(1 - alpha) * image + alpha * colour``.

    The map is resized (bilinear) to the image when their sizes differ.  The
    result is (H, W, 3) uint8, the size of ``image``.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise VisualizationError(f"overlay opacity alpha must lie in [0, 1], got {alpha}")
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise VisualizationError(f"an image must be (H, W, 3) RGB, got shape {img.shape}")
    img = img[..., :3].astype(np.float32)
    m = np.asarray(heatmap, dtype=np.float32)
    if m.ndim != 2:
        raise VisualizationError(f"a heatmap must be 2-D (H, W), got shape {m.shape}")
    if m.shape != img.shape[:2]:
        m = cv2.resize(np.nan_to_num(m), (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
    heat = colorize(m, cmap).astype(np.float32)
    out = (1.0 - float(alpha)) * img + float(alpha) * heat
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------- text
def word_label(text: str, limit: int = 24) -> str:
    """A token as people read it: whitespace collapsed, control characters dropped, long ones shortened."""
    s = "".join(ch for ch in str(text) if unicodedata.category(ch)[0] != "C" or ch in " \t\n")
    s = " ".join(s.split())
    if not s:
        return "␣"
    return s if len(s) <= limit else s[: limit - 1] + "…"


def safe_slug(text: str, limit: int = 32) -> str:
    """ASCII ``[a-z0-9-]`` form of a token, safe inside a file name on every system."""
    s = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode("ascii")
    s = re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")[:limit].strip("-")
    return s or "token"


def overlay_filenames(tokens: Sequence[str]) -> list[str]:
    """One distinct, path-safe PNG name per token: ``overlay_03_circle.png``."""
    width = max(2, len(str(max(len(tokens) - 1, 0))))
    return [f"overlay_{i:0{width}d}_{safe_slug(t)}.png" for i, t in enumerate(tokens)]


def _font_file(bold: bool) -> str | None:
    """A TrueType font with wide Unicode coverage: matplotlib's DejaVu, else the system's."""
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    spec = importlib.util.find_spec("matplotlib")
    candidates = []
    if spec is not None and spec.submodule_search_locations:
        for base in spec.submodule_search_locations:
            candidates.append(Path(base) / "mpl-data" / "fonts" / "ttf" / name)
    candidates += [Path("/usr/share/fonts/truetype/dejavu") / name, Path("/usr/share/fonts/TTF") / name]
    for path in candidates:
        if path.is_file():
            return str(path)
    return None


@functools.lru_cache(maxsize=16)
def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    path = _font_file(bold)
    if path is not None:
        return ImageFont.truetype(path, size)
    return ImageFont.load_default(size=size)


def _text_width(font, text: str) -> int:
    left, _, right, _ = font.getbbox(text)
    return int(right - left)


def _fit(font, text: str, width: int) -> str:
    """``text`` shortened with an ellipsis so that it fits in ``width`` pixels."""
    if _text_width(font, text) <= width:
        return text
    while text and _text_width(font, text + "…") > width:
        text = text[:-1]
    return text + "…"


def _wrap(font, text: str, width: int, max_lines: int = 3) -> list[str]:
    chars = max(8, int(width / max(1, _text_width(font, "n"))))
    lines = textwrap.wrap(" ".join(text.split()), chars) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1] + " …"
    return [_fit(font, line, width) for line in lines]


# ------------------------------------------------------------------- panels
def display_scale(shape: tuple[int, int], target: int = 224, largest: int = 384) -> float:
    """Scale that brings an image's long side to ``target`` px (small ones) or at most ``largest``."""
    long_side = max(shape[:2])
    if long_side < target:
        return target / long_side
    return min(1.0, largest / long_side)


def _resize(rgb: np.ndarray, scale: float) -> Image.Image:
    im = Image.fromarray(rgb)
    if scale == 1.0:
        return im
    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    # small images are shown pixel-exact; large ones are averaged down
    return im.resize(size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BOX)


def colorbar(cmap: str = DEFAULT_CMAP, width: int = 256, height: int = 34) -> Image.Image:
    """A horizontal legend of the colour map from 0 (no evidence) to 1 (strongest)."""
    font = _font(12)
    bar_h = 12
    canvas = Image.new("RGB", (width, height), _PAPER)
    ramp = colormap_lut(cmap)[np.linspace(0, 255, width).round().astype(np.uint8)]
    canvas.paste(Image.fromarray(np.repeat(ramp[None], bar_h, axis=0)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([0, 0, width - 1, bar_h - 1], outline=_MUTED)
    draw.text((0, bar_h + 3), "0 · low", font=font, fill=_MUTED)
    draw.text((width, bar_h + 3), "high · 1", font=font, fill=_MUTED, anchor="ra")
    return canvas


@dataclass
class _Panel:
    picture: Image.Image | None
    title: str = ""
    subtitle: str = ""
    warning: str = ""


def _draw_panel(panel: _Panel, width: int, pic_h: int) -> Image.Image:
    title_f, sub_f = _font(15, bold=True), _font(13)
    pad = 6
    h = pic_h + pad + 20 + 18 + (18 if panel.warning else 0)
    im = Image.new("RGB", (width, h), _PAPER)
    if panel.picture is not None:
        im.paste(panel.picture, ((width - panel.picture.width) // 2, 0))
    d = ImageDraw.Draw(im)
    y = pic_h + pad
    for text, font, colour in ((panel.title, title_f, _INK), (panel.subtitle, sub_f, _MUTED),
                               (panel.warning, sub_f, _WARN)):
        if text:
            d.text((width // 2, y), _fit(font, text, width - 4), font=font, fill=colour, anchor="ma")
        y += 20 if font is title_f else 18
    return im


def _token_subtitle(exp: "Explanation", row: int) -> str:
    # a given answer (explain(..., answer=...)) was never denoised: its tokens have no step
    parts = [f"step {exp.steps[row]}"] if row < len(exp.steps) and exp.steps[row] >= 0 else []
    if row < len(exp.scores) and exp.scores[row] is not None:
        parts.append(f"score {exp.scores[row]:.3g}")
    return " · ".join(parts)


def grid_image(exp: "Explanation", compare_raw: bool = False, cmap: str = DEFAULT_CMAP,
               alpha: float = DEFAULT_ALPHA, columns: int = 5) -> Image.Image:
    """The image followed by every word's overlay, captioned with the word and its commit step.

    With ``compare_raw`` every word's column shows its raw map (before the
    refinement modules) above the refined one.  A header gives the prompt and
    answer, a footer the colour scale.
    """
    scale = display_scale(exp.image.shape)
    pic = _resize(exp.image, scale)
    cell_w = max(pic.width, 160) + 12
    pic_h = pic.height
    # one column per group; a group is one panel, or a raw panel above a refined one
    groups: list[list[_Panel]] = [[_Panel(pic, "image", f"{exp.image_size[1]}×{exp.image_size[0]} px")]]
    if compare_raw:
        groups[0].append(_Panel(None))
    grounding = exp.grounding  # a word below the grounding threshold gets a warning line
    for row, token in enumerate(exp.tokens):
        word = f"{exp.token_indices[row] if row < len(exp.token_indices) else row}: {word_label(token)}"
        sub = _token_subtitle(exp, row)
        warn = "no evidence" if row < len(exp.degenerate) and exp.degenerate[row] else ""
        if row < len(grounding) and grounding[row]["flagged"]:
            warn = " · ".join(filter(None, (warn, f"ungrounded? {grounding[row]['score']:.2f}")))
        refined = _resize(overlay(exp.image, exp.map(row), cmap, alpha), scale)
        if compare_raw:
            raw = _resize(overlay(exp.image, exp.map(row, raw=True), cmap, alpha), scale)
            groups.append([_Panel(raw, word, "raw"), _Panel(refined, word, "refined · " + sub, warn)])
        else:
            groups.append([_Panel(refined, word, sub, warn)])

    columns = max(1, min(columns, len(groups)))
    drawn = [[_draw_panel(p, cell_w, pic_h) for p in g] for g in groups]
    cell_h = max(im.height for g in drawn for im in g)
    group_h = cell_h * len(drawn[0]) + (8 if compare_raw else 0)
    n_rows = -(-len(groups) // columns)
    gap, margin = 10, 16
    width = max(margin * 2 + columns * cell_w + (columns - 1) * gap, 440)

    head_f, body_f, small_f = _font(15, bold=True), _font(14), _font(12)
    text_w = width - 2 * margin
    header = [(label, _wrap(body_f, value, text_w - 70)) for label, value in (("Prompt", exp.prompt),
                                                                             ("Answer", exp.answer))]
    meta = f"model {exp.model} · method {exp.method}"
    modules = exp.settings.get("modules") if isinstance(exp.settings, dict) else None
    if modules is not None:
        meta += " · modules " + (", ".join(map(str, modules)) or "none")
    header_h = sum(20 * len(lines) + 4 for _, lines in header) + 22
    bar = colorbar(cmap, width=min(320, text_w - 200))
    height = margin + header_h + 8 + n_rows * group_h + (n_rows - 1) * gap + 8 + bar.height + 4 + margin

    canvas = Image.new("RGB", (width, height), _PAPER)
    d = ImageDraw.Draw(canvas)
    y = margin
    for label, lines in header:
        d.text((margin, y), label, font=head_f, fill=_INK)
        for line in lines:
            d.text((margin + 70, y), line, font=body_f, fill=_INK)
            y += 20
        y += 4
    d.text((margin, y), _fit(small_f, meta, text_w), font=small_f, fill=_MUTED)
    y += 22 + 8
    for i, group in enumerate(drawn):
        x = margin + (i % columns) * (cell_w + gap)
        top = y + (i // columns) * (group_h + gap)
        for j, im in enumerate(group):
            canvas.paste(im, (x, top + j * (cell_h + 8)))
    y += n_rows * group_h + (n_rows - 1) * gap + 8
    canvas.paste(bar, (margin, y))
    d.text((margin + bar.width + 12, y), f"map value ({cmap}, opacity {alpha:g})", font=small_f, fill=_MUTED)
    return canvas


# --------------------------------------------------------------- trajectory
def denoising_steps(exp: "Explanation") -> list[dict[str, Any]]:
    """Steps that committed answer tokens, in denoising order: ``{"step", "committed"}``.

    Uses ``exp.trajectory``; results without one fall back to the explained
    tokens' commit steps.
    """
    if exp.trajectory:
        return [{"step": int(s["step"]), "committed": [int(p) for p in s.get("committed", [])]}
                for s in exp.trajectory]
    by_step: dict[int, list[int]] = {}
    for idx, step in zip(exp.token_indices, exp.steps):
        if step >= 0:  # a given answer's tokens were never committed by a step
            by_step.setdefault(int(step), []).append(int(idx))
    return [{"step": s, "committed": sorted(c)} for s, c in sorted(by_step.items())]


def answer_words(exp: "Explanation") -> list[str]:
    """Every word of the answer canvas (explained or not), in reading order."""
    if exp.answer_tokens:
        return list(exp.answer_tokens)
    n = max(exp.token_indices, default=-1) + 1
    words = [""] * n
    for idx, tok in zip(exp.token_indices, exp.tokens):
        words[idx] = tok
    return words


def step_map(exp: "Explanation", committed: Sequence[int], raw: bool = False) -> np.ndarray | None:
    """Pixel-wise maximum of the maps of the explained tokens among ``committed`` (None if none is explained)."""
    rows = [exp.token_indices.index(p) for p in committed if p in exp.token_indices]
    if not rows:
        return None
    return np.max([exp.map(r, raw=raw) for r in rows], axis=0)


def _chip_layout(font, words: Sequence[str], width: int) -> tuple[list[tuple[int, int, int]], int]:
    """(x, y, w) of one chip per word, wrapped to ``width``; and the total height."""
    pad, gap, line_h = 6, 5, 26
    x = y = 0
    boxes = []
    for w in words:
        cw = _text_width(font, word_label(w, 18)) + 2 * pad
        if x > 0 and x + cw > width:
            x, y = 0, y + line_h
        boxes.append((x, y, cw))
        x += cw + gap
    return boxes, y + line_h


def trajectory_frames(exp: "Explanation", cmap: str = DEFAULT_CMAP, alpha: float = DEFAULT_ALPHA) -> list[Image.Image]:
    """One frame per denoising step that committed answer tokens, in denoising order.

    Each frame shows the map of the words committed at that step (their
    maximum when several) and the answer with the still-masked words as grey
    boxes, the words committed before in ink and the new ones highlighted.
    """
    steps = denoising_steps(exp)
    words = answer_words(exp)
    scale = display_scale(exp.image.shape, target=256, largest=320)
    pic_w = round(exp.image.shape[1] * scale)
    margin = 12
    width = max(pic_w, 300) + 2 * margin
    chip_f, title_f, small_f = _font(14), _font(15, bold=True), _font(12)
    boxes, chips_h = _chip_layout(chip_f, words, width - 2 * margin)
    pic_h = round(exp.image.shape[0] * scale)
    height = margin + 22 + pic_h + 10 + chips_h + margin
    frames = []
    done: set[int] = set()
    for k, entry in enumerate(steps):
        new = set(entry["committed"])
        m = step_map(exp, entry["committed"])
        rgb = exp.image if m is None else overlay(exp.image, m, cmap, alpha)
        frame = Image.new("RGB", (width, height), _PAPER)
        d = ImageDraw.Draw(frame)
        new_words = ", ".join(word_label(words[p]) for p in sorted(new) if p < len(words)) or "—"
        d.text((margin, margin), _fit(title_f, f"step {entry['step']}: {new_words}", width - 2 * margin - 50),
               font=title_f, fill=_INK)
        d.text((width - margin, margin + 2), f"{k + 1}/{len(steps)}", font=small_f, fill=_MUTED, anchor="ra")
        frame.paste(_resize(rgb, scale), ((width - pic_w) // 2, margin + 22))
        if m is None:
            d.text((width // 2, margin + 22 + pic_h - 18), "not explained", font=small_f, fill=_PAPER, anchor="ma",
                   stroke_width=2, stroke_fill=_INK)
        top = margin + 22 + pic_h + 10
        for p, ((x, y, cw), w) in enumerate(zip(boxes, words)):
            box = [margin + x, top + y, margin + x + cw, top + y + 22]
            if p in new:
                d.rounded_rectangle(box, radius=5, fill=_NEW)
                d.text((box[0] + 6, box[1] + 3), word_label(w, 18), font=chip_f, fill=_INK)
            elif p in done:
                d.text((box[0] + 6, box[1] + 3), word_label(w, 18), font=chip_f, fill=_INK)
            else:
                d.rounded_rectangle(box, radius=5, fill=_MASK)
        done |= new
        frames.append(frame)
    return frames


def write_gif(frames: Sequence[Image.Image], path: str | Path, duration_ms: int = 900) -> None:
    """An endlessly looping GIF with one frame per picture (the last one held longer)."""
    if not frames:
        raise VisualizationError("no denoising step committed an answer token: nothing to animate")
    durations = [duration_ms] * (len(frames) - 1) + [duration_ms * 3]
    # one palette for all frames: colours do not flicker between frames, and quantizing once
    # is ~10x faster than Pillow's per-frame adaptive palettes
    w, h = frames[0].size
    montage = Image.new("RGB", (w, h * len(frames)))
    for i, frame in enumerate(frames):
        montage.paste(frame, (0, i * h))
    palette = montage.quantize(255, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    indexed = [f.quantize(palette=palette, dither=Image.Dither.NONE) for f in frames]
    # no frame is merged away as a duplicate: every frame carries its own step caption
    indexed[0].save(path, save_all=True, append_images=indexed[1:], duration=durations, loop=0,
                    optimize=False, disposal=1)
