"""``diffusion-cam train-shapes``: train the built-in Shapes model from scratch."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("train-shapes", help="train the built-in shapes-tiny model (resumable)")
    p.add_argument("--out", required=True, help="run directory (checkpoints; rerun to resume)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the recipe's)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..models.shapes_tiny import train as recipe

    options = {k: v for k, v in vars(args).items() if k in ("steps", "batch_size", "seed", "threads") and v is not None}
    recipe.train(args.out, **options)
    return 0
