"""``diffusion-cam train-shapes``: retrain a built-in Shapes model with its shipped recipe."""

from __future__ import annotations

import argparse
from dataclasses import asdict

ARCHS = ("shapes-tiny", "diffusion-gemma")
#: options both recipes take
_SHARED = ("seed", "threads")


def add_parser(sub) -> None:
    from ..models.diffusion_gemma_shapes.train import add_recipe_options

    p = sub.add_parser("train-shapes", help="retrain a built-in Shapes model with its recipe (seeded, resumable)")
    p.add_argument("--arch", choices=ARCHS, default="shapes-tiny",
                   help="shapes-tiny (nine stages, the model in DIR/stage-9/final) or diffusion-gemma (the stock "
                        "DiffusionGemmaForBlockDiffusion of diffusion-gemma-shapes, a checkpoint folder in DIR/final)")
    p.add_argument("--out", required=True, help="run directory (rerun the same command to resume)")
    p.add_argument("--stages", type=int, default=None, help="shapes-tiny: run only the first N stages (default: all)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    add_recipe_options(p.add_argument_group(
        "--arch diffusion-gemma only: the recipe's settings (default: the recipe's own; see its TRAINING.md)"),
        skip=_SHARED, given_only=True)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import UnknownNameError
    from ..models.diffusion_gemma_shapes import train as dg

    options = {k: v for k, v in vars(args).items() if k in _SHARED and v is not None}
    settings = asdict(dg.RECIPE)
    recipe_options = {k: v for k, v in vars(args).items() if k in settings and k not in _SHARED and v is not None}
    if args.arch == "diffusion-gemma":
        if args.stages is not None:
            raise UnknownNameError(
                "--stages applies to --arch shapes-tiny only; diffusion-gemma runs both its stages in one command")
        dg.train(args.out, dg.RECIPE.with_options(**options, **recipe_options), progress=not args.no_progress)
        return 0
    if recipe_options:
        flag = "--" + next(iter(recipe_options)).replace("_", "-")
        raise UnknownNameError(f"{flag} applies to --arch diffusion-gemma only")
    from ..models.shapes_tiny import train as recipe

    if args.stages is not None and not 1 <= args.stages <= len(recipe.RECIPE):
        raise UnknownNameError(f"--stages must be between 1 and {len(recipe.RECIPE)}, got {args.stages}")
    recipe.train_recipe(args.out, stages=args.stages, progress=not args.no_progress, **options)
    return 0
