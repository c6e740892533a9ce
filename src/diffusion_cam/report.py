"""Self-contained HTML reports of one explanation (the benchmark report, built on these helpers: ``bench_report``).

A report is a single file: pictures are inlined as ``data:`` URIs, styles and
the small script are inline, and a Content-Security-Policy forbids every
network request (and every script but the report's own, by hash).  Pages are
jinja2 templates (``templates/``) rendered with autoescaping, so every string
from a user or a model is escaped; data handed to the script travels as JSON
made safe inside ``<script>``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.util
import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import jinja2
import numpy as np
from markupsafe import Markup
from PIL import Image

from .errors import OutputError
from .visualize import (DEFAULT_ALPHA, DEFAULT_CMAP, GIF_FILE, GRID_FILE, OVERLAY_PATTERN, REPORT_FILE,
                        VisualizationError, answer_words, colormap_lut, denoising_steps, grid_image, overlay,
                        overlay_filenames, step_map, trajectory_frames, word_label, write_gif)

if TYPE_CHECKING:  # pragma: no cover
    from .explanation import Explanation

#: pictures inlined in reports are at most this many pixels on their long side
MAX_SIDE = 512
#: columns of a benchmark summary that count things rather than measure them (not charted)
COUNT_COLUMNS = ("n", "items", "count", "failures", "errors", "failed")
#: how a metric reads in reports: its label and the factor to the unit of the bench tables (table.md)
METRICS: dict[str, tuple[str, float]] = {
    "obj_iou": ("Obj-IoU (%)", 100), "precision": ("Precision (%)", 100), "recall": ("Recall (%)", 100),
    "contrast": ("Contrast (×)", 1), "contrast_median": ("Contrast (median ×)", 1),
    "contrast_score": ("Contrast score (%)", 100), "concentration": ("Concen. (%)", 100),
    "f3": ("F3", 100), "f3_geometric": ("F3 (geometric)", 100), "f3_of_means": ("F3 (of means)", 100),
    "f3_mean": ("F3 (mean)", 100), "f3_mean_of_items": ("F3 (mean)", 100), "func_iou": ("Func-IoU (%)", 100),
    "func_iou_reference": ("Func-IoU (reference, %)", 100), "pointing": ("Pointing (%)", 100),
    "pointing_game": ("Pointing (%)", 100), "deletion_auc": ("Deletion AUC ↓", 1),
    "insertion_auc": ("Insertion AUC ↑", 1), "seconds": ("s / item", 1), "n": ("words", 1), "mode": ("scoring", 1),
}
#: prefixes of flattened metric keys, as read
_GROUPS = {"mean": "mean over words", "median": "median over words"}


# ------------------------------------------------------------------ helpers
@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("diffusion_cam", "templates"),
                             autoescape=jinja2.select_autoescape(["html"], default_for_string=True),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = fmt
    env.filters["label"] = word_label
    return env


def _source(name: str) -> str:
    """A template file's own text (the stylesheet, the script)."""
    env = _environment()
    return env.loader.get_source(env, name)[0]


def script_json(data: Any) -> str:
    """JSON that cannot end or open tags inside a ``<script>`` element."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for ch, code in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, code)
    return text


def image_data_uri(rgb: np.ndarray, max_side: int = MAX_SIDE) -> str:
    """An RGB picture as a ``data:`` URI: PNG when small, JPEG (quality 90) when large."""
    im = Image.fromarray(np.asarray(rgb, dtype=np.uint8))
    long_side = max(im.size)
    if long_side > max_side:
        s = max_side / long_side
        im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.Resampling.BOX)
    buf = io.BytesIO()
    if max(im.size) <= 256:
        im.save(buf, format="PNG", optimize=False)
        mime = "image/png"
    else:
        im.save(buf, format="JPEG", quality=90)
        mime = "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def _finite(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _json_safe(value: Any) -> Any:
    """Plain JSON values (NaN/inf become None; numpy scalars become Python numbers)."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _finite(value)
    if value is None or isinstance(value, str):
        return value
    return str(value)


def fmt(value: Any) -> str:
    """A value as shown in a table cell (escaped by the template)."""
    if value is None:
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "—" if not math.isfinite(float(value)) else f"{float(value):.4g}"
    if isinstance(value, (list, tuple, Mapping)):
        return json.dumps(_json_safe(value), ensure_ascii=False)
    return str(value)


def metric_label(key: str) -> str:
    """``"mean.f3_geometric"`` as read: ``"F3 (geometric), mean over words"``; unknown keys as given."""
    group, _, name = key.rpartition(".")
    label = METRICS.get(name, (name, 1))[0]
    return f"{label}, {_GROUPS.get(group, group)}" if group else label


