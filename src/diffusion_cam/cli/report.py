"""``diffusion-cam report``: redraw the pictures and the HTML report of saved results, without the model."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import OutputError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "report", help="redraw pictures and report.html from a saved result (no model needed)",
        description="Read a result directory written by `diffusion-cam explain` (result.json + maps.npz) and "
                    "write the overlays, grid.png, trajectory.gif and report.html again; or, for a directory "
                    "of benchmark records (records.jsonl / records.json), write the benchmark report.html.")
    p.add_argument("result_dir", metavar="RESULT_DIR", help="directory holding result.json + maps.npz, or benchmark records")
    p.add_argument("--out", default=None, help="where to write (default: RESULT_DIR itself)")
    p.add_argument("--compare-raw", action="store_true", help="show raw next to refined maps in grid.png")
    p.add_argument("--cmap", default="jet", help="colour map of the heatmaps (default: jet; e.g. turbo, inferno, viridis)")
    p.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity over the image, 0..1 (default: 0.5)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..explanation import RESULT_FILE, Explanation

    src = Path(args.result_dir)
    if args.out is not None and not args.out.strip():
        raise OutputError("--out is empty: name the output directory, or leave --out out to write into RESULT_DIR")
    out = Path(args.out) if args.out is not None else src
    if not src.is_dir():
        raise OutputError(f"{src} is not a directory of saved results")
    if (src / RESULT_FILE).is_file():
        from ..visualize import write_pictures

        exp = Explanation.load(src)
        written = write_pictures(exp, out, compare_raw=args.compare_raw, cmap=args.cmap, alpha=args.alpha)
        print(f"answer: {exp.answer}")
        print(f"wrote {', '.join(written)} to {out}")
        return 0
    if (src / "records.jsonl").is_file() or (src / "records.json").is_file():
        from ..report import bench_report

        path = bench_report(src, out, cmap=args.cmap, alpha=args.alpha)
        print(f"wrote {path}")
        return 0
    raise OutputError(f"{src} holds neither a saved explanation ({RESULT_FILE} + maps.npz) "
                      "nor benchmark records (records.jsonl or records.json)")
