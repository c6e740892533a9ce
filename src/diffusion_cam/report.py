"""Self-contained HTML reports: one explanation, or a benchmark run.

A report is a single file: pictures are inlined as ``data:`` URIs, styles and
the small script are inline, and a Content-Security-Policy forbids every
network request (and every script but the report's own, by hash).  Every
string that comes from a user or a model is escaped with :func:`html.escape`;
data handed to the script travels as JSON made safe inside ``<script>``.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import re
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from .errors import DiffusionCamError, OutputError
from .visualize import (DEFAULT_ALPHA, DEFAULT_CMAP, answer_words, colormap_lut, denoising_steps, overlay, step_map,
                        word_label)

if TYPE_CHECKING:  # pragma: no cover
    from .explanation import Explanation

#: pictures inlined in reports are at most this many pixels on their long side
MAX_SIDE = 512
#: columns of a benchmark summary that count things rather than measure them (not charted)
COUNT_COLUMNS = ("n", "items", "count", "failures", "errors", "failed")
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


# ------------------------------------------------------------------ helpers
def _template(name: str) -> str:
    return resources.files("diffusion_cam").joinpath("templates", name).read_text(encoding="utf-8")


def esc(value: Any) -> str:
    """Text safe inside HTML content and quoted attributes."""
    return html.escape(str(value), quote=True)


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
    """A value as shown in a table cell (not yet escaped)."""
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


def _kv_table(rows: Iterable[tuple[str, Any]], cls: str = "") -> str:
    body = "".join(f"<tr><th>{esc(k)}</th><td class=\"{'num' if _finite(v) is not None else ''}\">"
                   f"{esc(fmt(v))}</td></tr>" for k, v in rows)
    return f'<table class="kv {esc(cls)}">{body}</table>'


def _page(title: str, body: str, data: Any = None, script: str = "") -> str:
    from . import __version__

    script_src = f"'sha256-{base64.b64encode(hashlib.sha256(script.encode('utf-8')).digest()).decode()}'" \
        if script else "'none'"
    csp = (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src {script_src}; "
           "base-uri 'none'; form-action 'none'")
    scripts = ""
    if script:
        scripts = (f'<script type="application/json" id="dc-data">{script_json(_json_safe(data))}</script>\n'
                   f"<script>{script}</script>")
    values = {"csp": html.escape(csp, quote=False),  # our own text, no double quote in it
              "version": esc(__version__), "title": esc(title), "css": _template("report.css"),
              "body": body, "scripts": scripts}
    # one pass: text substituted in is never scanned for placeholders again
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], _template("page.html"))


def index_html(entries: Sequence[Mapping[str, Any]], prompt: str) -> str:
    """One page listing the explanations of several images (``explain IMAGE IMAGE ...``).

    Each entry: ``image`` (the file given), ``folder`` (relative to the
    page), and either ``answer`` and ``thumbnail`` (an RGB array) with
    ``report`` (whether the folder has report.html), or ``error``.
    """
    rows = []
    for e in entries:
        folder = str(e["folder"]).rstrip("/")
        if "error" in e:
            rows.append(f'<tr><td></td><td>{esc(e["image"])}</td><td class="error">{esc(e["error"])}</td><td></td></tr>')
            continue
        thumb = f'<img src="{image_data_uri(e["thumbnail"], 96)}" alt="">' if e.get("thumbnail") is not None else ""
        links = [f'<a href="{esc(folder)}/report.html">report</a>'] if e.get("report") else []
        links.append(f'<a href="{esc(folder)}/result.json">result.json</a>')
        rows.append(f'<tr><td>{thumb}</td><td>{esc(e["image"])}</td><td>{esc(e["answer"])}</td>'
                    f'<td>{" · ".join(links)}</td></tr>')
    failed = sum("error" in e for e in entries)
    summary = f"{len(entries)} images, prompt {esc(repr(prompt))}" + (f", {failed} failed" if failed else "")
    body = (f"<h1>diffusion-cam explanations</h1><p>{summary}</p>"
            "<table><thead><tr><th></th><th>image</th><th>answer</th><th></th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")
    return _page("diffusion-cam explanations", body)


def _colorbar_html(cmap: str) -> str:
    ramp = np.repeat(colormap_lut(cmap)[None], 4, axis=0)
    return (f'<div class="colorbar"><img alt="colour scale" src="{image_data_uri(ramp)}">'
            f'<div class="ends"><span>0 · low</span><span>map value ({esc(cmap)})</span><span>high · 1</span></div></div>')


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
            "image": image_data_uri(exp.image)}


def explanation_html(exp: "Explanation", cmap: str = DEFAULT_CMAP, alpha: float = DEFAULT_ALPHA) -> str:
    """The interactive report of one explanation as one self-contained HTML page."""
    data = explanation_data(exp, cmap, alpha)
    rows_by_index = {t["index"]: t["row"] for t in data["tokens"]}
    pixelated = ' class="pixelated"' if max(exp.image.shape[:2]) < 256 else ""

    chips = []
    for p, word in enumerate(data["words"]):
        if p in rows_by_index:
            row = rows_by_index[p]
            t = data["tokens"][row]
            cls = "chip degenerate" if t["degenerate"] else "chip"
            chips.append(f'<button type="button" class="{cls}" data-row="{row}" aria-pressed="false" '
                         f'title="step {esc(fmt(t["step"]))}">{esc(word)}</button>')
        else:
            chips.append(f'<span class="chip" title="not explained">{esc(word)}</span>')
    step_chips = "".join(f'<span class="chip" data-index="{p}">{esc(w)}</span>' for p, w in enumerate(data["words"]))

    first = data["tokens"][0] if data["tokens"] else None
    n_steps = len(data["steps"])
    has_raw = any(t["raw_uri"] for t in data["tokens"])
    stepper = ""
    if n_steps:
        stepper = (
            '<h2>Denoising order</h2><div class="steps">'
            '<button type="button" id="dc-prev" aria-label="previous step">◀</button>'
            f'<input type="range" id="dc-slider" min="0" max="{n_steps - 1}" value="0" step="1" '
            'aria-label="denoising step">'
            '<button type="button" id="dc-next" aria-label="next step">▶</button>'
            '<button type="button" id="dc-play">Play</button>'
            '<span class="where" id="dc-where"></span></div>'
            f'<div class="answer" id="dc-step-answer">{step_chips}</div>'
        )

    word_rows = "".join(
        f"<tr><td class=\"num\">{t['index']}</td><td>{esc(t['word'])}</td><td class=\"num\">{esc(fmt(t['step']))}</td>"
        f"<td class=\"num\">{esc(fmt(t['score']))}</td><td class=\"warn\">{'no evidence' if t['degenerate'] else ''}</td></tr>"
        for t in data["tokens"])
    words_table = ("<table><tr><th class=\"num\">position</th><th>word</th><th class=\"num\">commit step</th>"
                   f"<th class=\"num\">score</th><th></th></tr>{word_rows}</table>")

    metrics = {k: v for k, v in (exp.metrics or {}).items() if k != "per_token"}
    metrics_html = f"<h2>Metrics</h2>{_kv_table(flatten(metrics))}" if metrics else ""
    settings_html = _kv_table(flatten(exp.settings or {})) if exp.settings else "<p class=\"sub\">none recorded</p>"

    body = f"""