def metric_value(key: str, value: Any) -> Any:
    """``value`` in the unit of the bench tables (fractions as percent)."""
    scale = METRICS.get(key.rpartition(".")[2], (None, 1))[1]
    x = _finite(value)
    return value if x is None or scale == 1 else round(x * scale, 2)


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested settings as ``("generation.steps", 8)`` rows."""
    rows: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            rows.extend(flatten(value, name + "."))
        else:
            rows.append((name, value))
    return rows


def _kv_rows(rows: Iterable[tuple[str, Any]]) -> list[dict[str, Any]]:
    return [{"key": k, "value": fmt(v), "num": _finite(v) is not None} for k, v in rows]


def _render(template: str, title: str, data: Any = None, script: str = "", **context: Any) -> str:
    from . import __version__

    script_src = f"'sha256-{base64.b64encode(hashlib.sha256(script.encode('utf-8')).digest()).decode()}'" \
        if script else "'none'"
    csp = (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src {script_src}; "
           "base-uri 'none'; form-action 'none'")
    return _environment().get_template(template).render(
        # the policy and the stylesheet are our own text: escaping would turn their quotes into entities
        csp=Markup(csp), version=__version__, title=title, css=Markup(_source("report.css")),
        # our own script and JSON made inert inside <script>: HTML-escaping would corrupt both
        script=Markup(script) if script else None, data=Markup(script_json(_json_safe(data))) if script else None,
        **context)


def index_html(entries: Sequence[Mapping[str, Any]], prompt: str) -> str:
    """One page listing the explanations of several images (``explain IMAGE IMAGE ...``).

    Each entry: ``image`` (the file given), ``folder`` (relative to the
    page), and either ``answer`` and ``thumbnail`` (an RGB array) with
    ``report`` (whether the folder has report.html), or ``error``.
    """
    rows = [{**e, "folder": str(e["folder"]).rstrip("/"),
             "thumb": image_data_uri(e["thumbnail"], 96) if e.get("thumbnail") is not None else None}
            for e in entries]
    return _render("index.html", "diffusion-cam explanations", rows=rows, prompt=prompt,
                   failed=sum("error" in e for e in entries))


def _colorbar(cmap: str) -> dict[str, str]:
    return {"uri": image_data_uri(np.repeat(colormap_lut(cmap)[None], 4, axis=0)), "name": cmap}


# -------------------------------------------------------- explanation report
def token_data_uri(exp: "Explanation", row: int, cmap: str = DEFAULT_CMAP, alpha: float = DEFAULT_ALPHA,
                   raw: bool = False) -> str:
    """The inlined overlay the report shows for explained word ``row``."""
    return image_data_uri(overlay(exp.image, exp.map(row, raw=raw), cmap, alpha))


def _rows(result: Any, n: int) -> list[dict[str, Any]]:
    per = result.get("per_token") if isinstance(result, Mapping) else None
    if isinstance(per, list) and len(per) == n and all(isinstance(p, Mapping) for p in per):
        return [dict(p) for p in per]
    return [{} for _ in range(n)]


def _per_token_metrics(exp: "Explanation") -> list[dict[str, Any]]:
    """Localisation metrics (``exp.evaluate``) and deletion / insertion AUCs (``faithfulness=``) per token."""
    n = len(exp.tokens)
    faithful = [{k: r[k] for k in ("deletion_auc", "insertion_auc") if k in r} for r in _rows(exp.faithfulness, n)]
    return [{**m, **f} for m, f in zip(_rows(exp.metrics, n), faithful)]


def explanation_data(exp: "Explanation", cmap: str = DEFAULT_CMAP, alpha: float = DEFAULT_ALPHA) -> dict[str, Any]:
    """What the report's script needs: words, their maps as data URIs, the denoising steps."""
    exp = exp.for_display()
    has_raw = exp.raw_differs()
    per_token = _per_token_metrics(exp)
    grounding = exp.grounding
    tokens = []
    for row, text in enumerate(exp.tokens):
        tokens.append({
            "row": row,
            "index": int(exp.token_indices[row]) if row < len(exp.token_indices) else row,
            "word": word_label(text, 60),
            "step": int(exp.steps[row]) if row < len(exp.steps) and exp.steps[row] >= 0 else None,
            "score": exp.scores[row] if row < len(exp.scores) else None,
            "degenerate": bool(exp.degenerate[row]) if row < len(exp.degenerate) else False,
            "metrics": per_token[row],
            "grounding": grounding[row]["score"] if row < len(grounding) else None,
            "ungrounded": bool(grounding[row]["flagged"]) if row < len(grounding) else False,
            "uri": token_data_uri(exp, row, cmap, alpha),
            "raw_uri": token_data_uri(exp, row, cmap, alpha, raw=True) if has_raw else None,
        })
    steps = []
    for entry in denoising_steps(exp):
        m = step_map(exp, entry["committed"])
        raw = step_map(exp, entry["committed"], raw=True) if has_raw else None
        steps.append({
            "step": entry["step"], "committed": entry["committed"],
            "uri": None if m is None else image_data_uri(overlay(exp.image, m, cmap, alpha)),
            "raw_uri": None if raw is None else image_data_uri(overlay(exp.image, raw, cmap, alpha)),
        })
    return {"tokens": tokens, "steps": steps, "words": [word_label(w, 60) for w in answer_words(exp)],
            "image": image_data_uri(exp.image), "first": _first_content_row(tokens)}


