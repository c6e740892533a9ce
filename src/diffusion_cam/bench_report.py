"""The benchmark report: one self-contained HTML page with the summary table, bar charts and a gallery of each
method's best and worst items (their saved explanations, when the run kept them).

It reads saved explanations, so it lives apart from :mod:`diffusion_cam.report`, which
:class:`~diffusion_cam.explanation.Explanation` itself uses to draw its own page.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import DiffusionCamError, OutputError
from .explanation import Explanation
from .report import (COUNT_COLUMNS, METRICS, _finite, _kv_rows, _render, flatten, fmt, metric_label, metric_value,
                     token_data_uri)
from .visualize import DEFAULT_ALPHA, DEFAULT_CMAP, word_label


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


def _chart(title: str, labels: Sequence[str], values: Sequence[float | None], best: int | None) -> dict[str, Any]:
    """Geometry of a horizontal bar chart, drawn as inline SVG by the template (no plotting library)."""
    bar_h, gap, label_w, width = 18, 6, 130, 330
    plot_w = width - label_w - 56
    finite = [v for v in values if v is not None]
    lo = min(0.0, min(finite, default=0.0))
    hi = max(0.0, max(finite, default=0.0)) or 1.0
    span = (hi - lo) or 1.0
    zero_x = label_w + plot_w * (0.0 - lo) / span
    bars = []
    for i, (label, v) in enumerate(zip(labels, values)):
        bar = {"y": gap + i * (bar_h + gap), "label": label if len(label) <= 20 else label[:19] + "…", "value": v}
        if v is not None:
            w = max(abs(plot_w * v / span), 1)
            bar.update(x=round(min(zero_x, label_w + plot_w * (v - lo) / span), 1), w=round(w, 1), best=i == best)
        bars.append(bar)
    return {"title": title, "bars": bars, "width": width, "height": len(labels) * (bar_h + gap) + gap,
            "bar_h": bar_h, "label_w": label_w, "zero_x": round(zero_x, 1)}


def _best(values: Sequence[float | None], lower: bool) -> int | None:
    scored = [(v, i) for i, v in enumerate(values) if v is not None]
    if not scored:
        return None
    return (min(scored) if lower else max(scored))[1]


def _card(record: Mapping, primary: str, cache: dict, cmap: str, alpha: float) -> dict[str, Any]:

    card = {"value": metric_value(primary, (record.get("metrics") or {}).get(primary)), "item": record.get("item", "?"),
            "word": record.get("token"), "text": record.get("answer") or "", "uri": None, "problem": None}
    path = record.get("explanation")
    if path:
        try:
            if path not in cache:
                cache[path] = Explanation.load(path)
            exp = cache[path]
            row = exp.index_of(card["word"]) if card["word"] is not None else 0
            card.update(word=exp.tokens[row], text=card["text"] or exp.answer, uri=token_data_uri(exp, row, cmap, alpha))
        except DiffusionCamError as err:
            card["problem"] = str(err)
    if card["uri"] is None and not isinstance(card["word"], str):
        card["word"] = None  # a row index means nothing without the explanation it indexes
    card["word"] = None if card["word"] is None else word_label(card["word"])
    return card


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

    # the table in the bench tables' units, the best value of every measured column in bold
    numeric = [c for c in columns if c != "method" and any(_finite(r.get(c)) is not None for r in table)]
    best_row = {c: _best([_finite(r.get(c)) for r in table], c in lower) for c in numeric if c not in COUNT_COLUMNS}
    head = [{"label": metric_label(c) if c in METRICS else c, "num": c in numeric} for c in columns]
    body = [[{"text": fmt(metric_value(c, row.get(c))), "num": c in numeric,
              "best": best_row.get(c) == i and len(table) > 1} for c in columns] for i, row in enumerate(table)]
    charts = [_chart((metric_label(c) if c in METRICS else c) + (" (lower is better)" if c in lower else ""),
                     methods, [_finite(metric_value(c, r.get(c))) for r in table], best_row.get(c))
              for c in numeric if c not in COUNT_COLUMNS]

    # gallery: the best and the worst items of every method by the primary metric
    if primary is None:
        primary = next((m for m in ("f3", "obj_iou") if m in names), names[0] if names else None)
    sections = []
    if primary is not None and gallery > 0:
        cache: dict = {}
        for method in dict.fromkeys(str(r.get("method")) for r in records):
            scored = [r for r in records if str(r.get("method")) == method and not r.get("error")
                      and _finite((r.get("metrics") or {}).get(primary)) is not None]
            scored.sort(key=lambda r: (_finite(r["metrics"][primary]), str(r.get("item"))),
                        reverse=primary not in lower)
            if not scored:
                continue
            best = scored[:gallery]
            worst = scored[max(gallery, len(scored) - gallery):][::-1]  # never repeats a best item
            sections.append({"method": method, "best": [_card(r, primary, cache, cmap, alpha) for r in best],
                             "worst": [_card(r, primary, cache, cmap, alpha) for r in worst]})
    pictures = any(r.get("explanation") for r in records)
    failures = [r for r in records if r.get("error")]
    return _render("bench.html", title, heading=title, n_methods=len(methods),
                   n_items=len({str(r.get("item")) for r in records}), n_records=len(records), head=head, body=body,
                   charts=charts, sections=sections, pictures=pictures,
                   primary=None if primary is None else (metric_label(primary) if primary in METRICS else primary),
                   failures=failures, settings=_kv_rows(flatten(settings or {})))


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


# ----------------------------------------------------------------- writing
# (here, not in visualize: the report page is written with the pictures, and visualize stays below report)
