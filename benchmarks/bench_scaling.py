"""Items per second of ``diffusion-cam bench`` with 1 and 2 processes (torchrun, CPU, gloo).

    python benchmarks/bench_scaling.py [--model shapes-tiny] [--items 40] [--methods ...]

Each configuration runs the same command on fresh output directories; the
wall time covers the whole command (interpreter start, model load, items,
merge), the items/s figure divides the items by it.  Every process is pinned
to one thread (OMP_NUM_THREADS=1), so 2 processes can use 2 cores at best;
on a machine whose cores are shared with other jobs the speed-up is bounded
by what those jobs leave free: the figures are printed as measured, together
with the machine's core count and load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _run(nproc: int, args, out: Path) -> float:
    bench = ["-m", "diffusion_cam.cli", "bench", "--model", args.model, "--items", str(args.items),
             "--methods", *args.methods, "--out", str(out), "--no-progress"]
    if args.no_faithfulness:
        bench.append("--no-faithfulness")
    if nproc == 1:
        cmd = [sys.executable, *bench]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), *bench]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"bench with {nproc} process(es) failed:\n{res.stderr[-3000:]}")
    return wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shapes-tiny")
    p.add_argument("--items", type=int, default=40, help="Shapes scenes per run")
    p.add_argument("--methods", nargs="+", default=["diffusion-cam", "gradcam", "llava-cam", "tam", "center"])
    p.add_argument("--no-faithfulness", action="store_true")
    p.add_argument("--repeats", type=int, default=1, help="runs per configuration (the fastest is kept)")
    args = p.parse_args()

    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    print(f"model {args.model}, {args.items} items x {len(args.methods)} methods, "
          f"faithfulness {'off' if args.no_faithfulness else 'on'}")
    walls = {}
    with tempfile.TemporaryDirectory() as tmp:
        for nproc in (1, 2):
            best = min(_run(nproc, args, Path(tmp) / f"p{nproc}-{r}") for r in range(args.repeats))
            walls[nproc] = best
            print(f"{nproc} process(es): {best:7.1f} s wall, {args.items / best:6.3f} items/s")
        t1 = json.loads((Path(tmp) / "p1-0" / "table.json").read_text())["main"]
        t2 = json.loads((Path(tmp) / "p2-0" / "table.json").read_text())["main"]
        same = [{k: v for k, v in r.items() if k != "seconds"} for r in t1] == \
               [{k: v for k, v in r.items() if k != "seconds"} for r in t2]
    print(f"speed-up with 2 processes: {walls[1] / walls[2]:.2f}x (target >= 1.8x); "
          f"tables identical apart from timings: {same}")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
