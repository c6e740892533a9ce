"""Peak memory of explaining an answer when the output head projects only the scored rows, and when it projects all.

A real dMLLM's head has a vocabulary of 100k+ words, and the library's
batched backward keeps the gradient of the logits once per explained token.
This builds the tiny test model with a real-size head (126,464 words, LLaDA's)
and a long image span, then generates and explains an 8-token answer with
Diffusion-CAM from the final state (all 8 tokens from one forward) through the
vmapped backward that the real-family adapters use, in two fresh processes:

* ``narrowed``: the adapter names its output head, so ``forward_at`` projects
  only the scored positions (the library's behaviour);
* ``full``: the adapter names none, so every position is projected and the
  scored rows are indexed afterwards (an adapter without ``output_head``).

It prints each process's peak resident memory and wall time, and checks that
the two give the same maps.  Run: ``python benchmarks/bench_memory.py``
(about a minute; the ``full`` process peaks near 13 GB with the defaults,
``--image-size 128`` needs about a quarter of that).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def child(variant: str, image_size: int, vocab: int, chunk: int, out: Path) -> None:
    import torch

    import diffusion_cam as dc
    from diffusion_cam.testing import random_image, tiny_adapter

    torch.set_num_threads(1)
    context = (image_size // 8) ** 2 + 64
    adapter = tiny_adapter(seed=0, gen_length=8, image_size=image_size, vocab_size=vocab, context=context)
    adapter.batch_expand_safe = False  # the vmapped backward, as the real families run it
    if variant == "full":
        adapter.output_head = lambda: None
    t0 = time.perf_counter()
    exp = dc.DiffusionCAM(adapter, layer=1, state="final", chunk_size=chunk).explain(random_image(0, image_size),
                                                                                    "describe the image")
    seconds = time.perf_counter() - t0
    np.save(out / f"{variant}.npy", exp.raw_grid_maps)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"variant": variant, "peak_mb": peak_kb / 1024, "seconds": seconds,
                      "positions": int(adapter.prepare([random_image(0, image_size)], "describe the image", 8)
                                       .input_ids.numel()), "tokens": len(exp.tokens)}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image-size", type=int, default=256, help="image side in px (8-px patches: 256 -> 1,024 tokens)")
    ap.add_argument("--vocab", type=int, default=126464, help="output vocabulary (default: LLaDA's)")
    ap.add_argument("--chunk-size", type=int, default=8, help="targets per batched backward")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.image_size, args.vocab, args.chunk_size, Path(args.out))
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ("narrowed", "full"):
            run = subprocess.run([sys.executable, __file__, "--child", variant, "--out", tmp,
                                  "--image-size", str(args.image_size), "--vocab", str(args.vocab),
                                  "--chunk-size", str(args.chunk_size)], capture_output=True, text=True)
            if run.returncode != 0:
                print(run.stderr, file=sys.stderr)
                return run.returncode
            rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
        same = np.allclose(np.load(Path(tmp) / "narrowed.npy"), np.load(Path(tmp) / "full.npy"), atol=1e-5)
    print(f"{rows[0]['positions']} positions, vocabulary {args.vocab:,}, {rows[0]['tokens']} tokens explained from one "
          f"forward, {args.chunk_size} per batched backward, one CPU thread")
    print("| head projects | peak memory | wall time |")
    print("|---|---:|---:|")
    for row, label in zip(rows, ("the scored rows (forward_at)", "every row")):
        print(f"| {label} | {row['peak_mb']:,.0f} MB | {row['seconds']:.1f} s |")
    print(f"same maps (within 1e-5): {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
