"""The progress bar of ``explain``: shown on a terminal, not when piped or with --quiet."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

import pytest
from PIL import Image

import diffusion_cam as dc
from diffusion_cam.testing import random_image


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    path = tmp_path_factory.mktemp("progress") / "p.png"
    Image.fromarray(random_image(0)).save(path)
    return path


def _command(picture, out, *extra):
    return [sys.executable, "-m", "diffusion_cam.cli", "explain", str(picture), "--prompt", "describe the image",
            "--model", "tiny-random", "--layer", "1", "--gen-length", "8", "--steps", "8", "--chunk-size", "2",
            "--no-pictures", "--out", str(out), *extra]


def _env():
    src = os.path.join(os.path.dirname(dc.__file__), os.pardir)
    return {**os.environ, "PYTHONPATH": os.path.abspath(src), "OMP_NUM_THREADS": "1"}


def _on_terminal(argv) -> tuple[int, str]:
    """Run ``argv`` with stdout and stderr on a pseudo-terminal; its exit status and everything it printed."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=_env())
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=300), b"".join(chunks).decode("utf-8", "replace")


def test_bar_shows_on_a_terminal(picture, tmp_path):
    rc, printed = _on_terminal(_command(picture, tmp_path / "tty"))
    assert rc == 0, printed
    assert "denoising" in printed and "step" in printed  # the denoising bar
    assert "backward" in printed and "chunk" in printed  # the batched backwards, two tokens per chunk
    assert "answer:" in printed


def test_no_bar_with_quiet_or_when_piped(picture, tmp_path):
    rc, printed = _on_terminal(_command(picture, tmp_path / "quiet", "--quiet"))
    assert rc == 0 and "answer:" in printed
    assert "denoising" not in printed and "backward" not in printed
    piped = subprocess.run(_command(picture, tmp_path / "piped"), capture_output=True, text=True, env=_env(),
                           timeout=300)
    assert piped.returncode == 0 and "answer:" in piped.stdout
    assert "denoising" not in piped.stderr and "backward" not in piped.stderr


def test_progress_in_the_api(tiny, image, capsys):
    method = dc.GradientCAM(tiny, layer=1, chunk_size=2)
    quiet = method.explain(image, "describe the image")
    assert "denoising" not in capsys.readouterr().err
    shown = method.explain(image, "describe the image", progress=True)
    err = capsys.readouterr().err
    assert "denoising" in err and "backward" in err
    assert shown.answer == quiet.answer and (shown.grid_maps == quiet.grid_maps).all()  # the bar changes nothing


def test_a_terminal_that_reports_no_size_still_gets_a_bar(monkeypatch):
    import io
    import os

    from diffusion_cam.progress import bar

    # how a bare pseudo-terminal answers both shutil's and tqdm's own size queries
    monkeypatch.setattr(os, "get_terminal_size", lambda *a: os.terminal_size((0, 0)))
    monkeypatch.setattr("tqdm.std._screen_shape_wrapper", lambda: (lambda fp: (0, 0)))
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)
    out = io.StringIO()
    monkeypatch.setattr("sys.stderr", out)
    with bar(total=4, desc="bench", unit="item", mininterval=0) as b:
        b.update(4)
    assert "4/4" in out.getvalue() and "|" in out.getvalue()  # tqdm at width 0 writes the counts without a bar
