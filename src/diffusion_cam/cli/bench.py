"""``diffusion-cam bench``: run explanation methods over a dataset and write the results tables."""

from __future__ import annotations

import argparse

from ..adapters.base import STATES
from ..extract import CAM_FORMULAS, SCORES
from ..metrics.faithfulness import REPLACEMENTS
from .options import AKD_BORDERS, _chunk, _kernel, add_generation_options, add_model_options, at_least, positive_float


def add_parser(sub) -> None:
    from ..evaluation import DATASETS, MAIN_METHODS

    p = sub.add_parser(
        "bench", help="benchmark explanation methods on a dataset (resumable, data-parallel)",
        description="Run methods x items, score every answer word against its ground-truth mask and write "
                    "table.md / table.csv / table.json. Rerun the same command to resume a killed run; launch "
                    "it with torchrun --nproc_per_node N, accelerate launch, srun (SLURM) or mpirun to shard items "
                    "over processes; several nodes share one --out on a shared file system.")
    p.add_argument("--out", required=True, help="run directory (results/*.jsonl, tables; rerun to resume)")
    p.add_argument("--merge", action="store_true",
                   help="only build the tables from the results already in --out (e.g. after a sharded run)")
    g = p.add_argument_group("dataset")
    g.add_argument("--dataset", choices=DATASETS, default="shapes")
    # (no option may be a prefix of a torchrun option, e.g. --n or --start: torchrun would take it)
    g.add_argument("--items", type=at_least(1), default=300, help="shapes: number of scenes; coco/grandf: at most this many items")
    g.add_argument("--skip", type=at_least(0), default=0, help="coco/grandf: skip the first items; shapes: added to --seed")
    g.add_argument("--seed", type=int, default=None, help="shapes: first scene seed (default 10000000, unseen in training)")
    g.add_argument("--prompts", nargs="+", default=["describe"], metavar="TYPE",
                   help="shapes: prompt types among describe color shape count (default: describe)")
    g.add_argument("--data", default=None, help="coco: dataset root; grandf: GCG annotation JSON")
    g.add_argument("--images", default=None, help="coco/grandf: image folder (coco default: under --data)")
    g.add_argument("--prompt", default=None, help="coco/grandf: prompt (default: the paper's)")
    g = p.add_argument_group("methods")
    g.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help=f"methods of the main table (default: {' '.join(MAIN_METHODS)}; with --select, the file's)")
    g.add_argument("--ablation", action="store_true",
                   help="also run Diffusion-CAM with no module, each module alone and all four (ablation table; "
                        "with --select on the best selected raw configuration)")
    protocol = g.add_mutually_exclusive_group()
    protocol.add_argument("--published", action="store_true",
                          help="every method with its own paper's defaults (Diffusion-CAM: the method spec's poscam, "
                               "logit, reflect-101 AKD border); the model's block for every gradient method")
    protocol.add_argument("--select", default=None, metavar="SELECTION.json",
                          help="every method with the configuration `diffusion-cam select` chose for it on other "
                               "scenes (refused if the reported scenes overlap them)")
    protocol.add_argument("--profile", default=None, metavar="FILE",
                          help="Diffusion-CAM settings from a calibration profile (`diffusion-cam calibrate`); "
                               "explicit options override it; baselines keep their own recipes")
    g.add_argument("--layer", type=int, nargs="+", default=None, help="hooked block(s) of gradient methods")
    g.add_argument("--state", choices=STATES, default=None, help="forward explained (default: each method's)")
    g.add_argument("--score", choices=SCORES, default=None, help="score of gradient methods (default: the model's)")
    g.add_argument("--cam", choices=CAM_FORMULAS, default=None,
                   help="Diffusion-CAM map formula (default: the model's; baselines keep their own)")
    g.add_argument("--sicd-mode", default=None, choices=("reference", "causal"), help="Diffusion-CAM SICD variant")
    g.add_argument("--akd-kernel", default=None, type=_kernel, help="Diffusion-CAM AKD kernel")
    g.add_argument("--akd-border", default=None, choices=AKD_BORDERS,
                   help="Diffusion-CAM AKD window border (default: the model's)")
    g.add_argument("--chunk-size", type=_chunk, default=None, help="tokens per batched backward (or auto)")
    g = p.add_argument_group("scoring and output")
    g.add_argument("--no-faithfulness", action="store_true", help="skip deletion / insertion (the slowest metric)")
    g.add_argument("--replacement", choices=REPLACEMENTS, default="blur",
                   help="what removed patches show in deletion / insertion: a blurred copy (default), the mean colour, "
                        "or ROAD's noisy linear imputation from the pixels around them")
    g.add_argument("--blur-sigma", type=positive_float, default=None, help="blur of removed patches (default: side / 10)")
    g.add_argument("--batch-size", type=at_least(1), default=64, help="perturbed images per forward (faithfulness)")
    g.add_argument("--save-explanations", nargs="?", type=at_least(0), const=-1, default=0, metavar="N",
                   help="keep the explanations of the first N items (all without N) under explanations/ "
                        "(report gallery; about 0.3 MB per item and method)")
    g.add_argument("--retry-failed", action="store_true", help="on resume, run failed items again")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_generation_options(p, sampling=False)  # --seed is the scene seed here; sampling stays greedy
    add_model_options(p)
    p.set_defaults(run=run)


