"""All-token extraction: one batched backward for N tokens vs one backward per token.

Times, for one forward state, the gradients of N answer tokens (N = 16, 32):
``batched`` uses the batched vector-Jacobian product (chunk = N), ``loop``
one backward per token, ``one`` a single token.  Target: all N batched
<= 2 x one.  Run: ``python benchmarks/bench_extraction.py [--model shapes-tiny]``.
"""

from __future__ import annotations

import argparse
import time

import torch

import diffusion_cam as dc
from diffusion_cam.extract import Target, grid_gradients, target_scores
from diffusion_cam.generation import llada_generate


def _time(fn, repeat: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench(adapter, n: int, image, prompt: str, layer: int, repeat: int) -> dict[str, float]:
    inputs = adapter.prepare([image], prompt, n)
    gen = llada_generate(adapter, inputs, dc.GenerationConfig(gen_length=n))
    # explain every canvas position (answer and padding alike): N targets of one state
    targets = [Target(inputs.answer_start + i, gen.answer_ids[i]) for i in range(n)]

    def run(ts, chunk, strategy=None):
        return lambda: grid_gradients(adapter, inputs, gen.sequence, [layer], lambda lg: target_scores(lg, ts),
                                      chunk_size=chunk, strategy=strategy, n_targets=len(ts))

    one = _time(run(targets[:1], 1), repeat)
    batched = _time(run(targets, n), repeat)
    vmap = _time(run(targets, n, "vmap"), repeat)
    loop = _time(lambda: [run([t], 1)() for t in targets], max(1, repeat // 2))
    return {"one": one, "batched": batched, "vmap": vmap, "loop": loop}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="tiny-random", help="tiny-random or shapes-tiny")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.model == "tiny-random":
        from diffusion_cam.testing import random_image, tiny_adapter

        adapter, image, prompt = tiny_adapter(gen_length=32), random_image(0), "describe the image"
        make = lambda n: tiny_adapter(gen_length=n)  # noqa: E731
    else:
        from diffusion_cam.datasets.shapes import generate_scene

        adapter = dc.load_model(args.model)
        image, prompt = generate_scene(12345).image, "describe the image"
        make = lambda n: adapter  # noqa: E731
    print(f"model={args.model} threads={args.threads} layer={adapter.default_layer}")
    print(f"{'N':>4} {'one (ms)':>10} {'batched N (ms)':>15} {'vmap N (ms)':>12} {'loop N (ms)':>12} "
          f"{'batched/one':>12} {'loop/batched':>13}")
    for n in (16, 32):
        a = make(n)
        try:
            r = bench(a, n, image, prompt, a.default_layer, args.repeat)
        except dc.errors.PromptError as err:
            print(f"{n:>4} skipped: {err}")
            continue
        print(f"{n:>4} {r['one']*1e3:>10.1f} {r['batched']*1e3:>15.1f} {r['vmap']*1e3:>12.1f} {r['loop']*1e3:>12.1f} "
              f"{r['batched']/r['one']:>12.2f} {r['loop']/r['batched']:>13.2f}")


if __name__ == "__main__":
    main()
