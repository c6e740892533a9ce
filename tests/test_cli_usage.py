"""What a new user meets first on the command line: short usage errors, refused settings, one line per failure."""

from __future__ import annotations

import pytest

import diffusion_cam as dc
from diffusion_cam.cli import main

SCENE = str(dc.example_scenes()[0].image)


def _usage_error(argv, capsys) -> list[str]:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err.strip().splitlines()


def test_an_unknown_option_shows_the_sub_commands_usage_in_one_line(capsys):
    lines = _usage_error(["explain", SCENE, "--prompt", "describe the image", "--bogus"], capsys)
    assert len(lines) == 2, lines
    assert lines[0].startswith("usage: diffusion-cam explain image [image ...]")
    assert "--prompt PROMPT" in lines[0]
    assert lines[1] == "error: unrecognized arguments: --bogus"


@pytest.mark.parametrize("argv, command, message", [
    (["explain", SCENE], "explain", "required: --prompt"),
    (["bench"], "bench", "required: --out"),
    (["report"], "report", "required: RESULT_DIR"),
    (["explain", SCENE, "--prompt", "x", "--layer", "one"], "explain", "invalid int value: 'one'"),
    (["explian"], "", "invalid choice: 'explian'"),
])
def test_usage_errors_are_two_lines(argv, command, message, capsys):
    lines = _usage_error(argv, capsys)
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"usage: diffusion-cam {command}".rstrip())
    assert lines[1].startswith("error: ") and message in lines[1]


def test_the_last_block_is_refused_with_the_reason(tmp_path, capsys):
    adapter = dc.load_model("shapes-tiny")
    last = len(adapter.blocks()) - 1
    for layer in (last, -1, [0, last]):
        with pytest.raises(dc.errors.LayerError, match="only that position's own logits"):
            dc.DiffusionCAM(adapter, layer=layer)
    with pytest.raises(dc.errors.LayerError, match="gets no gradient at the image positions"):
        dc.get_method("llava-cam", adapter, layer=last)
    assert dc.DiffusionCAM(adapter, layer=last - 1).layers == [last - 1]
    assert dc.load_model("tiny-random").blocks_without_image_gradient == {}  # unknown: nothing refused

    out = tmp_path / "o"
    assert main(["explain", SCENE, "--prompt", "describe the image", "--layer", str(last), "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: layer {last} gets no gradient"), lines
    assert not list(out.glob("*"))  # refused before anything ran


def test_an_empty_out_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["explain", SCENE, "--prompt", "describe the image", "--out", ""]) == 2
    assert capsys.readouterr().err.strip() == "error: --out is empty: name the output directory, e.g. --out out/scene"
    assert main(["report", str(tmp_path), "--out", " "]) == 2
    assert "--out is empty" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_failed_image_names_its_path_once(tmp_path, capsys):
    missing = str(tmp_path / "missing.png")
    assert main(["explain", missing, SCENE, "--prompt", "describe the image", "--no-pictures",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == f"error: {missing}: no such file"
    assert err[-1] == "1 of 2 images failed"


def test_report_redraws_every_folder_of_a_run_over_several_images(tmp_path, capsys):
    from PIL import Image

    from diffusion_cam.testing import random_image

    images = []
    for k in (1, 2):
        images.append(tmp_path / f"img{k}.png")
        Image.fromarray(random_image(k)).save(images[-1])
    out = tmp_path / "all"
    argv = ["explain", *map(str, images), str(tmp_path / "gone.png"), "--prompt", "describe the image",
            "--model", "tiny-random", "--out", str(out)]
    assert main(argv) == 2  # one image is missing; the others are explained
    for stale in [out / "index.html", *out.glob("img*/report.html"), *out.glob("img*/grid.png")]:
        stale.unlink()
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    for name in ("img1", "img2"):
        assert (out / name / "report.html").is_file() and (out / name / "grid.png").is_file()
    index = (out / "index.html").read_text(encoding="utf-8")
    assert 'href="img1/report.html"' in index and 'href="img2/report.html"' in index
    assert "gone.png: no such file" in index and "3 images" in index and "1 failed" in index
    # elsewhere, and without index.json: the folders found
    (out / "index.json").unlink()
    assert main(["report", str(out), "--out", str(tmp_path / "copy")]) == 0
    copy = (tmp_path / "copy" / "index.html").read_text(encoding="utf-8")
    assert "2 images" in copy and (tmp_path / "copy" / "img2" / "report.html").is_file()
