"""``diffusion-cam calibrate``: choose Diffusion-CAM's settings for a model on your own images, without masks."""

from __future__ import annotations

import argparse

from ..adapters.base import STATES
from ..extract import CAM_FORMULAS, SCORES
from ..metrics.faithfulness import REPLACEMENTS
from ..refine.akd import BORDERS as AKD_BORDERS
from .options import _chunk, add_generation_options, add_model_options, at_least


def add_parser(sub) -> None:
    p = sub.add_parser(
        "calibrate", help="choose Diffusion-CAM's settings for a model on unlabelled images (writes a profile)",
        description="Sweep map formula x block x modules (then score and AKD border around the best) on your "
                    "images, score every configuration by deletion / insertion of the answer's own words (no "
                    "masks needed), and write profile.json (for explain/bench/check --profile) and "
                    "calibration.html.")
    p.add_argument("image", nargs="+", help="image file(s): unlabelled, like the ones you will explain")
    p.add_argument("--prompt", action="append", required=True,
                   help="question or instruction about the images (repeat for several)")
    p.add_argument("--out", default="diffusion_cam_calibration", help="output directory (default: %(default)s)")
    g = p.add_argument_group("sweep (default: the model's choices first, then the alternatives)")
    g.add_argument("--cam", nargs="+", choices=CAM_FORMULAS, default=None, help="map formulas to try")
    g.add_argument("--layer", nargs="+", type=int, default=None, help="blocks to try (default: up to 3, spread)")
    g.add_argument("--score", nargs="+", choices=[s for s in SCORES if s != "vocab_sum"], default=None,
                   help="scores to try (the first is stage one's)")
    g.add_argument("--modules", nargs="+", choices=("on", "off"), default=None,
                   help="the four refinement modules on, off, or both (default)")
    g.add_argument("--akd-border", nargs="+", choices=tuple(AKD_BORDERS), default=None,
                   help="AKD borders to try (the first is stage one's)")
    g.add_argument("--full", action="store_true", help="every combination instead of the two stages")
    g.add_argument("--state", choices=STATES, default="trajectory", help="state explained (default: %(default)s)")
    g = p.add_argument_group("scoring")
    g.add_argument("--fill", choices=REPLACEMENTS, default="mean",
                   help="what removed patches show (default: the mean colour)")
    g.add_argument("--auc-steps", type=at_least(1), default=5,
                   help="deletion / insertion steps: N + 1 fractions of the patches (default: 5, i.e. 0, 20, ... 100 %%)")
    g.add_argument("--batch-size", type=at_least(1), default=64, help="perturbed images per forward")
    g.add_argument("--chunk-size", type=_chunk, default=16, help="tokens per batched backward, or auto")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_generation_options(p, sampling=False)
    add_model_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..calibration import calibrate
    from .explain import prepare_output
    from .options import generation_config, load_adapter

    out = prepare_output(args.out)
    adapter = load_adapter(args)
    modules = None if args.modules is None else [m == "on" for m in args.modules]
    result = calibrate(adapter, args.image, args.prompt, cams=args.cam, layers=args.layer, scores=args.score,
                       modules=modules, borders=args.akd_border, full=args.full, state=args.state,
                       generation=generation_config(args, adapter), fill=args.fill, steps=args.auc_steps,
                       batch_size=args.batch_size, chunk_size=args.chunk_size, progress=not args.no_progress)
    written = result.save(out)
    rows = result.rows
    print(f"calibrated {adapter.name} on {len(result.queries)} answers ({len(rows)} configurations, "
          f"{result.seconds:.0f} s); insertion - deletion AUC, {result.criterion['fill']} fill:")
    for r in rows[:5]:
        print(f"  {r['rank']:>3}. {r['score']:+.3f}  {r['label']}")
    if len(rows) > 5:
        r = rows[-1]
        print(f"  ...\n  {r['rank']:>3}. {r['score']:+.3f}  {r['label']}")
    print(f"chosen: {rows[0]['label']}")
    print(f"wrote {', '.join(written)} to {out}; use it with --profile {out / written[0]}")
    return 0