def _first_content_row(tokens: Sequence[Mapping[str, Any]]) -> int | None:
    """The word the report opens on: the first explained content word with a map (not "a" or "the")."""
    from .evaluation.words import content_words

    for t in tokens:
        if not t["degenerate"] and content_words(t["word"]):
            return t["row"]
    return tokens[0]["row"] if tokens else None


def explanation_html(exp: "Explanation", cmap: str = DEFAULT_CMAP, alpha: float = DEFAULT_ALPHA) -> str:
    """The interactive report of one explanation as one self-contained HTML page."""
    data = explanation_data(exp, cmap, alpha)
    rows_by_index = {t["index"]: t["row"] for t in data["tokens"]}
    chips = [{"word": word, "token": data["tokens"][rows_by_index[p]] if p in rows_by_index else None}
             for p, word in enumerate(data["words"])]
    metrics = {k: v for k, v in (exp.metrics or {}).items() if k != "per_token"}
    return _render(
        "explanation.html", f"diffusion-cam: {exp.answer}", data, _source("explanation.js"),
        exp=exp, view=data, chips=chips, first=None if data["first"] is None else data["tokens"][data["first"]],
        has_raw=any(t["raw_uri"] for t in data["tokens"]), pixelated=max(exp.image.shape[:2]) < 256,
        colorbar=_colorbar(cmap),
        metrics=_kv_rows((metric_label(k), metric_value(k, v)) for k, v in flatten(metrics)),
        settings=_kv_rows(flatten(exp.settings or {})))


def write_pictures(exp: "Explanation", out_dir: str | Path, compare_raw: bool = False, cmap: str = DEFAULT_CMAP,
                   alpha: float = DEFAULT_ALPHA) -> list[str]:
    """Write one overlay PNG per explained word, ``grid.png``, ``trajectory.gif`` and ``report.html``.

    Overlays left in ``out_dir`` by an earlier result (``overlay_NN_word.png``)
    are removed first, so the folder always describes ``exp``.  Returns the
    names of the files written, relative to ``out_dir``.
    """
    out = Path(out_dir)
    colormap_lut(cmap)  # fail on a bad colour map before writing anything
    exp = exp.for_display()  # a photo's maps are drawn at picture size, not at its full resolution
    if not 0.0 <= float(alpha) <= 1.0:
        raise VisualizationError(f"overlay opacity alpha must lie in [0, 1], got {alpha}")
    written: list[str] = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for old in out.iterdir():
            if OVERLAY_PATTERN.match(old.name) and old.is_file():
                old.unlink()
        for row, name in enumerate(overlay_filenames(exp.tokens)):
            Image.fromarray(overlay(exp.image, exp.map(row), cmap, alpha)).save(out / name)
            written.append(name)
        grid_image(exp, compare_raw=compare_raw, cmap=cmap, alpha=alpha).save(out / GRID_FILE)
        written.append(GRID_FILE)
        frames = trajectory_frames(exp, cmap, alpha)
        if frames:
            write_gif(frames, out / GIF_FILE)
            written.append(GIF_FILE)
        (out / REPORT_FILE).write_text(explanation_html(exp, cmap=cmap, alpha=alpha), encoding="utf-8")
        written.append(REPORT_FILE)
    except OSError as err:
        raise OutputError(f"cannot write pictures to {out}: {err.strerror or err}") from None
    return written


def _notebook_shell():
    """The running IPython shell, or None outside IPython (or when IPython is not installed)."""
    if importlib.util.find_spec("IPython") is None:
        return None
    from IPython import get_ipython

    return get_ipython()


def show(exp: "Explanation", cmap: str = DEFAULT_CMAP, alpha: float = DEFAULT_ALPHA, height: int = 760):
    """Show the interactive report: inline in a notebook, else in the web browser.

    In IPython the report is displayed in an isolated ``<iframe srcdoc>`` (its
    styles and script cannot clash with the notebook's) and the display
    object is returned; elsewhere the report is written to a temporary file,
    opened with :mod:`webbrowser`, and its path is returned.
    """
    import html

    doc = explanation_html(exp, cmap=cmap, alpha=alpha)
    if _notebook_shell() is not None:
        from IPython.display import HTML, display

        frame = HTML(f'<div><iframe srcdoc="{html.escape(doc, quote=True)}" style="width:100%;height:{int(height)}px;'
                     'border:1px solid #dee2e6;border-radius:6px"></iframe></div>')
        display(frame)
        return frame
    import tempfile
    import webbrowser

    fd, name = tempfile.mkstemp(prefix="diffusion-cam-", suffix=".html")
    with open(fd, "w", encoding="utf-8") as fh:
        fh.write(doc)
    webbrowser.open(Path(name).as_uri())
    return Path(name)
