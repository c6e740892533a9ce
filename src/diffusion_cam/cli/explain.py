"""``diffusion-cam explain``: explain one answer and write result.json + maps.npz."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import add_method_options, add_model_options, load_adapter, method_kwargs


def add_parser(sub) -> None:
    p = sub.add_parser("explain", help="explain a model's answer about an image",
                       description="Generate an answer and write one heatmap per answer token.")
    p.add_argument("image", help="image file (PNG, JPEG, ...)")
    p.add_argument("--prompt", required=True, help="question or instruction about the image")
    p.add_argument("--method", default="diffusion-cam", help="explanation method (default: diffusion-cam)")
    p.add_argument("--targets", nargs="+", default=None, metavar="TOKEN",
                   help="answer tokens to explain, by index or word (default: all)")
    p.add_argument("--out", default="diffusion_cam_out", help="output directory (default: ./diffusion_cam_out)")
    p.add_argument("--no-pictures", action="store_true", help="write only result.json and maps.npz")
    p.add_argument("--compare-raw", action="store_true", help="show raw next to refined maps in grid.png")
    add_model_options(p)
    add_method_options(p)
    p.set_defaults(run=run)


def _targets(values):
    if values is None:
        return None
    return [int(v) if v.lstrip("-").isdigit() else v for v in values]


def prepare_output(path: str) -> Path:
    """Create the output directory now, so an unwritable path fails before the model runs."""
    from ..errors import OutputError

    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise OutputError(f"cannot write to output directory {out}: {err.strerror or err}") from None
    return out


def run(args: argparse.Namespace) -> int:
    from .. import get_method

    out = prepare_output(args.out)
    adapter = load_adapter(args)
    method = get_method(args.method, adapter, **method_kwargs(args, adapter))
    exp = method.explain(args.image, args.prompt, targets=_targets(args.targets))
    exp.save(out)
    written = ["result.json", "maps.npz"]
    if not args.no_pictures:
        try:
            from ..visualize import write_pictures
        except ImportError:
            write_pictures = None
        if write_pictures is not None:
            written += write_pictures(exp, out, compare_raw=args.compare_raw)
    print(f"answer: {exp.answer}")
    print(f"wrote {', '.join(written)} to {out}")
    return 0