<h1>{esc(exp.answer) or "(empty answer)"}</h1>
<p class="sub">model {esc(exp.model)} · method {esc(exp.method)} · {len(exp.tokens)} explained word(s)</p>
<div class="layout">
  <div class="viewer">
    <figure>
      <img id="dc-map"{pixelated} src="{first['uri'] if first else data['image']}" alt="map">
      <figcaption class="caption" aria-live="polite">
        <div class="word" id="dc-caption-word">{esc(first['word']) if first else 'no explained word'}</div>
        <div class="detail" id="dc-caption-detail"></div>
      </figcaption>
    </figure>
    {_colorbar_html(cmap)}
    {'<label class="toggle"><input type="checkbox" id="dc-raw"> raw map (before refinement)</label>' if has_raw else ''}
  </div>
  <div>
    <h2>Prompt</h2>
    <p class="prompt" id="dc-prompt">{esc(exp.prompt)}</p>
    <h2>Answer — click a word to see its map</h2>
    <div class="answer" id="dc-answer">{''.join(chips)}</div>
    {stepper}
    <h2>Image</h2>
    <img class="thumb{' pixelated' if pixelated else ''}" src="{data['image']}" alt="input image">
  </div>
</div>
<h2>Words</h2>
{words_table}
{metrics_html}
<h2>Settings</h2>
{settings_html}
"""
    return _page(f"diffusion-cam: {exp.answer}", body, data, _template("explanation.js"))


# ---------------------------------------------------------- benchmark report
def _read_records(directory: Path) -> tuple[list[dict], list[dict] | None, dict]:
    try:
        if (directory / "records.jsonl").is_file():
            lines = (directory / "records.jsonl").read_text(encoding="utf-8").splitlines()
            records = [json.loads(line) for line in lines if line.strip()]
        elif (directory / "records.json").is_file():
            loaded = json.loads((directory / "records.json").read_text(encoding="utf-8"))
            records = loaded["records"] if isinstance(loaded, Mapping) else loaded
        else:
            raise OutputError(f"{directory} holds no benchmark records (records.jsonl or records.json)")
        summary, settings = None, {}
        if (directory / "summary.json").is_file():
            loaded = json.loads((directory / "summary.json").read_text(encoding="utf-8"))
            summary = loaded.get("summary", loaded.get("rows")) if isinstance(loaded, Mapping) else loaded
            settings = loaded.get("settings", {}) if isinstance(loaded, Mapping) else {}
    except (OSError, ValueError, KeyError) as err:
        raise OutputError(f"{directory}: cannot read benchmark results ({err})") from None
    for r in records:
        path = r.get("explanation")
        if path and not Path(path).is_absolute():
            r["explanation"] = str(directory / path)
    return records, summary, settings


def _metric_names(records: Sequence[Mapping], summary: Sequence[Mapping] | None) -> list[str]:
    names: list[str] = []
    for r in records:
        for k, v in (r.get("metrics") or {}).items():
            if k not in names and _finite(v) is not None:
                names.append(k)
    return names


def summarize(records: Sequence[Mapping], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """Per method: items, failures and the mean of every metric over the items that have it."""
    methods: list[str] = []
    for r in records:
        if str(r.get("method")) not in methods:
            methods.append(str(r.get("method")))
    rows = []
    for method in methods:
        mine = [r for r in records if str(r.get("method")) == method]
        ok = [r for r in mine if not r.get("error")]
        row: dict[str, Any] = {"method": method, "n": len(ok), "failures": len(mine) - len(ok)}
        for name in metrics:
            vals = [v for v in (_finite((r.get("metrics") or {}).get(name)) for r in ok) if v is not None]
            row[name] = float(np.mean(vals)) if vals else None
        rows.append(row)
    return rows


def _svg_bars(title: str, labels: Sequence[str], values: Sequence[float | None], best: int | None) -> str:
    """A horizontal bar chart as inline SVG (drawn here: no plotting library needed)."""
    bar_h, gap, label_w, width = 18, 6, 130, 330
    plot_w = width - label_w - 56
    finite = [v for v in values if v is not None]
    lo = min(0.0, min(finite, default=0.0))
    hi = max(0.0, max(finite, default=0.0)) or 1.0
    span = (hi - lo) or 1.0
    zero_x = label_w + plot_w * (0.0 - lo) / span
    height = len(labels) * (bar_h + gap) + gap
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{esc(title)}" font-size="12" font-family="system-ui, DejaVu Sans, sans-serif">']
    for i, (label, v) in enumerate(zip(labels, values)):
        y = gap + i * (bar_h + gap)
        short = label if len(label) <= 20 else label[:19] + "…"
        parts.append(f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end" fill="#212529">{esc(short)}</text>')
        if v is None:
            parts.append(f'<text x="{label_w + 4}" y="{y + 13}" fill="#6c757d">—</text>')
            continue
        x0 = min(zero_x, label_w + plot_w * (v - lo) / span)
        w = abs(plot_w * v / span)
        colour = "#0d6efd" if i == best else "#9ec5fe"
        parts.append(f'<rect x="{x0:.1f}" y="{y}" width="{max(w, 1):.1f}" height="{bar_h}" rx="3" fill="{colour}"/>')
        parts.append(f'<text x="{x0 + max(w, 1) + 4:.1f}" y="{y + 13}" fill="#212529">{esc(fmt(v))}</text>')
    parts.append(f'<line x1="{zero_x:.1f}" x2="{zero_x:.1f}" y1="0" y2="{height}" stroke="#adb5bd"/></svg>')
    return f'<div class="chart"><h3>{esc(title)}</h3>{"".join(parts)}</div>'


def _best(values: Sequence[float | None], lower: bool) -> int | None:
    scored = [(v, i) for i, v in enumerate(values) if v is not None]
    if not scored:
        return None
    return (min(scored) if lower else max(scored))[1]


def _card(record: Mapping, primary: str, cache: dict, cmap: str, alpha: float) -> str:
    from .explanation import Explanation

    value = (record.get("metrics") or {}).get(primary)
    picture = '<div class="missing">no saved explanation</div>'
    word = record.get("token")
    text = record.get("answer") or ""
    path = record.get("explanation")
    if path:
        try:
            if path not in cache:
                cache[path] = Explanation.load(path)
            exp = cache[path]
            row = exp.index_of(word) if word is not None else 0
            word = exp.tokens[row]
            text = text or exp.answer
            picture = f'<img src="{token_data_uri(exp, row, cmap, alpha)}" alt="map of {esc(word_label(word))}">'
        except DiffusionCamError as err:
            picture = f'<div class="missing">{esc(err)}</div>'
    word_html = f" · <b>{esc(word_label(word))}</b>" if word is not None else ""
    return (f'<div class="card">{picture}<div><span class="value">{esc(primary)} {esc(fmt(value))}</span></div>'
            f'<div>item {esc(record.get("item", "?"))}{word_html}</div>'
            f'<div class="text">{esc(text)}</div></div>')


def bench_html(records: Sequence[Mapping], summary: Sequence[Mapping] | None = None, *,
               metrics: Sequence[str] | None = None, primary: str | None = None,
               lower_is_better: Sequence[str] = ("deletion_auc", "seconds", "seconds_per_item", "time_s"),
               title: str = "diffusion-cam benchmark", settings: Mapping[str, Any] | None = None,
               gallery: int = 3, cmap: str = DEFAULT_CMAP, alpha: float = DEFAULT_ALPHA) -> str:
    """The benchmark report as one self-contained HTML page; see :func:`bench_report`."""
    records = [dict(r) for r in records]
    names = list(metrics) if metrics is not None else _metric_names(records, summary)
    table = [dict(r) for r in summary] if summary is not None else summarize(records, names)
    columns: list[str] = []
    for row in table:
        for k in row:
            if k not in columns:
                columns.append(k)
    if "method" in columns:
        columns.remove("method")
        columns.insert(0, "method")
    lower = set(lower_is_better)
    methods = [str(r.get("method", "?")) for r in table]

    # table, the best value of every measured column in bold
    numeric = [c for c in columns if c != "method" and any(_finite(r.get(c)) is not None for r in table)]
    best_row = {c: _best([_finite(r.get(c)) for r in table], c in lower) for c in numeric if c not in COUNT_COLUMNS}
    head = "".join(f'<th class="{"num" if c in numeric else ""}">{esc(c)}</th>' for c in columns)
    body_rows = []
    for i, row in enumerate(table):
        cells = []
        for c in columns:
            cls = "num" if c in numeric else ""
            if best_row.get(c) == i and len(table) > 1:
                cls += " best"
            cells.append(f'<td class="{cls}">{esc(fmt(row.get(c)))}</td>')
        body_rows.append(f"<tr>{''.join(cells)}</tr>")
    summary_html = f"<table><tr>{head}</tr>{''.join(body_rows)}</table>"

    charts = "".join(
        _svg_bars(c + (" (lower is better)" if c in lower else ""), methods, [_finite(r.get(c)) for r in table],
                  best_row.get(c))
        for c in numeric if c not in COUNT_COLUMNS)

    # gallery: the best and the worst items of every method by the primary metric
    if primary is None:
        primary = next((m for m in ("f3", "obj_iou") if m in names), names[0] if names else None)
    gallery_html = ""
    if primary is not None and gallery > 0:
        cache: dict = {}
        sections = []
        for method in dict.fromkeys(str(r.get("method")) for r in records):
            scored = [r for r in records if str(r.get("method")) == method and not r.get("error")
                      and _finite((r.get("metrics") or {}).get(primary)) is not None]
            scored.sort(key=lambda r: (_finite(r["metrics"][primary]), str(r.get("item"))),
                        reverse=primary not in lower)
            if not scored:
                continue
            best = scored[:gallery]
            worst = scored[max(gallery, len(scored) - gallery):][::-1]  # never repeats a best item
            part = f'<h3>{esc(method)}</h3><p class="sub">best by {esc(primary)}</p><div class="gallery">'
            part += "".join(_card(r, primary, cache, cmap, alpha) for r in best) + "</div>"
            if worst:
                part += f'<p class="sub">worst by {esc(primary)}</p><div class="gallery">'
                part += "".join(_card(r, primary, cache, cmap, alpha) for r in worst) + "</div>"
            sections.append(part)
        gallery_html = "<h2>Gallery</h2>" + "".join(sections) if sections else ""

    failures = [r for r in records if r.get("error")]
    failures_html = ""
    if failures:
        rows = "".join(f"<tr><td>{esc(r.get('method', '?'))}</td><td>{esc(r.get('item', '?'))}</td>"
                       f"<td class=\"warn\">{esc(r['error'])}</td></tr>" for r in failures)
        failures_html = f"<h2>Failures ({len(failures)})</h2><table><tr><th>method</th><th>item</th><th>reason</th></tr>{rows}</table>"

    n_items = len({(str(r.get("item"))) for r in records})
    body = f"""
