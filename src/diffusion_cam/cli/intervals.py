"""``diffusion-cam intervals``: bench tables with bootstrap 95 % intervals, and what the modules add, paired."""

from __future__ import annotations

import argparse

from .options import at_least


def add_parser(sub) -> None:
    from ..evaluation.intervals import RESAMPLES, SEED

    p = sub.add_parser(
        "intervals", help="headline figures of bench runs with bootstrap 95 %% intervals; the modules' worth, paired",
        description="Read saved bench runs (no model needed) and print Markdown tables with item-bootstrap 95 %% "
                    "intervals: the main table's headline figures and, with --ablation, what each refinement module "
                    "and all four add to the configuration without modules, paired over the same words. "
                    "Localisation comes from the first run; deletion / insertion from every run that measured it "
                    "(e.g. one run with --replacement blur and one with --replacement mean).")
    p.add_argument("runs", nargs="+", metavar="RUN", help="bench run directories (the first gives localisation)")
    p.add_argument("--ablation", action="store_true", help="print the paired module table (runs made with --ablation)")
    p.add_argument("--all-metrics", action="store_true",
                   help="every localisation metric in the main table, not only Obj-IoU, F3 (of means) and pointing")
    p.add_argument("--methods", nargs="+", default=None, help="rows of the main table (default: the run's)")
    p.add_argument("--resamples", type=at_least(100), default=RESAMPLES, help=f"bootstrap resamples (default {RESAMPLES})")
    p.add_argument("--seed", type=int, default=SEED, help=f"bootstrap seed (default {SEED})")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.intervals import HEADLINE, ablation_table, load_run, main_table

    runs = [load_run(r) for r in args.runs]
    keys = None if args.all_metrics else HEADLINE
    print(main_table(runs, args.methods, keys, args.resamples, args.seed))
    if args.ablation:
        print(ablation_table(runs, args.resamples, args.seed))
    return 0
