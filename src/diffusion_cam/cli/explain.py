"""``diffusion-cam explain``: explain answers about images and write result.json + maps.npz per image."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from ..grounding import THRESHOLD
from ..metrics.faithfulness import REPLACEMENTS
from .options import add_method_options, add_model_options, load_adapter, method_kwargs, method_name

#: written next to index.html by a run over several images
INDEX_FILE = "index.json"


def add_parser(sub) -> None:
    p = sub.add_parser("explain", help="explain a model's answer about an image",
                       description="Generate an answer and write one heatmap per answer token. With several "
                                   "images the model is loaded once and each image gets its own folder "
                                   "under --out, named after the file.")
    p.add_argument("image", nargs="+", help="image file(s) (PNG, JPEG, ...)")
    p.add_argument("--prompt", required=True, help="question or instruction about the image")
    p.add_argument("--method", default=None, help="explanation method (default: the profile's, else diffusion-cam)")
    p.add_argument("--answer", default=None, metavar="TEXT",
                   help="explain this answer instead of generating one (explained from the final state)")
    p.add_argument("--targets", nargs="+", default=None, metavar="TOKEN",
                   help="answer tokens to explain, by index or word (default: all)")
    p.add_argument("--out", default="diffusion_cam_out",
                   help="output directory (default: ./diffusion_cam_out); with several images, one folder per image in it")
    p.add_argument("--no-pictures", action="store_true", help="write only result.json and maps.npz")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar (shown by default on a terminal, over denoising steps and backward chunks)")
    p.add_argument("--compare-raw", action="store_true", help="show raw next to refined maps in grid.png")
    p.add_argument("--mask", default=None, metavar="PNG",
                   help="ground-truth label image (0 = background) or binary mask: adds localisation metrics "
                        "(one image only)")
    p.add_argument("--faithfulness", nargs="?", const="blur", default=None, type=_fill,
                   metavar="{" + ",".join(REPLACEMENTS) + "}",
                   help="also measure deletion / insertion AUC of every map; removed patches show a blurred copy "
                        "(default), the mean colour or ROAD's imputation")
    p.add_argument("--grounding-probe", action="store_true",
                   help="also run the one-word deletion probe behind each word's grounding score (its probability "
                        "with the image intact and without the top 10%% of its map; 4 forwards per word)")
    add_model_options(p)
    add_method_options(p)
    p.set_defaults(run=run)


def _fill(text: str) -> str:
    if text in REPLACEMENTS:
        return text
    hint = ""
    if Path(text).suffix or Path(text).exists():
        # nargs="?" takes the word after it: an image path placed there is read as a fill
        hint = f"; {text!r} looks like an image: put it before --faithfulness, or write --faithfulness=blur"
    raise argparse.ArgumentTypeError(f"{text!r} is not a fill for removed patches (choose from {', '.join(REPLACEMENTS)}){hint}")


def _targets(values):
    if values is None:
        return None
    return [int(v) if v.lstrip("-").isdigit() else v for v in values]


def prepare_output(path: str) -> Path:
    """Create the output directory now, so an unwritable path fails before the model runs."""
    from ..errors import OutputError

    if not str(path).strip():
        # Path("") is the current directory: an empty --out would scatter the files there
        raise OutputError("--out is empty: name the output directory, e.g. --out out/scene")
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        # a uniquely named probe: the processes of a data-parallel run probe the same directory at once
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise OutputError(f"cannot write to output directory {out}: {err.strerror or err}") from None
    return out


def load_mask(path: str):
    """A ground-truth label image as a 2-D integer array (colour PNGs are read as grey)."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from ..errors import ImageLoadError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("L") if img.mode not in ("L", "P", "I", "I;16", "1") else img).astype(np.int64)
    except FileNotFoundError:
        raise ImageLoadError(f"{path}: no such mask file") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ImageLoadError(f"{path}: cannot read mask image ({err})") from None


