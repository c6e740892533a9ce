"""The calibration's HTML page: every configuration's label-free score, the chosen one marked."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..report import _kv_table, _page, esc, fmt


def _bars(rows: Sequence[Mapping[str, Any]]) -> str:
    """Horizontal bars of insertion - deletion, one per configuration, best first (inline SVG)."""
    bar_h, gap, label_w, plot_w = 16, 4, 330, 330
    values = [r["score"] for r in rows]
    lo, hi = min(0.0, *values), max(0.0, *values)
    span = (hi - lo) or 1.0
    zero_x = label_w + plot_w * (0 - lo) / span
    height = len(rows) * (bar_h + gap) + gap + 18
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + plot_w + 110}" height="{height}" '
             'role="img" aria-label="label-free score of every configuration" font-size="12" '
             'font-family="system-ui, DejaVu Sans, sans-serif">']
    for i, r in enumerate(rows):
        y = gap + i * (bar_h + gap)
        v = r["score"]
        x0 = min(zero_x, label_w + plot_w * (v - lo) / span)
        w = max(abs(plot_w * v / span), 1)
        chosen = i == 0
        weight = ' font-weight="bold"' if chosen else ""
        parts.append(f'<text x="{label_w - 6}" y="{y + 12}" text-anchor="end" fill="#212529"{weight}>'
                     f'{esc(r["label"])}</text>')
        parts.append(f'<rect x="{x0:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}" rx="2" '
                     f'fill="{"#d63384" if chosen else "#9ec5fe"}"/>')
        parts.append(f'<text x="{x0 + w + 4:.1f}" y="{y + 12}" fill="#212529">{fmt(v)}'
                     f'{" ◀ chosen" if chosen else ""}</text>')
    parts.append(f'<line x1="{zero_x:.1f}" x2="{zero_x:.1f}" y1="0" y2="{height - 18}" stroke="#adb5bd"/>')
    parts.append(f'<text x="{label_w + plot_w / 2:.0f}" y="{height - 4}" text-anchor="middle" fill="#6c757d">'
                 'insertion AUC − deletion AUC (higher: more faithful)</text></svg>')
    return "".join(parts)


def calibration_html(profile: Mapping[str, Any]) -> str:
    rows = profile["sweep"]
    crit = profile["criterion"]
    head = ["rank", "configuration", "stage", "insertion − deletion", "± sd", "deletion AUC ↓", "insertion AUC ↑",
            "degenerate maps"]
    best = ' class="best"'
    body_rows = "".join(
        f'<tr{best if r["rank"] == 1 else ""}><td class="num">{r["rank"]}</td><td>{esc(r["label"])}</td>'
        f'<td class="num">{r["stage"]}</td><td class="num">{fmt(r["score"])}</td><td class="num">{fmt(r["score_sd"])}</td>'
        f'<td class="num">{fmt(r["deletion_auc"])}</td><td class="num">{fmt(r["insertion_auc"])}</td>'
        f'<td class="num">{r["degenerate"]:.0%}</td></tr>' for r in rows)
    summary = _kv_table([
        ("model", profile["model"]["name"]),
        ("chosen", rows[0]["label"]),
        ("images", len(profile["images"])),
        ("prompts", "; ".join(profile["prompts"])),
        ("answers explained", profile["answers"]),
        ("criterion", f"{crit['score']}, {crit['fill']} fill, {crit['fractions']} fractions, {crit['averaged']}"),
        ("seconds", profile["seconds"]),
        ("package version", profile["package_version"]),
    ])
    body = (f"<h1>Calibration of {esc(profile['model']['name'])}</h1>{summary}"
            "<p>No masks were used: each configuration is scored by how fast the probability of the answer's own "
            "words falls when the patches its maps rank first are removed, and rises when they are restored. "
            "The sd is over answers.</p>"
            f'<div class="chart">{_bars(rows)}</div>'
            f"<table><thead><tr>{''.join(f'<th>{esc(h)}</th>' for h in head)}</tr></thead>"
            f"<tbody>{body_rows}</tbody></table>")
    return _page(f"diffusion-cam calibration: {profile['model']['name']}", body)