def _dataset(args):
    from ..errors import UnknownNameError
    from ..evaluation import load_dataset
    from ..evaluation.datasets import SHAPES_SEED

    if args.dataset == "shapes":
        seed = (SHAPES_SEED if args.seed is None else args.seed) + args.skip
        return load_dataset("shapes", n=args.items, seed=seed, prompts=args.prompts)
    if not args.data:
        raise UnknownNameError(f"--dataset {args.dataset} needs --data (the dataset root or annotation file)")
    common = dict(prompt=args.prompt, limit=args.items, start=args.skip)
    if args.dataset == "coco":
        return load_dataset("coco", root=args.data, images=args.images, **common)
    if not args.images:
        raise UnknownNameError("--dataset grandf needs --images (the GranDf image folder)")
    return load_dataset("grandf", annotations=args.data, images=args.images, **common)


def _print_tables(tables) -> None:
    from ..evaluation.tables import ABLATION_COLUMNS, markdown

    print(markdown(tables["main"]))
    if tables["ablation"]:
        print(markdown(tables["ablation"], ABLATION_COLUMNS, "Config.", "config"))
    if not tables["complete"]:
        print(f"incomplete: {tables['records']} of {tables['expected_records']} records")


def _specs(args, adapter, dataset):
    from ..evaluation import MAIN_METHODS, method_specs
    from ..evaluation.protocols import check_selection, load_selection, published_specs, selected_specs

    if args.published:
        return published_specs(adapter, args.methods, args.ablation)
    if args.select:
        selection = load_selection(args.select)
        check_selection(selection, adapter, dataset)
        return selected_specs(selection, args.methods, args.ablation)
    return method_specs(args.methods or MAIN_METHODS, args.ablation)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..evaluation import BenchConfig, dist_env, run_bench, write_tables
    from .explain import prepare_output
    from .options import generation_config, load_adapter

    if args.merge:
        tables = write_tables(Path(args.out))
        _print_tables(tables)
        print(f"wrote {', '.join(tables['written'])} to {args.out}")
        return 0
    rank, world, local = dist_env()
    out = prepare_output(args.out)
    from ..devices import resolve_device

    args.device = resolve_device(args.device)
    if world > 1 and args.device == "cuda" and not args.device_map:
        import torch

        # one GPU per process; a launcher that binds one GPU to each task (srun --gpus-per-task) leaves one visible
        count = torch.cuda.device_count()
        if count > 1:
            args.device = f"cuda:{local % count}"
    adapter = load_adapter(args)
    if args.profile:  # refused now, before any item runs, if it is unreadable or for another model
        from ..calibration import load_profile

        load_profile(args.profile).check_model(adapter)
    dataset = _dataset(args)
    generation = generation_config(args, adapter)
    layer = None if args.layer is None else (args.layer[0] if len(args.layer) == 1 else args.layer)
    specs, rows = _specs(args, adapter, dataset)
    config = BenchConfig(
        out=out, specs=specs, ablation_rows=rows,
        method_options=dict(layer=layer, state=args.state, score=args.score, cam=args.cam, sicd_mode=args.sicd_mode,
                            akd_kernel=args.akd_kernel, akd_border=args.akd_border, chunk_size=args.chunk_size,
                            generation=generation, profile=args.profile),
        faithfulness=not args.no_faithfulness, blur_sigma=args.blur_sigma, replacement=args.replacement,
        batch_size=args.batch_size,
        save_explanations=args.save_explanations, retry_failed=args.retry_failed, progress=not args.no_progress)
    tables = run_bench(adapter, dataset, config, rank, world)
    if tables is not None:
        _print_tables(tables)
        print(f"wrote {', '.join(tables['written'])} to {out}")
    return 0