<h1>{esc(title)}</h1>
<p class="sub">{len(methods)} method(s) · {n_items} item(s) · {len(records)} record(s)</p>
<h2>Summary</h2>
{summary_html}
{f'<h2>Charts</h2><div class="charts">{charts}</div>' if charts else ''}
{gallery_html}
{failures_html}
{f'<h2>Settings</h2>{_kv_table(flatten(settings))}' if settings else ''}
"""
    return _page(title, body)


def bench_report(results: str | Path | Sequence[Mapping] | Mapping[str, Any], out_path: str | Path, *,
                 summary: Sequence[Mapping] | None = None, **options: Any) -> Path:
    """Write ``report.html`` for a benchmark run: summary table, bar charts, best/worst gallery.

    ``results`` is one of

    - a list of per-item records (dicts)::

          {"method": "diffusion-cam",              # required
           "item": "scene-0007/q2",                # item id (str or int)
           "metrics": {"f3": 0.61, "obj_iou": 0.48, ...},   # numbers; None/NaN = not measured
           "explanation": "items/dc/0007",         # optional: a directory written by Explanation.save
           "token": "circle",                      # optional: word (or index) the gallery shows; default the first
           "answer": "a red circle",               # optional text for the gallery card
           "error": "reason"}                      # optional: the item failed (listed, not averaged)

    - a mapping ``{"records": [...], "summary": [...], "settings": {...}}``;
    - a directory holding ``records.jsonl`` (one record per line) or
      ``records.json`` and optionally ``summary.json`` (a list of rows, or
      ``{"summary": [...], "settings": {...}}``); relative ``explanation``
      paths are read relative to that directory.

    ``summary`` is the results table: a list of rows (dicts) with a
    ``"method"`` key and one key per column, shown as given and charted column
    by column (count columns such as ``n``/``failures`` are not charted).
    Without one, the mean of every metric per method is computed from the
    records.  Options (see :func:`bench_html`): ``metrics`` (which record
    metrics to use), ``primary`` (the gallery's ranking metric; default
    ``f3``, else ``obj_iou``, else the first), ``lower_is_better`` (column
    names where smaller wins), ``title``, ``settings`` (dict shown as a
    table), ``gallery`` (items per side, default 3), ``cmap``, ``alpha``.

    If ``out_path`` is a directory (or has no ``.html`` suffix) the file is
    ``out_path/report.html``.  Returns the path written.
    """
    settings = options.pop("settings", None)
    if isinstance(results, (str, Path)):
        records, file_summary, file_settings = _read_records(Path(results))
        summary = summary if summary is not None else file_summary
        settings = settings if settings is not None else file_settings
    elif isinstance(results, Mapping):
        records = list(results.get("records", []))
        summary = summary if summary is not None else results.get("summary")
        settings = settings if settings is not None else results.get("settings")
    else:
        records = list(results)
    out = Path(out_path)
    if out.suffix.lower() != ".html":
        out = out / "report.html"
    doc = bench_html(records, summary, settings=settings, **options)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(doc, encoding="utf-8")
    except OSError as err:
        raise OutputError(f"cannot write the benchmark report to {out}: {err.strerror or err}") from None
    return out
