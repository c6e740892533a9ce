"""``diffusion-cam report``: redraw the pictures and the HTML report of saved results, without the model."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import OutputError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "report", help="redraw pictures and report.html from a saved result (no model needed)",
        description="Read a result directory written by `diffusion-cam explain` (result.json + maps.npz) and "
                    "write the overlays, grid.png, trajectory.gif and report.html again; for the folder of a run "
                    "over several images, redraw every image's folder and index.html; for a directory of "
                    "benchmark records (records.jsonl / records.json), write the benchmark report.html.")
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
        from ..report import write_pictures

        exp = Explanation.load(src)
        written = write_pictures(exp, out, compare_raw=args.compare_raw, cmap=args.cmap, alpha=args.alpha)
        print(f"answer: {exp.answer}")
        print(f"wrote {', '.join(written)} to {out}")
        return 0
    folders = sorted(d for d in src.iterdir() if (d / RESULT_FILE).is_file())
    if folders:
        return _redraw_all(src, out, folders, args)
    if (src / "records.jsonl").is_file() or (src / "records.json").is_file():
        from ..bench_report import bench_report

        path = bench_report(src, out, cmap=args.cmap, alpha=args.alpha)
        print(f"wrote {path}")
        return 0
    raise OutputError(f"{src} holds neither a saved explanation ({RESULT_FILE} + maps.npz) "
                      "nor benchmark records (records.jsonl or records.json)")


def _redraw_all(src: Path, out: Path, folders: list[Path], args: argparse.Namespace) -> int:
    """A run over several images: every folder's pictures and report, then index.html listing them."""
    import json

    from ..explanation import Explanation
    from ..report import index_html
    from ..report import write_pictures
    from .explain import INDEX_FILE

    try:  # the images as given to explain, and the ones that failed; without it, the folders found
        index = json.loads((src / INDEX_FILE).read_text(encoding="utf-8"))
        listed, prompt = list(index["images"]), index["prompt"]
    except FileNotFoundError:
        listed, prompt = [{"image": d.name, "folder": d.name} for d in folders], None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise OutputError(f"cannot read {src / INDEX_FILE}: {err}") from None
    entries = []
    for entry in listed:
        if "error" in entry or not (src / entry["folder"] / "result.json").is_file():
            entries.append({"image": entry["image"], "folder": entry["folder"],
                            "error": entry.get("error", "no saved explanation")})
            continue
        exp = Explanation.load(src / entry["folder"])
        written = write_pictures(exp, out / entry["folder"], compare_raw=args.compare_raw, cmap=args.cmap,
                                 alpha=args.alpha)
        print(f"{entry['image']}: answer: {exp.answer}; wrote {', '.join(written)} to {out / entry['folder']}")
        entries.append({"image": entry["image"], "folder": entry["folder"], "answer": exp.answer,
                        "thumbnail": exp.image, "report": True})
        prompt = prompt if prompt is not None else exp.prompt
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "index.html").write_text(index_html(entries, prompt or ""), encoding="utf-8")
    except OSError as err:
        raise OutputError(f"cannot write {out / 'index.html'}: {err.strerror or err}") from None
    print(f"wrote index.html ({len(entries)} images) to {out}")
    return 0