def output_folders(images: list[str], out: Path) -> list[Path]:
    """``out`` for one image; else one folder per image named after its file (-2, -3, ... for repeats)."""
    from ..visualize import safe_slug

    if len(images) == 1:
        return [out]
    folders, seen = [], set()
    for image in images:
        name = safe_slug(Path(image).stem, limit=64)
        unique, n = name, 1
        while unique in seen:
            n += 1
            unique = f"{name}-{n}"
        seen.add(unique)
        folders.append(out / unique)
    return folders


def write_index(out: Path, entries: list[dict], prompt: str) -> None:
    """``index.json``: which image each folder explains, so ``diffusion-cam report`` can redraw index.html."""
    import json

    keep = ("image", "folder", "answer", "error", "report")
    doc = {"prompt": prompt, "images": [{k: e[k] for k in keep if k in e} for e in entries]}
    (out / INDEX_FILE).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def run(args: argparse.Namespace) -> int:
    import sys

    from .. import get_method
    from ..errors import DiffusionCamError, PromptError

    if args.mask and len(args.image) > 1:
        raise PromptError(f"--mask belongs to one image; {len(args.image)} images were given")
    out = prepare_output(args.out)
    folders = output_folders(args.image, out)
    adapter = load_adapter(args)
    method = get_method(method_name(args), adapter, **method_kwargs(args, adapter))
    mask = load_mask(args.mask) if args.mask else None
    failed, entries = 0, []
    for image, folder in zip(args.image, folders):
        if len(args.image) > 1:
            print(f"{image}:")
        try:
            exp = _explain_one(method, image, args, folder, mask)
        except DiffusionCamError as err:
            if len(args.image) == 1:
                raise
            # one unreadable image does not cost the others their run
            failed += 1
            message = " ".join(str(err).split())
            # image errors already start with the path; others get it so each line says which image
            print(f"error: {message if message.startswith(image) else f'{image}: {message}'}", file=sys.stderr)
            entries.append({"image": image, "folder": folder.name, "error": message})
        else:
            entries.append({"image": image, "folder": folder.name, "answer": exp.answer, "thumbnail": exp.image,
                            "report": not args.no_pictures})
    if len(args.image) > 1:
        from ..errors import OutputError
        from ..report import index_html

        try:
            (out / "index.html").write_text(index_html(entries, args.prompt), encoding="utf-8")
            write_index(out, entries, args.prompt)
        except OSError as err:
            raise OutputError(f"cannot write {out / 'index.html'}: {err.strerror or err}") from None
        print(f"wrote index.html (every image, its answer and its report) to {out}")
    if failed:
        print(f"{failed} of {len(args.image)} images failed", file=sys.stderr)
        return 2
    return 0


def _explain_one(method, image: str, args: argparse.Namespace, out: Path, mask):
    import sys

    exp = method.explain(image, args.prompt, targets=_targets(args.targets), faithfulness=args.faithfulness or False,
                         answer=args.answer, grounding_probe=args.grounding_probe,
                         progress=not args.quiet and sys.stderr.isatty())
    if mask is not None:
        exp.evaluate(mask)
    exp.save(out)
    written = ["result.json", "maps.npz"]
    if not args.no_pictures:
        from ..report import write_pictures

        written += write_pictures(exp, out, compare_raw=args.compare_raw)
    print(f"answer: {exp.answer}")
    flagged = [f"{g['token'].strip()} ({g['score']:.2f})" for g in exp.grounding if g["flagged"]]
    if flagged:
        print(f"possibly ungrounded (grounding score below {THRESHOLD}): {', '.join(flagged)}")
    if exp.metrics:
        mean = exp.metrics["mean"]
        print("metrics (mean over tokens): " + ", ".join(
            f"{k}={mean[k]:.3f}" for k in ("obj_iou", "contrast", "concentration", "f3") if k in mean))
    if exp.faithfulness:
        mean = exp.faithfulness["mean"]
        print(f"faithfulness (mean over tokens, {exp.faithfulness['replacement']}): "
              f"deletion_auc={mean['deletion_auc']:.3f} (lower is better), "
              f"insertion_auc={mean['insertion_auc']:.3f} (higher is better)")
    print(f"wrote {', '.join(written)} to {out}")
    return exp
