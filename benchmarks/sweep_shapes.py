"""Sweep Diffusion-CAM's defaults (map formula, layer, state, score, modules) and the baselines' layer and score.

One bench run holds every configuration as its own method, so each scene's
answer is generated once and shared.  Scenes start at seed 20_000_000: they
are neither training scenes nor the ones the reported tables use
(10_000_000 on), so a default chosen here is not tuned on the reported scenes.
Every prompt type is swept (captions, colour / shape / count questions).

    python benchmarks/sweep_shapes.py [--items 30] [--out runs/sweep_shapes] [--faithfulness]
    torchrun --nproc_per_node 2 benchmarks/sweep_shapes.py --items 60 --out runs/sweep_shapes
    torchrun --nproc_per_node 2 benchmarks/sweep_shapes.py --items 60 --only "akd border" --seed 30000000 \
        --out runs/sweep_border30
    python benchmarks/sweep_shapes.py --figure docs/bench_maps.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import diffusion_cam as dc
from diffusion_cam.datasets.shapes import PROMPT_TYPES
from diffusion_cam.evaluation import BenchConfig, MethodSpec, dist_env, load_dataset, run_bench
from diffusion_cam.evaluation.tables import markdown
from diffusion_cam.extract import CAM_FORMULAS, SCORES
from diffusion_cam.refine.akd import BORDERS as AKD_BORDERS

SWEEP_SEED = 20_000_000


def configs(n_layers: int, default_layer: int, default_cam: str, default_border: str = "reflect101",
            default_score: str = "logit") -> list[MethodSpec]:
    """Model defaults first, then one default changed at a time, then the baselines."""
    specs = [MethodSpec(f"diffusion-cam (defaults: {default_cam}, block {default_layer}, trajectory, "
                        f"{default_score}, AKD border {default_border})", "diffusion-cam")]
    for cam in CAM_FORMULAS:
        for layer in range(n_layers - 1):  # the last block gets no gradient at image positions (refused)
            if (cam, layer) != (default_cam, default_layer):
                specs.append(MethodSpec(f"cam={cam} block={layer}", "diffusion-cam", (("cam", cam), ("layer", layer))))
    specs += [
        MethodSpec("state=final", "diffusion-cam", (("state", "final"),)),
        *[MethodSpec(f"score={score}", "diffusion-cam", (("score", score),))
          for score in SCORES if score not in (default_score, "vocab_sum")],  # vocab_sum names no token
        MethodSpec("sicd=causal", "diffusion-cam", (("sicd_mode", "causal"),)),
        MethodSpec("akd=adaptive", "diffusion-cam", (("akd_kernel", "adaptive"),)),
        *[MethodSpec(f"akd border={b}", "diffusion-cam", (("akd_border", b),)) for b in AKD_BORDERS if b != default_border],
        MethodSpec("no module", "diffusion-cam", (("modules", ()),)),
    ]
    for name in ("gradcam", "llava-cam"):
        specs.append(MethodSpec(name, name))
        if name == "gradcam" and default_score != "logit":
            specs.append(MethodSpec("gradcam score=logit", name, (("score", "logit"),)))
        for layer in range(n_layers - 1):
            if layer != default_layer:
                specs.append(MethodSpec(f"{name} block={layer}", name, (("layer", layer),)))
    specs += [MethodSpec("tam", "tam"), MethodSpec("center", "center")]
    return specs


def figure(adapter, path: Path, seeds=(SWEEP_SEED, SWEEP_SEED + 1)) -> None:
    """Maps of the colour and shape words of a few held-out scenes: spec formula, model default, TAM."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from diffusion_cam.datasets import shapes

    rows = [("Diffusion-CAM, method spec defaults", "diffusion-cam",
             {"cam": "poscam", "score": "logit", "akd_border": "reflect101"}),
            ("Diffusion-CAM (model default)", "diffusion-cam", {}),
            ("TAM", "tam", {})]
    panels = []
    for seed in seeds:
        scene = shapes.generate_scene(seed)
        for title, name, options in rows:
            exp = dc.get_method(name, adapter, **options).explain(scene.image, "describe the image")
            keep = [i for i, t in enumerate(exp.tokens) if t in shapes.COLOURS or t in shapes.SHAPES]
            panels.append((f"{title}", scene.image, [(exp.tokens[i], exp.maps[i]) for i in keep]))
    cols = 1 + max(len(p[2]) for p in panels)
    fig, axes = plt.subplots(len(panels), cols, figsize=(1.25 * cols, 1.3 * len(panels)), squeeze=False)
    for r, (title, image, maps) in enumerate(panels):
        for ax in axes[r]:
            ax.axis("off")
        axes[r, 0].imshow(image)
        axes[r, 0].set_title(title, fontsize=5)
        for c, (word, m) in enumerate(maps, start=1):
            axes[r, c].imshow(image)
            axes[r, c].imshow(np.asarray(m), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            axes[r, c].set_title(word, fontsize=6)
    fig.tight_layout(pad=0.2)
    fig.savefig(path, dpi=72, metadata={"Software": None})
    plt.close(fig)
    from PIL import Image

    # a 256-colour palette keeps the picture small enough for the docs
    Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=30, help="scenes (every prompt of each)")
    ap.add_argument("--out", default="runs/sweep_shapes")
    ap.add_argument("--model", default="shapes-tiny")
    ap.add_argument("--weights", default=None, help="shapes-tiny weights directory (default: the shipped ones)")
    ap.add_argument("--faithfulness", action="store_true", help="also deletion / insertion (slower)")
    ap.add_argument("--figure", default=None, help="only draw the maps of two held-out scenes into this PNG")
    ap.add_argument("--seed", type=int, default=SWEEP_SEED,
                    help=f"first scene (default {SWEEP_SEED}; 30000000 is the second held-out set)")
    ap.add_argument("--only", nargs="+", default=None, metavar="PREFIX",
                    help="run the defaults and only the rows whose label starts with one of these (e.g. 'akd border')")
    args = ap.parse_args()
    adapter = dc.load_model(args.model, **({"weights_dir": args.weights} if args.weights else {}))
    if args.figure:
        figure(adapter, Path(args.figure))
        return
    dataset = load_dataset("shapes", n=args.items, seed=args.seed, prompts=PROMPT_TYPES)
    specs = configs(len(adapter.blocks()), adapter.default_layer, adapter.default_cam, adapter.default_akd_border,
                    adapter.default_score)
    if args.only:
        specs = specs[:1] + [s for s in specs[1:] if s.label.startswith(tuple(args.only))]
    config = BenchConfig(out=Path(args.out), specs=specs, faithfulness=args.faithfulness, progress=True)
    rank, world, _ = dist_env()
    tables = run_bench(adapter, dataset, config, rank=rank, world=world)
    if tables is not None:
        print(f"sweep on {args.items} held-out scenes (seed {args.seed}+, every prompt type), model {args.model}, "
              f"default block {adapter.default_layer}, default formula {adapter.default_cam}, "
              f"default score {adapter.default_score}")
        print(markdown(tables["main"]))


if __name__ == "__main__":
    main()
