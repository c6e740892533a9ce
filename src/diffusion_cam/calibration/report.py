"""The calibration's HTML page: every configuration's label-free score, the chosen one marked."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..report import _kv_rows, _render, fmt

HEAD = ("rank", "configuration", "stage", "insertion − deletion", "± sd", "deletion AUC ↓", "insertion AUC ↑",
        "degenerate maps")


def _bars(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Geometry of horizontal bars of insertion − deletion, one per configuration, best first (drawn as SVG)."""
    bar_h, gap, label_w, plot_w = 16, 4, 330, 330
    values = [r["score"] for r in rows]
    lo, hi = min(0.0, *values), max(0.0, *values)
    span = (hi - lo) or 1.0
    zero_x = label_w + plot_w * (0 - lo) / span
    bars = []
    for i, r in enumerate(rows):
        v = r["score"]
        x0 = min(zero_x, label_w + plot_w * (v - lo) / span)
        w = max(abs(plot_w * v / span), 1)
        bars.append({"y": 4 + i * (bar_h + gap), "label": r["label"], "x": round(x0, 1), "w": round(w, 1),
                     "text_x": round(x0 + w + 4, 1), "value": fmt(v), "chosen": i == 0})
    return {"bars": bars, "bar_h": bar_h, "label_w": label_w, "zero_x": round(zero_x, 1),
            "width": label_w + plot_w + 110, "height": len(rows) * (bar_h + gap) + gap + 18,
            "axis_x": round(label_w + plot_w / 2)}


def calibration_html(profile: Mapping[str, Any]) -> str:
    rows = profile["sweep"]
    crit = profile["criterion"]
    summary = _kv_rows([
        ("model", profile["model"]["name"]),
        ("chosen", rows[0]["label"]),
        ("images", len(profile["images"])),
        ("prompts", "; ".join(profile["prompts"])),
        ("answers explained", profile["answers"]),
        ("criterion", f"{crit['score']}, {crit['fill']} fill, {crit['fractions']} fractions, {crit['averaged']}"),
        ("seconds", profile["seconds"]),
        ("package version", profile["package_version"]),
    ])
    table = [{"rank": r["rank"], "label": r["label"], "stage": r["stage"], "score": fmt(r["score"]),
              "sd": fmt(r["score_sd"]), "deletion": fmt(r["deletion_auc"]), "insertion": fmt(r["insertion_auc"]),
              "degenerate": f"{r['degenerate']:.0%}", "best": r["rank"] == 1} for r in rows]
    name = profile["model"]["name"]
    return _render("calibration.html", f"diffusion-cam calibration: {name}", model=name, summary=summary,
                   chart=_bars(rows), head=HEAD, rows=table)
