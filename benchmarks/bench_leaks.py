"""Leak check: many consecutive ``explain`` calls in one process.

After a warm-up call, runs ``--calls`` explanations (default 100) with one
method object on the built-in model and prints the resident memory (from
``/proc/self/statm``) every ``--every`` calls, the growth from the first to
the last measured call, and the number of hooks left on the model.

Run: ``python benchmarks/bench_leaks.py [--model shapes-tiny] [--calls 100]``.
"""

from __future__ import annotations

import argparse
import gc
import os
import time

import numpy as np

import diffusion_cam as dc
from diffusion_cam.extract import count_hooks

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib() -> float:
    """Resident set size of this process in MiB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def scene(model: str, seed: int):
    if model == "tiny-random":
        from diffusion_cam.testing import random_image

        return random_image(seed), "describe the image"
    from diffusion_cam.datasets.shapes import generate_scene

    return generate_scene(seed).image, "describe the image"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-tiny")
    parser.add_argument("--method", default="diffusion-cam")
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--scenes", type=int, default=4, help="cycle through this many different scenes")
    parser.add_argument("--weights-dir", default=None, help="shapes-tiny: load these weights instead of the shipped ones")
    args = parser.parse_args()

    adapter = dc.load_model(args.model, **({"weights_dir": args.weights_dir} if args.weights_dir else {}))
    method = dc.get_method(args.method, adapter)
    inputs = [scene(args.model, s) for s in range(args.scenes)]
    method.explain(*inputs[0])  # warm-up: lazy imports, allocator pools
    gc.collect()
    start = rss_mib()
    print(f"model {args.model}, method {args.method}, {args.calls} calls; RSS after warm-up {start:.1f} MiB")
    samples, t0, hooks_seen = [], time.perf_counter(), 0
    for i in range(1, args.calls + 1):
        image, prompt = inputs[i % len(inputs)]
        method.explain(image, prompt)
        hooks_seen = max(hooks_seen, count_hooks(adapter.model))
        if i % args.every == 0 or i == args.calls:
            gc.collect()
            samples.append(rss_mib())
            print(f"  call {i:4d}: RSS {samples[-1]:8.1f} MiB  ({samples[-1] - start:+.1f})")
    elapsed = time.perf_counter() - t0
    growth = samples[-1] - start
    tail = np.polyfit(np.arange(len(samples)), samples, 1)[0] / args.every if len(samples) > 2 else float("nan")
    print(f"RSS growth over {args.calls} calls: {growth:+.1f} MiB (trend {tail * 1024:+.1f} KiB/call); "
          f"peak {max(samples):.1f} MiB")
    print(f"hooks left on the model: {count_hooks(adapter.model)} (max seen after a call: {hooks_seen})")
    print(f"time per call: {elapsed / args.calls * 1000:.0f} ms")


if __name__ == "__main__":
    main()
