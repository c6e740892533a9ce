"""Results tables of a bench run, built from its JSON-lines records only.

Word-level aggregation: every scored word (``object`` and ``count`` units) is
one sample of Obj-IoU, Contrast, Concentration and F3; "F3 (of means)" is F3
of the dataset means (the paper's tables), "F3 (mean)" the mean of per-word
F3.  Contrast is a ratio whose denominator is the map's mean outside the
referent (+1e-8): a map that is exactly zero there scores ~1e8, so its mean
over words can be dominated by a few such maps (and then saturates the
contrast term of "F3 (of means)"); the median is shown beside it.  The pointing game is over object words (colour / shape words on Shapes,
nouns elsewhere), Func-IoU over function words, deletion / insertion AUC over
scored words.  Seconds per item = generation + raw maps + refinement, as a
user running that method alone would pay (shared work is counted for every
method that uses it).
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import OutputError
from ..metrics import aggregate
from .records import read_records, slug

CONFIG_FILE = "bench.json"
_WORD_KEYS = ("obj_iou", "precision", "recall", "contrast", "contrast_score", "concentration", "f3")

#: (key, header, scale, digits) of the main table
MAIN_COLUMNS = (
    ("obj_iou", "Obj-IoU (%)", 100, 2),
    ("contrast", "Contrast (mean ×)", 1, 2),
    ("contrast_median", "Contrast (median ×)", 1, 2),
    ("concentration", "Concen. (%)", 100, 2),
    ("f3_of_means", "F3 (of means)", 100, 2),
    ("f3_mean", "F3 (mean)", 100, 2),
    ("func_iou", "Func-IoU (%)", 100, 2),
    ("pointing", "Pointing (%)", 100, 1),
    ("deletion_auc", "Deletion AUC ↓", 1, 4),
    ("insertion_auc", "Insertion AUC ↑", 1, 4),
    ("seconds", "s / item", 1, 3),
    ("words", "words", 1, 0),
    ("items", "items ok/skip/fail", None, None),
)
ABLATION_COLUMNS = tuple(c for c in MAIN_COLUMNS if c[0] in (
    "obj_iou", "contrast", "contrast_median", "concentration", "f3_of_means", "f3_mean", "pointing", "deletion_auc",
    "insertion_auc"))


def _mean(values: Sequence[float]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def summarize(records: Sequence[dict[str, Any]], label: str) -> dict[str, Any]:
    """One table row: the aggregate of ``label``'s records."""
    mine = [r for r in records if r["method"] == label]
    ok = [r for r in mine if r["status"] == "ok"]
    units = [u for r in ok for u in r.get("units", [])]
    objects = [u for u in units if u["kind"] == "object"]
    status = Counter(r["status"] for r in mine)
    row: dict[str, Any] = {"method": label, "n_ok": status["ok"], "n_skipped": status["skipped"],
                           "n_failed": status["failed"], "words": len(units), "object_words": len(objects)}
    row["items"] = f"{status['ok']}/{status['skipped']}/{status['failed']}"
    if units:
        agg = aggregate([{k: u[k] for k in _WORD_KEYS} for u in units])
        row.update({k: agg[k] for k in ("obj_iou", "precision", "recall", "contrast", "concentration")})
        row["contrast_median"] = float(np.median([u["contrast"] for u in units]))
        row["f3_of_means"] = agg["f3_of_means"]
        row["f3_mean"] = agg["f3_mean_of_items"]
        row["obj_iou_objects"] = _mean([u["obj_iou"] for u in objects])
    row["pointing"] = _mean([float(u["pointing"]) for u in objects])
    row["pointing_all"] = _mean([float(u["pointing"]) for u in units])
    row["func_iou"] = _mean([f["func_iou"] for r in ok for f in r.get("function", [])])
    row["deletion_auc"] = _mean([u.get("deletion_auc") for u in units])
    row["insertion_auc"] = _mean([u.get("insertion_auc") for u in units])
    row["seconds"] = _mean([r.get("seconds") for r in ok])
    # share of answers equal to the dataset's reference (meaningful where answers are exact, as on Shapes)
    row["answer_exact"] = _mean([float(r["answer"] == r["reference"]) for r in mine
                                 if r.get("reference") is not None and "answer" in r])
    return row


def _fmt(value: Any, scale, digits) -> str:
    if value is None:
        return "–"
    if scale is None:
        return str(value)
    if digits == 0:
        return str(int(value))
    if abs(value * scale) >= 1e4:  # a mean Contrast blown up by maps with an all-zero background
        return f"{value * scale:.1e}"
    return f"{value * scale:.{digits}f}"


