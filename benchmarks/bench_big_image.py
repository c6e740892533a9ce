"""Memory and disk of ``diffusion-cam explain`` on large images.

Runs the command line as a fresh process per case and prints its peak
resident memory (``wait4``'s ``ru_maxrss``) and the bytes it wrote:
``result.json`` + ``maps.npz`` on their own, and with the pictures
(overlays, ``grid.png``, ``trajectory.gif``, ``report.html``).

Cases (built-in ``shapes-tiny`` model, CPU):

* a 96 x 96 picture: what the model and the libraries take;
* a 4000 x 3000 photo-like picture (a shapes scene enlarged, with pixel
  noise so that it compresses like a photo), the model's own answer, and a
  given 15-word answer (memory should not grow with the words);
* a 640 x 480 picture with a 64-token answer, every token explained; the
  built-in model's context holds no 64-token answer, so this case runs the
  test model ``tiny-random`` (``--gen-length 64 --steps 64``).

The pictures are made by a child process, so that the parent, whose memory
a child's peak would include (``fork`` copies it), stays small.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_big_image.py [--keep DIR]``.
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



def photo(path: str, width: int, height: int, seed: int) -> None:
    import numpy as np
    from PIL import Image

    from diffusion_cam.datasets.shapes import generate_scene

    scene = Image.fromarray(generate_scene(seed + 101).image).resize((width, height), Image.Resampling.BILINEAR)
    noise = np.random.default_rng(seed).integers(-8, 9, (height, width, 3))
    Image.fromarray(np.clip(np.asarray(scene, dtype=np.int16) + noise, 0, 255).astype(np.uint8)).save(path)


def run(args: list[str]) -> tuple[int, float, float]:
    """(exit status, peak RSS in MB, seconds) of one ``diffusion-cam`` process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "diffusion_cam.cli", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode()
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        print(err, file=sys.stderr)
    return proc.returncode, usage.ru_maxrss / 1000, time.perf_counter() - t0  # ru_maxrss is in KiB on Linux


def size(folder: Path, names: tuple[str, ...] | None = None) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and (names is None or p.name in names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", default=None, help="write the images and outputs here (default: a temporary folder)")
    parser.add_argument("--make", nargs=4, default=None, metavar=("PATH", "W", "H", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make:
        return photo(args.make[0], *map(int, args.make[1:]))
    root = Path(args.keep or tempfile.mkdtemp(prefix="bench_big_image_"))
    root.mkdir(parents=True, exist_ok=True)
    cases = [
        ("96x96, own answer", (96, 96, 0), []),  # the model and libraries alone, to subtract
        ("4000x3000, own answer", (4000, 3000, 0), []),
        ("4000x3000, 15 given words", (4000, 3000, 0),
         ["--answer", "a red circle and a blue square and a green triangle and a purple cross"]),
        ("640x480, 64 tokens", (640, 480, 1), ["--model", "tiny-random", "--gen-length", "64", "--steps", "64"]),
    ]
    print(f"{'case':<26} {'tokens':>6} {'peak RSS':>10} {'result+maps':>12} {'with pictures':>14} {'time':>7}")
    for name, image, extra in cases:
        slug = name.replace(", ", "-").replace(" ", "-")
        path = root / f"{slug}.png"
        subprocess.run([sys.executable, __file__, "--make", str(path), *map(str, image)], check=True)
        for pictures in (False, True):
            out = root / f"{slug}{'' if pictures else '-no-pictures'}"
            rc, rss, seconds = run(["explain", str(path), "--prompt", "describe the image", "--out", str(out),
                                    *extra, *([] if pictures else ["--no-pictures"])])
            if rc:
                raise SystemExit(f"{name}: diffusion-cam exited with {rc}")
            if pictures:
                tokens = len(json.loads((out / "result.json").read_text())["tokens"])
                print(f"{name:<26} {tokens:>6} {rss:>7.0f} MB {size(out, ('result.json', 'maps.npz')) / 1e6:>9.2f} MB "
                      f"{size(out) / 1e6:>11.2f} MB {seconds:>6.1f}s")
            else:
                print(f"{name + ' (--no-pictures)':<26} {'':>6} {rss:>7.0f} MB {size(out) / 1e6:>9.2f} MB "
                      f"{'':>14} {seconds:>6.1f}s")
    print(f"outputs in {root}")


if __name__ == "__main__":
    main()
