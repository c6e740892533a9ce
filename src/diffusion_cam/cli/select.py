"""``diffusion-cam select``: choose every method's configuration the same way, on scenes that are not reported."""

from __future__ import annotations

import argparse

from .options import add_model_options, at_least


def add_parser(sub) -> None:
    from ..datasets.shapes import PROMPT_TYPES
    from ..evaluation.protocols import CRITERION, GRID_METHODS, SELECTION_SCORES, SELECTION_SEED
    from ..extract import SCORES

    p = sub.add_parser(
        "select", help="choose every method's block / score / formula / AKD border on selection scenes",
        description="Run every method over the grid of the knobs it has (block x score x formula x AKD border, where "
                    f"they apply) on Shapes scenes that are not reported, keep the best by {' then '.join(CRITERION)} "
                    "(first in grid order on a tie), and write the choices to a JSON file for "
                    "`diffusion-cam bench --select FILE`. Resumable; shards over processes under torchrun.")
    p.add_argument("--out", required=True, help="selection file to write (JSON)")
    p.add_argument("--work", default=None, help="bench run directory of the grid (default: OUT without suffix + .run)")
    p.add_argument("--dataset", choices=("shapes",), default="shapes")
    p.add_argument("--items", type=at_least(1), default=25, help="selection scenes (default 25)")
    p.add_argument("--seed", type=int, default=SELECTION_SEED,
                   help=f"first selection scene (default {SELECTION_SEED}: disjoint from the reported scenes "
                        "10000000+ and the held-out sweeps 20000000+ and 30000000+)")
    p.add_argument("--prompts", nargs="+", default=["describe"], choices=PROMPT_TYPES, metavar="TYPE",
                   help="prompt types (default: describe)")
    p.add_argument("--methods", nargs="+", default=list(GRID_METHODS), metavar="METHOD",
                   help=f"methods to select for (default: {' '.join(GRID_METHODS)})")
    p.add_argument("--layer", type=int, nargs="+", default=None,
                   help="blocks of the grid (default: every block but the last)")
    p.add_argument("--score", nargs="+", default=list(SELECTION_SCORES), choices=SCORES,
                   help=f"scores of the grid (default: {' '.join(SELECTION_SCORES)})")
    p.add_argument("--replace", action="store_true",
                   help="overwrite an OUT that holds a different selection (refused by default: reported runs "
                        "may have used it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..evaluation import dist_env, load_dataset
    from ..evaluation.protocols import select
    from .options import load_adapter

    out = Path(args.out)
    work = Path(args.work) if args.work else out.with_suffix(".run")
    rank, world, _ = dist_env()
    adapter = load_adapter(args)
    dataset = load_dataset("shapes", n=args.items, seed=args.seed, prompts=args.prompts)
    selection = select(adapter, dataset, work, out, layers=args.layer, scores=args.score, methods=args.methods,
                       rank=rank, world=world, progress=not args.no_progress,
                       replace=args.replace)
    if selection is None:
        return 0
    names = {"pointing": "Pointing (%)", "f3_of_means": "F3 (of means)"}
    print(f"| method | chosen configuration | configurations | "
          f"{' | '.join(names.get(k, k) for k in selection['criterion'])} |")
    print("|---|---|---:|" + "---:|" * len(selection["criterion"]))
    for m, c in selection["methods"].items():
        opts = ", ".join(f"{k}={v}" for k, v in c["options"].items()) or "(no knob)"
        vals = " | ".join("–" if c[k] is None else f"{100 * c[k]:.1f}" for k in selection["criterion"])
        print(f"| {m} | {opts} | {c['configs']} | {vals} |")
    base = selection.get("ablation_base")
    if base:
        print("modules are added to: " + ", ".join(f"{k}={v}" for k, v in base.items()))
    print(f"wrote {out} (grid run in {work})")
    return 0
