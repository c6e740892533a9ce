"""``diffusion-cam models``: list known model families and what they support."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list known models and what each supports")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..adapters import available_models

    rows = [("name", "family", "states", "verified on real weights", "description")]
    for e in available_models():
        rows.append((e.name, e.family, ",".join(e.states), e.verified, e.description))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
    return 0
