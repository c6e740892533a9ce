"""``diffusion-cam train-shapes``: retrain the built-in Shapes model with the shipped recipe."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("train-shapes", help="retrain the built-in shapes-tiny model: its nine stages, resumable")
    p.add_argument("--out", required=True,
                   help="run directory: one sub-directory per stage, the model in stage-9/final (rerun to resume)")
    p.add_argument("--stages", type=int, default=None, help="run only the first N stages (default: all nine)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import UnknownNameError
    from ..models.shapes_tiny import train as recipe

    if args.stages is not None and not 1 <= args.stages <= len(recipe.RECIPE):
        raise UnknownNameError(f"--stages must be between 1 and {len(recipe.RECIPE)}, got {args.stages}")
    options = {k: v for k, v in vars(args).items() if k in ("seed", "threads") and v is not None}
    recipe.train_recipe(args.out, stages=args.stages, progress=not args.no_progress, **options)
    return 0