def markdown(rows: Sequence[dict[str, Any]], columns=MAIN_COLUMNS, first: str = "Method", key: str = "method") -> str:
    head = [first] + [c[1] for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * len(columns)) + "|"]
    for r in rows:
        lines.append("| " + " | ".join([str(r[key])] + [_fmt(r.get(c[0]), c[2], c[3]) for c in columns]) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[dict[str, Any]], first: str = "method") -> str:
    keys = [first] + sorted({k for r in rows for k in r} - {first})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in keys})
    return buf.getvalue()


def failures(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Failed and skipped records grouped by (method, status, reason) with counts and example items."""
    groups: dict[tuple, list[str]] = {}
    for r in records:
        if r["status"] != "ok":
            groups.setdefault((r["method"], r["status"], r.get("reason", "")), []).append(r["item"])
    return [{"method": m, "status": s, "reason": why, "count": len(items), "examples": items[:3]}
            for (m, s, why), items in sorted(groups.items(), key=lambda kv: (kv[0][0], -len(kv[1]), kv[0][2]))]


def load_config(out: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(out) / CONFIG_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OutputError(f"{out} is not a bench run: {CONFIG_FILE} is missing") from None
    except (OSError, json.JSONDecodeError) as err:
        raise OutputError(f"cannot read {Path(out) / CONFIG_FILE}: {err}") from None


def build_tables(out: Path) -> dict[str, Any]:
    """Main and ablation rows, failures and completeness, from the run's records."""
    out = Path(out)
    config = load_config(out)
    records = read_records(out)
    main = [summarize(records, label) for label in config["main"]]
    ablation = [{"config": row, **summarize(records, label)} for row, label in config.get("ablation", [])]
    expected = int(config["dataset"]["items"]) * len(config["methods"])
    return {"config": config, "main": main, "ablation": ablation, "failures": failures(records),
            "records": len(records), "expected_records": expected, "complete": len(records) == expected}


def _text(tables: dict[str, Any]) -> str:
    cfg = tables["config"]
    ds = cfg["dataset"]
    parts = [f"# Bench: {ds['name']} ({ds['items']} items), model {cfg['model']['name']}\n"]
    if not tables["complete"]:
        parts.append(f"\n**Incomplete run**: {tables['records']} of {tables['expected_records']} records.\n")
    parts.append("\n## Main table\n\n" + markdown(tables["main"]))
    if tables["ablation"]:
        parts.append("\n## Ablation (Diffusion-CAM modules)\n\n"
                     + markdown(tables["ablation"], ABLATION_COLUMNS, "Config.", "config"))
    if tables["failures"]:
        parts.append("\n## Items not scored\n\n| method | status | reason | count | e.g. |\n|---|---|---|---:|---|\n")
        for f in tables["failures"]:
            parts.append(f"| {f['method']} | {f['status']} | {f['reason']} | {f['count']} | {', '.join(f['examples'])} |\n")
    return "".join(parts)


#: the main table's columns drawn in main.png (all in %)
CHART_KEYS = (("obj_iou", "Obj-IoU"), ("concentration", "Concentration"), ("f3_of_means", "F3 (of means)"),
              ("f3_mean", "F3 (mean of words)"), ("pointing", "Pointing game"))
#: bar colours of the Pillow chart (matplotlib's default cycle, so both charts read alike)
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def bar_chart(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Grouped bars (Obj-IoU, Concentration, both F3, pointing game; %) per method: matplotlib's when it is
    installed, else drawn with Pillow."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _pillow_bar_chart(rows, path, title)
    keys = CHART_KEYS
    fig, ax = plt.subplots(figsize=(9, 3.6), dpi=120)
    width = 0.8 / max(len(rows), 1)
    x = np.arange(len(keys))
    for i, r in enumerate(rows):
        vals = [100 * (r.get(k) or 0.0) for k, _ in keys]
        bars = ax.bar(x + (i - (len(rows) - 1) / 2) * width, vals, width, label=r["method"])
        # one decimal: a bar just under a round target must not read as on it
        ax.bar_label(bars, fmt="%.1f", fontsize=5, padding=1)
    ax.set_xticks(x, [name for _, name in keys])
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7, ncols=min(len(rows), 5), loc="upper center", bbox_to_anchor=(0.5, -0.12), frameon=False)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    # fixed metadata: the same table gives the same bytes
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return path


def _pillow_bar_chart(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """The grouped bars of :func:`bar_chart` drawn with Pillow (no matplotlib needed)."""
    from PIL import Image, ImageDraw

    from ..visualize import _font

    width, height, left, top, bottom = 1080, 432, 56, 34, 96
    plot_w, plot_h = width - left - 16, height - top - bottom
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    small, normal = _font(11), _font(13)
    if title:
        draw.text((width // 2, 8), title, fill="black", font=normal, anchor="mt")
    for pct in range(0, 101, 20):  # y axis in %, as matplotlib's chart (0..105)
        y = top + plot_h - plot_h * pct / 105
        draw.line([(left, y), (left + plot_w, y)], fill="#e0e0e0")
        draw.text((left - 6, y), str(pct), fill="black", font=small, anchor="rm")
    draw.text((12, top + plot_h // 2), "%", fill="black", font=normal, anchor="mm")
    group_w = plot_w / len(CHART_KEYS)
    bar_w = 0.8 * group_w / max(len(rows), 1)
    for g, (key, name) in enumerate(CHART_KEYS):
        x0 = left + g * group_w + 0.1 * group_w
        for i, r in enumerate(rows):
            value = 100 * (r.get(key) or 0.0)
            x = x0 + i * bar_w
            y = top + plot_h - plot_h * min(value, 105) / 105
            draw.rectangle([x, y, x + bar_w - 1, top + plot_h], fill=_COLOURS[i % len(_COLOURS)])
            # one decimal: a bar just under a round target must not read as on it
            draw.text((x + bar_w / 2, y - 2), f"{value:.1f}", fill="black", font=_font(9), anchor="mb")
        draw.text((left + (g + 0.5) * group_w, top + plot_h + 6), name, fill="black", font=small, anchor="mt")
    draw.line([(left, top), (left, top + plot_h), (left + plot_w, top + plot_h)], fill="black")
    x = left
    for i, r in enumerate(rows):  # legend below the plot
        label = str(r["method"])
        draw.rectangle([x, height - 30, x + 12, height - 18], fill=_COLOURS[i % len(_COLOURS)])
        draw.text((x + 16, height - 24), label, fill="black", font=small, anchor="lm")
        x += 16 + int(small.getlength(label)) + 18
    img.save(path, format="PNG")
    return path


def _report(out: Path, tables: dict[str, Any]) -> Path | None:
    """``report.html`` through :func:`diffusion_cam.bench_report.bench_report`, if that module is available."""
    try:
        from ..bench_report import bench_report
    except ImportError:
        return None
    records = []
    for r in read_records(out):
        units = r.get("units") or []
        rec: dict[str, Any] = {"method": r["method"], "item": r["item"], "answer": r.get("answer", "")}
        if r["status"] != "ok":
            rec["error"] = f"{r['status']}: {r.get('reason', '')}"
        else:
            rec["metrics"] = {k: _mean([u.get(k) for u in units]) for k in
                              ("f3", "obj_iou", "concentration", "deletion_auc", "insertion_auc")}
            best = max(units, key=lambda u: u["f3"], default=None)
            if best is not None:
                rec["token"] = int(best["token"])  # row of the explanation (every answer token is explained)
            exp_dir = out / "explanations" / f"{r['index']:06d}" / slug(r["method"])
            if exp_dir.exists():
                rec["explanation"] = str(exp_dir)
        records.append(rec)
    keep = ("method", "obj_iou", "contrast", "concentration", "f3_of_means", "func_iou", "pointing",
            "deletion_auc", "insertion_auc", "seconds")
    summary = [{k: r.get(k) for k in keep} for r in tables["main"]]
    return bench_report(records, out / "report.html", summary=summary, settings=tables["config"],
                        lower_is_better=["deletion_auc", "seconds"],
                        title=f"Bench: {tables['config']['dataset']['name']}")


def write_tables(out: Path, report: bool = True) -> dict[str, Any]:
    """Write ``table.md``, ``table.csv``, ``table.json`` (+ ``ablation.*``; with ``report``, ``main.png`` and ``report.html``)."""
    out = Path(out)
    tables = build_tables(out)
    files = {"table.md": _text(tables), "table.csv": to_csv(tables["main"]),
             "table.json": json.dumps({k: v for k, v in tables.items()}, indent=2, sort_keys=True) + "\n"}
    if tables["ablation"]:
        files["ablation.csv"] = to_csv(tables["ablation"], "config")
    try:
        for name, text in files.items():
            (out / name).write_text(text, encoding="utf-8")
    except OSError as err:
        raise OutputError(f"cannot write tables to {out}: {err.strerror or err}") from None
    written = list(files)
    if report:
        bar_chart(tables["main"], out / "main.png", f"{tables['config']['dataset']['name']}: main table")
        written.append("main.png")
    if report:
        try:
            if _report(out, tables) is not None:
                written.append("report.html")
        except Exception as err:  # the tables are the product; a report problem must not lose them
            print(f"warning: report.html not written ({type(err).__name__}: {err})")
    tables["written"] = written
    return tables
