"""Pictures and reports: overlays, file names, grid, trajectory GIF, HTML safety, CLI, benchmark report."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
from PIL import Image, ImageSequence

import diffusion_cam as dc
from diffusion_cam.errors import DiffusionCamError, OutputError, TargetError, UnknownNameError
from diffusion_cam.explanation import Explanation
from diffusion_cam.bench_report import bench_html, bench_report, summarize
from diffusion_cam.report import (explanation_data, script_json, token_data_uri,
                                  write_pictures)
from diffusion_cam.visualize import (OVERLAY_PATTERN, VisualizationError, colorize, colormap_lut, denoising_steps,
                                     grid_image, overlay, overlay_filenames, safe_slug, trajectory_frames)

NASTY = ["../../etc/passwd", "<b>", "猫", "café", "", "  ", "CON", "a/b\\c", "x" * 300, "</script><script>alert(1)</script>"]


def make_explanation(tokens=("a", "red", "circle", "and", "blue", "square"), *, steps=None, trajectory=None,
                     prompt="describe the image", size=(40, 56), seed=0) -> Explanation:
    """A synthetic explanation: one Gaussian blob per word at a different place."""
    rng = np.random.default_rng(seed)
    h, w = size
    n = len(tokens)
    yy, xx = np.mgrid[0:h, 0:w]
    maps = np.stack([np.exp(-(((yy - rng.uniform(0, h)) / 6) ** 2 + ((xx - rng.uniform(0, w)) / 6) ** 2))
                     for _ in range(n)]).astype(np.float32)
    raw = np.clip(maps + rng.random(maps.shape).astype(np.float32) * 0.5, 0, 1).astype(np.float32)
    if steps is None:
        steps = [int(s) for s in rng.permutation(n)]
    if trajectory is None:
        by_step: dict[int, list[int]] = {}
        for i, s in enumerate(steps):
            by_step.setdefault(s, []).append(i)
        trajectory = [{"step": s, "committed": c, "ids": [10 + i for i in c]} for s, c in sorted(by_step.items())]
    grid = maps[:, ::8, ::8].copy()
    return Explanation(
        answer=" ".join(tokens), tokens=list(tokens), token_ids=[10 + i for i in range(n)],
        token_indices=list(range(n)), steps=list(steps), maps=maps, raw_maps=raw, grid_maps=grid,
        raw_grid_maps=raw[:, ::8, ::8].copy(), image=rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
        prompt=prompt, model="synthetic", method="diffusion-cam",
        settings={"method": "diffusion-cam", "modules": ["akd"], "generation": {"steps": n}},
        scores=[float(s) for s in rng.normal(size=n)], degenerate=[False] * n, trajectory=trajectory,
        answer_tokens=list(tokens), metrics={"obj_iou": 0.5},
    )


@pytest.fixture
def exp():
    return make_explanation()


# ----------------------------------------------------------------- overlay
def test_overlay_has_image_size_and_blends(exp):
    for row in range(len(exp)):
        ov = exp.overlay(row)
        assert ov.shape == exp.image.shape and ov.dtype == np.uint8
    np.testing.assert_array_equal(exp.overlay(0, alpha=0.0), exp.image)
    np.testing.assert_array_equal(exp.overlay(0, alpha=1.0), colorize(exp.maps[0]))
    ov = exp.overlay("circle", cmap="inferno", alpha=0.3)
    want = np.round(0.7 * exp.image.astype(np.float32) + 0.3 * colormap_lut("inferno")[
        np.round(np.clip(exp.maps[2], 0, 1) * 255).astype(np.uint8)].astype(np.float32))
    np.testing.assert_array_equal(ov, want.astype(np.uint8))
    # a map at grid resolution is resized to the image
    assert overlay(exp.image, exp.grid_maps[0]).shape == exp.image.shape


def test_colormap_ends_and_names():
    lut = colormap_lut("jet")
    assert lut.shape == (256, 3) and lut[0, 2] > 100 and lut[0, 0] < 50  # jet: blue at 0
    assert lut[255, 0] > 100 and lut[255, 2] < 50  # ... red at 1
    with pytest.raises(UnknownNameError, match="unknown colour map 'nope'.*jet"):
        colormap_lut("nope")


def test_overlay_bad_inputs_are_specific(exp):
    with pytest.raises(VisualizationError, match="alpha must lie in"):
        exp.overlay(0, alpha=1.5)
    assert issubclass(VisualizationError, DiffusionCamError)
    with pytest.raises(VisualizationError, match="2-D"):
        overlay(exp.image, exp.maps)
    with pytest.raises(TargetError, match=r"'dog' is not in the answer.*0:'a', 1:'red'"):
        exp.overlay("dog")
    with pytest.raises(TargetError, match="out of range"):
        exp.overlay(99)


def test_ambiguous_word_lists_the_answer():
    e = make_explanation(("a", "circle", "and", "a", "square"))
    with pytest.raises(TargetError, match=r"'a' occurs 2 times.*rows \[0, 3\].*4:'square'"):
        e.overlay("a")
    assert e.overlay(3).shape == e.image.shape


def test_words_split_into_subwords_have_one_map():
    # byte-level BPE texts: a leading space opens a word, "gir" + "affe" is one word
    e = make_explanation(("a", " gir", "affe", " eats", ","))
    assert e.words() == [("a", [0]), ("giraffe", [1, 2]), ("eats", [3])]
    mean = (e.maps[1] + e.maps[2]) / 2
    np.testing.assert_allclose(e.map("giraffe"), mean / mean.max(), rtol=1e-6)
    np.testing.assert_allclose(e.map("Giraffe", raw=True), (e.raw_maps[1] + e.raw_maps[2]).clip(0) /
                               (e.raw_maps[1] + e.raw_maps[2]).max(), rtol=1e-6)
    assert e.overlay("giraffe").shape == e.image.shape
    np.testing.assert_array_equal(e.map("affe"), e.maps[2])  # a token's own text still means that token
    assert e.to_dict()["words"][1] == {"word": "giraffe", "rows": [1, 2]}
    with pytest.raises(TargetError, match="'zebra' is not in the answer"):
        e.map("zebra")
    twice = make_explanation((" gir", "affe", " and", " gir", "affe"))
    with pytest.raises(TargetError, match=r"'giraffe' occurs 2 times.*\[\[0, 1\], \[3, 4\]\]"):
        twice.map("giraffe")


def test_words_of_a_partial_explanation_keep_only_explained_rows():
    e = make_explanation((" gir", "affe"))
    e.answer_tokens, e.token_indices = [" a", " gir", "affe", " runs"], [2, 3]
    assert e.words() == [("giraffe", [0]), ("runs", [1])]


# ------------------------------------------------------------- save / load
def test_save_load_round_trip_is_exact(exp, tmp_path):
    exp.save(tmp_path / "a")
    back = Explanation.load(tmp_path / "a")
    for name in ("maps", "raw_maps", "grid_maps", "raw_grid_maps", "image"):
        a, b = getattr(exp, name), getattr(back, name)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    for name in ("answer", "tokens", "token_ids", "token_indices", "steps", "prompt", "model", "method", "settings",
                 "scores", "degenerate", "trajectory", "answer_tokens", "metrics"):
        assert getattr(back, name) == getattr(exp, name), name
    back.save(tmp_path / "b")
    for f in ("result.json", "maps.npz"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


# --------------------------------------------------------------- file names
def test_file_names_are_safe_and_distinct():
    names = overlay_filenames(NASTY)
    assert len(set(names)) == len(names)
    for name in names:
        assert OVERLAY_PATTERN.match(name), name
        assert len(name) < 64 and "/" not in name and "\\" not in name and ".." not in name
    assert names[0] == "overlay_00_etc-passwd.png"
    assert names[1] == "overlay_01_b.png"
    assert names[2] == "overlay_02_token.png"
    assert names[3] == "overlay_03_cafe.png"
    assert safe_slug("Circle!") == "circle"
    assert overlay_filenames(["w"] * 120)[7] == "overlay_007_w.png"  # zero padding grows with the count


def test_write_pictures_with_nasty_tokens_stays_inside(tmp_path):
    e = make_explanation(tuple(NASTY))
    out = tmp_path / "deep" / "out"
    written = write_pictures(e, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep"]
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["out"]
    assert sorted(written) == sorted(p.name for p in out.iterdir())
    overlays = [w for w in written if w.startswith("overlay_")]
    assert overlays == overlay_filenames(NASTY)
    for row, name in enumerate(overlays):
        with Image.open(out / name) as im:
            assert im.size == (e.image.shape[1], e.image.shape[0]) and im.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(im), e.overlay(row))


# ------------------------------------------------------------ whole output
def test_write_pictures_outputs_and_determinism(exp, tmp_path):
    written = write_pictures(exp, tmp_path / "one")
    assert written[-3:] == ["grid.png", "trajectory.gif", "report.html"]
    assert len([w for w in written if w.startswith("overlay_")]) == len(exp)
    write_pictures(exp, tmp_path / "two")
    digest = {d: {f: hashlib.sha256((tmp_path / d / f).read_bytes()).hexdigest() for f in written} for d in ("one", "two")}
    assert digest["one"] == digest["two"]


def test_stale_overlays_are_replaced(tmp_path):
    write_pictures(make_explanation(("x", "y", "z")), tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    write_pictures(make_explanation(("dog",)), tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert [n for n in names if n.startswith("overlay_")] == ["overlay_00_dog.png"]
    assert "notes.txt" in names


def test_grid_layout(exp):
    plain = grid_image(exp)
    compared = grid_image(exp, compare_raw=True)
    assert plain.mode == "RGB" and plain.width >= 5 * exp.image.shape[1]
    assert compared.height > plain.height  # raw rows added
    # the image tile is drawn pixel-exact (nearest-neighbour upscaling of the input)
    arr = np.asarray(plain)
    assert arr.std() > 10


def test_gif_has_one_frame_per_committing_step(tmp_path):
    # 6 words committed in 4 steps (two steps commit two words); step 1 committed nothing of the answer
    e = make_explanation(steps=[0, 2, 2, 3, 5, 5])
    assert [s["step"] for s in denoising_steps(e)] == [0, 2, 3, 5]
    write_pictures(e, tmp_path)
    with Image.open(tmp_path / "trajectory.gif") as gif:
        assert gif.n_frames == len(e.trajectory) == 4
        assert gif.info.get("loop") == 0
        frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(gif)]
    assert all(f.shape == frames[0].shape for f in frames)
    assert all(not np.array_equal(a, b) for a, b in zip(frames, frames[1:]))


def test_gif_steps_follow_denoising_order_not_reading_order():
    e = make_explanation(("one", "two", "three"), steps=[2, 0, 1])
    frames = trajectory_frames(e)
    assert len(frames) == 3
    # the first frame shows the map of "two" (committed first): its heat peak sits where that map peaks
    data = explanation_data(e)
    assert [s["committed"] for s in data["steps"]] == [[1], [2], [0]]
    assert data["steps"][0]["uri"] == token_data_uri(e, 1)


def test_result_without_trajectory_falls_back_to_commit_steps(tmp_path):
    e = make_explanation(steps=[1, 0, 1, 2, 2, 3], trajectory=[])
    write_pictures(e, tmp_path)
    with Image.open(tmp_path / "trajectory.gif") as gif:
        assert gif.n_frames == 4


def test_a_given_answer_has_no_denoising_frames_and_shows_its_faithfulness(tmp_path):
    e = make_explanation(("a", "red", "cross"), steps=[-1, -1, -1], trajectory=[])
    e.metrics = {"per_token": [{"obj_iou": 0.5}] * 3}
    e.faithfulness = {"replacement": "blur", "mean": {},
                      "per_token": [{"deletion_auc": 0.1 * i, "insertion_auc": 0.9, "deletion": [1.0]} for i in range(3)]}
    data = explanation_data(e)
    assert data["steps"] == [] and [t["step"] for t in data["tokens"]] == [None, None, None]
    assert data["tokens"][2]["metrics"] == {"obj_iou": 0.5, "deletion_auc": 0.2, "insertion_auc": 0.9}
    assert "trajectory.gif" not in write_pictures(e, tmp_path)


# ----------------------------------------------------------------- report
def test_report_is_self_contained_and_escaped():
    e = make_explanation(("a", "<b>bold</b>", "</script>", "&amp;"), prompt="<script>alert(1)</script> & 'q'")
    doc = e.to_html()
    assert "<script>alert(1)" not in doc and "&lt;script&gt;alert(1)&lt;/script&gt;" in doc
    assert "<b>bold" not in doc
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", doc)
    assert "<link" not in doc and "@import" not in doc and "url(" not in doc
    assert "default-src 'none'" in doc
    blob = re.search(r'<script type="application/json" id="dc-data">(.*?)</script>', doc, re.S).group(1)
    assert "<" not in blob and ">" not in blob and "&" not in blob
    data = json.loads(blob)
    assert [t["word"] for t in data["tokens"]] == ["a", "<b>bold</b>", "</script>", "&amp;"]
    assert data["tokens"][1]["uri"] == token_data_uri(e, 1)
    # exactly two script elements: the JSON blob and the report's own script
    assert doc.count("<script") == 2


def test_script_json_is_inert():
    text = script_json({"x": "</script><!-- & \u2028"})
    assert "</" not in text and "<!--" not in text and "\u2028" not in text
    assert json.loads(text) == {"x": "</script><!-- & \u2028"}


def test_report_from_real_method(tiny, image, tmp_path):
    from diffusion_cam.adapters.base import GenerationConfig

    e = dc.GradientCAM(tiny, layer=1, modules=(), generation=GenerationConfig(gen_length=8, steps=4)).explain(
        image, "describe the image")
    written = write_pictures(e, tmp_path / "g")
    with Image.open(tmp_path / "g" / "trajectory.gif") as gif:
        assert gif.n_frames == len(e.trajectory) == len({s for s in e.steps})
    assert len([w for w in written if w.startswith("overlay_")]) == len(e)

    d = dc.DiffusionCAM(tiny).explain(image, "describe the image")
    assert not np.array_equal(d.maps, d.raw_maps)
    write_pictures(d, tmp_path / "d", compare_raw=True)
    data = explanation_data(d)
    assert all(t["raw_uri"] is not None for t in data["tokens"])


# -------------------------------------------------------------------- CLI
def test_cli_report_regenerates_without_model(exp, tmp_path, capsys):
    from diffusion_cam.cli import main

    exp.save(tmp_path / "res")
    assert main(["report", str(tmp_path / "res")]) == 0
    assert {"grid.png", "trajectory.gif", "report.html"} <= {p.name for p in (tmp_path / "res").iterdir()}
    assert main(["report", str(tmp_path / "res"), "--out", str(tmp_path / "other"), "--compare-raw",
                 "--cmap", "turbo", "--alpha", "0.4"]) == 0
    with Image.open(tmp_path / "other" / "overlay_02_circle.png") as im:
        np.testing.assert_array_equal(np.asarray(im), exp.overlay(2, cmap="turbo", alpha=0.4))
    capsys.readouterr()
    assert main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "missing" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "result.json" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "res"), "--cmap", "nope"]) == 2
    assert "unknown colour map" in capsys.readouterr().err


# --------------------------------------------------------- benchmark report
def _records(tmp_path):
    rng = np.random.default_rng(3)
    recs = []
    for method, mu in (("diffusion-cam", 0.7), ("grad<cam>", 0.3)):
        for item in range(5):
            recs.append({"method": method, "item": f"s{item}",
                         "metrics": {"f3": float(mu + 0.05 * item), "obj_iou": float(rng.random()),
                                     "deletion_auc": float(rng.random())}})
    recs.append({"method": "grad<cam>", "item": "s9", "error": "no <mask> for item"})
    e = make_explanation()
    e.save(tmp_path / "items" / "best")
    recs[4]["explanation"] = str(tmp_path / "items" / "best")
    recs[4]["token"] = "circle"
    recs[0]["explanation"] = str(tmp_path / "items" / "absent")
    return recs, e


def test_bench_summary_means(tmp_path):
    recs, _ = _records(tmp_path)
    rows = summarize(recs, ["f3", "obj_iou"])
    assert [r["method"] for r in rows] == ["diffusion-cam", "grad<cam>"]
    assert rows[1]["n"] == 5 and rows[1]["failures"] == 1
    assert rows[0]["f3"] == pytest.approx(np.mean([0.7 + 0.05 * i for i in range(5)]))


def test_bench_report_html(tmp_path):
    recs, e = _records(tmp_path)
    path = bench_report(recs, tmp_path / "bench", title="run <1>")
    assert path == tmp_path / "bench" / "report.html"
    doc = path.read_text(encoding="utf-8")
    assert "grad&lt;cam&gt;" in doc and "grad<cam>" not in doc and "run &lt;1&gt;" in doc
    assert "no &lt;mask&gt; for item" in doc  # failures listed with their reason
    assert doc.count("<svg") == 3  # one bar chart per measured column (f3, obj_iou, deletion_auc)
    assert "Deletion AUC ↓ (lower is better)" in doc
    # fractions in the bench tables' unit: diffusion-cam's mean F3 0.8 reads 80 (percent), as in table.md
    assert '<td class="num best">80</td>' in doc and ">0.8<" not in doc
    assert "<th class=\"num\">F3</th>" in doc and "Obj-IoU (%)" in doc
    assert token_data_uri(e, 2) in doc  # the best item's saved map is in the gallery
    assert "is not a saved explanation" in doc  # the missing one is reported on its card
    # best first: diffusion-cam's s4 (f3 0.9) precedes s3 in the gallery
    assert doc.index("item s4") < doc.index("item s3")
    assert "script-src 'none'" in doc and "<script" not in doc  # a static page: no script at all
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", doc)


def test_bench_report_from_directory_and_given_summary(tmp_path):
    recs, _ = _records(tmp_path)
    d = tmp_path / "run"
    d.mkdir()
    (d / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    summary = [{"method": "diffusion-cam", "n": 5, "F3 (mean of means)": 0.81},
               {"method": "grad<cam>", "n": 5, "F3 (mean of means)": 0.42}]
    (d / "summary.json").write_text(json.dumps({"summary": summary, "settings": {"scenes": 5}}), encoding="utf-8")
    path = bench_report(d, d / "report.html")
    doc = path.read_text(encoding="utf-8")
    assert "F3 (mean of means)" in doc and doc.count("<svg") == 1 and "scenes" in doc
    with pytest.raises(OutputError, match="no benchmark records"):
        bench_report(tmp_path / "items", tmp_path / "x.html")
    assert "<table" in bench_html([], None)


# -------------------------------------------------------------------- show
def test_show_in_a_notebook_uses_an_isolated_frame(exp, monkeypatch):
    import IPython.display as display_module  # in the test extras: this test must run, not skip

    import diffusion_cam.report as rep

    shown = []
    monkeypatch.setattr(rep, "_notebook_shell", lambda: object())
    monkeypatch.setattr(display_module, "display", shown.append)
    frame = exp.show()
    assert shown == [frame]
    assert frame.data.startswith("<div><iframe srcdoc=\"") and "&lt;!doctype html&gt;" in frame.data
    assert "<script" not in frame.data  # the report's markup lives escaped inside the attribute


def test_show_outside_a_notebook_opens_the_report(exp, monkeypatch):
    import webbrowser

    import diffusion_cam.report as rep

    opened = []
    monkeypatch.setattr(rep, "_notebook_shell", lambda: None)
    monkeypatch.setattr(webbrowser, "open", opened.append)
    path = exp.show()
    try:
        assert opened == [path.as_uri()] and path.read_text(encoding="utf-8") == exp.to_html()
    finally:
        path.unlink()


def test_a_gallery_without_saved_explanations_says_how_to_get_them(tmp_path):
    recs, _ = _records(tmp_path)
    for r in recs:
        r.pop("explanation", None)
    doc = bench_html(recs)
    assert "--save-explanations N" in doc
    assert "no saved explanation" not in doc and 'class="missing"' not in doc  # no empty boxes
    recs[1]["token"] = 3  # a row of an explanation that was not kept: not shown as the word "3"
    assert "item s1 · <b>" not in bench_html(recs)


def test_report_opens_on_the_first_content_word_and_labels_its_metrics():
    e = make_explanation(("a", "red", "circle", "and", "blue", "square"))
    assert explanation_data(e)["first"] == 1  # "red", not "a"
    mask = np.zeros(e.maps.shape[1:], np.uint8)
    mask[10:20, 10:20] = 1
    e.evaluate(mask)
    doc = e.to_html()
    assert 'id="dc-caption-word">red<' in doc
    assert "mean.f3_geometric" not in doc and "F3 (geometric), mean over words" in doc
    assert "Obj-IoU (%), mean over words" in doc
    assert explanation_data(make_explanation(("a", "the")))["first"] == 0  # no content word: the first one
