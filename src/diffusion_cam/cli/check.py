"""``diffusion-cam check``: sanity checks of a method's maps on a model, without masks."""

from __future__ import annotations

import argparse

from ..metrics.faithfulness import REPLACEMENTS
from .options import add_method_options, add_model_options, at_least, load_adapter, method_kwargs, method_name


def add_parser(sub) -> None:
    p = sub.add_parser(
        "check", help="sanity checks of the maps: weight randomization, faithfulness vs random maps, empty maps",
        description="Explain the answers about your images, then (a) re-initialise the language model's blocks "
                    "from the top down and measure how alike the maps stay (Spearman, SSIM), (b) compare the "
                    "maps' deletion / insertion AUC with seeded random maps', (c) count empty or constant maps. "
                    "Prints one PASS/FAIL line per check; exit status 1 if one fails. The model's weights are "
                    "restored afterwards.")
    p.add_argument("image", nargs="+", help="image file(s)")
    p.add_argument("--prompt", action="append", required=True, help="question or instruction (repeat for several)")
    p.add_argument("--method", default=None, help="method to check (default: the profile's, else diffusion-cam)")
    p.add_argument("--out", default=None, help="also write check.json here")
    p.add_argument("--fill", choices=REPLACEMENTS, default="mean", help="what removed patches show (default: mean)")
    p.add_argument("--auc-steps", type=at_least(1), default=5, help="deletion / insertion steps (default: 5)")
    p.add_argument("--check-seed", type=int, default=0, help="seed of the random maps and weights (default: 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_options(p)
    add_method_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json

    from ..calibration.checks import check
    from .explain import prepare_output

    out = prepare_output(args.out) if args.out else None
    adapter = load_adapter(args)
    kwargs = method_kwargs(args, adapter)
    report = check(adapter, args.image, args.prompt, method=method_name(args), seed=args.check_seed,
                   fill=args.fill, steps=args.auc_steps, progress=not args.no_progress, **kwargs)
    print(f"checked {report.method} on {adapter.name}: {len(report.images)} images, {len(report.prompts)} prompts")
    for line in report.lines():
        print(line)
    if out is not None:
        from ..errors import OutputError

        try:
            (out / "check.json").write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n",
                                            encoding="utf-8")
        except OSError as err:
            raise OutputError(f"cannot write {out / 'check.json'}: {err.strerror or err}") from None
        print(f"wrote check.json to {out}")
    return 0 if report.passed else 1
