"""Choose the built-in model's default layer: Diffusion-CAM at every block on held-out scenes.

Scenes come from seed 20_000_000 on (training uses its own pool, the reported
bench tables 10_000_000 on), so the choice is not made on the scenes it is
reported on.  Prints, per hooked block, word-level Obj-IoU, F3 (of means),
Concentration and the pointing game of colour/shape words, raw and refined.

    python benchmarks/layer_sweep.py [--items 60] [--out runs/layer_sweep]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import diffusion_cam as dc
from diffusion_cam.evaluation.datasets import load_dataset
from diffusion_cam.evaluation.runner import BenchConfig, MethodSpec, run_bench

SWEEP_SEED = 20_000_000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=60, help="scenes (describe prompts)")
    ap.add_argument("--out", default="runs/layer_sweep")
    ap.add_argument("--model", default="shapes-tiny")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    adapter = dc.load_model(args.model)
    dataset = load_dataset("shapes", n=args.items, seed=SWEEP_SEED, prompts=("describe",))
    specs = [MethodSpec("diffusion-cam", "diffusion-cam"),
             MethodSpec("raw", "diffusion-cam", (("modules", ()),))]
    rows = []
    for layer in range(len(adapter.blocks())):
        config = BenchConfig(out=Path(args.out) / f"layer{layer}", specs=specs,
                             method_options={"layer": layer}, faithfulness=False, progress=False)
        tables = run_bench(adapter, dataset, config, rank=0, world=1)
        for row in tables["main"]:
            rows.append((layer, row))
    print(f"layer sweep on {args.items} held-out scenes (seed {SWEEP_SEED}+), model {args.model}")
    print(f"| block | maps | Obj-IoU (%) | F3 of means (%) | Concentration (%) | pointing (%) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for layer, row in rows:
        print(f"| {layer} | {row['method']} | {100 * row['obj_iou']:.2f} | {100 * row['f3_of_means']:.2f} | "
              f"{100 * row['concentration']:.2f} | {100 * (row['pointing'] or 0):.1f} |")


if __name__ == "__main__":
    main()
