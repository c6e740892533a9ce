"""Per-word grounding scores: range, determinism, persistence, the CLI line, and absent objects on shipped scenes."""

import json
import warnings

import numpy as np
import pytest

import diffusion_cam as dc
from diffusion_cam import grounding as gr
from diffusion_cam.cli import main
from diffusion_cam.datasets import shapes


@pytest.fixture(scope="module")
def shapes_tiny():
    return dc.load_model("shapes-tiny")


def _explain(adapter, image, prompt, **kw):
    with warnings.catch_warnings():
        # an absent-object question draws the out-of-world warning; it is the case under test
        warnings.simplefilter("ignore", dc.errors.OutOfWorldWarning)
        return dc.DiffusionCAM(adapter, **kw).explain(image, prompt)


def test_score_in_range_deterministic_and_per_token(tiny, image):
    a = dc.DiffusionCAM(tiny, layer=1).explain(image, "describe the image")
    b = dc.DiffusionCAM(tiny, layer=1).explain(image, "describe the image")
    assert len(a.grounding) == len(a.tokens)
    assert a.grounding == b.grounding
    for g, token in zip(a.grounding, a.tokens):
        assert 0.0 <= g["score"] <= 1.0 and g["token"] == token
        assert g["flagged"] == (g["score"] < gr.THRESHOLD)
        assert 0.0 <= g["concentration"] <= 1.0 and g["raw_mass"] >= 0.0
        assert g["probability"] is None or 0.0 <= g["probability"] <= 1.0  # recorded by the trajectory
    assert a.ungrounded() == [g["token"] for g in a.grounding if g["flagged"]]


def test_features_follow_the_map():
    """A map on one patch is more concentrated and contrasted than a spread one; an empty map has neither."""
    peak, flat = np.zeros((8, 8)), np.ones((8, 8))
    peak[3, 4] = 1.0
    assert gr._concentration(peak) == pytest.approx(1.0) and gr._concentration(flat) == pytest.approx(0.0, abs=1e-12)
    assert gr._contrast(peak) == pytest.approx(64.0) and gr._contrast(flat) == pytest.approx(1.0)
    assert gr._concentration(np.zeros((8, 8))) == 0.0 and gr._contrast(np.zeros((8, 8))) == 0.0


def test_given_answer_has_no_commit_probability(shapes_tiny):
    scene = dc.example_scenes()[1]
    exp = dc.DiffusionCAM(shapes_tiny, state="final").explain(scene.image, "what color is the circle", answer="red")
    g = exp.grounding[0]
    assert g["probability"] is None and g["commit_step"] is None  # never denoised: no commit probability
    assert g["case"] == "given"
    names, coefficients, scale = gr.CASES["given"]
    assert "probability" not in names
    assert g["score"] == pytest.approx(gr.combine([gr.value(g, n) for n in names], coefficients, scale))


def test_each_case_scores_with_its_own_features():
    """The case follows what a token has; a feature the case does not read leaves its score unchanged."""
    base = {"concentration": 0.3, "contrast": 20.0, "raw_mass": 0.04}
    tokens = {"generated": {**base, "probability": 0.9}, "given": {**base, "probability": None},
              "generated+probe": {**base, "probability": 0.9, "masked_probability": 0.8, "deletion_drop": 0.1},
              "given+probe": {**base, "probability": None, "masked_probability": 0.8, "deletion_drop": 0.1}}
    assert set(gr.CASES) == set(tokens)
    for name, feat in tokens.items():
        assert gr.case(feat) == name
        names, coefficients, scale = gr.CASES[name]
        assert len(coefficients) == len(names) + 1 and len(scale) == len(names)
        assert set(names) <= set(gr.FEATURES) and all(sd > 0 for _, sd in scale)
        s = gr.score(feat)
        assert s == pytest.approx(gr.combine([gr.value(feat, n) for n in names], coefficients, scale))
        unread = next((f for f in ("concentration", "raw_mass", "deletion_drop") if f in feat and f not in names), None)
        if unread:
            assert gr.score({**feat, unread: feat[unread] + 0.5}) == s
    # a table without the probe's cases scores a probed token as it would an unprobed one
    plain = {k: v for k, v in gr.CASES.items() if "+probe" not in k}
    assert gr.score(tokens["given+probe"], plain) == gr.score(tokens["given"])


def test_probe_is_deterministic_saved_and_reloaded(tmp_path, shapes_tiny):
    scene = dc.example_scenes()[1]  # a purple circle and a green square
    method = dc.DiffusionCAM(shapes_tiny, state="final")
    right = method.explain(scene.image, "what color is the circle", answer="purple", grounding_probe=True)
    again = method.explain(scene.image, "what color is the circle", answer="purple", grounding_probe=True)
    wrong = method.explain(scene.image, "what color is the circle", answer="red", grounding_probe=True)
    plain = method.explain(scene.image, "what color is the circle", answer="purple")
    assert right.grounding == again.grounding  # bit for bit
    g = right.grounding[0]
    assert g["case"] == "given+probe" and "masked_probability" not in plain.grounding[0]
    assert 0.0 <= g["masked_probability"] <= 1.0 and -1.0 <= g["deletion_drop"] <= 1.0
    # the map's own features do not change with the probe
    assert {k: g[k] for k in plain.grounding[0] if k not in ("score", "flagged", "case")} == {
        k: v for k, v in plain.grounding[0].items() if k not in ("score", "flagged", "case")}
    # the model, asked with the word masked, backs the true colour far more than a wrong one
    assert g["masked_probability"] > 0.5 and wrong.grounding[0]["masked_probability"] < 0.01
    right.save(tmp_path)
    saved = json.loads((tmp_path / "result.json").read_text())["grounding"]
    assert saved == json.loads(json.dumps(right.grounding))
    assert dc.Explanation.load(tmp_path).grounding == saved


def test_result_without_a_case_still_loads(tmp_path, shapes_tiny):
    """A result.json written before scores had cases keeps its saved scores and flags."""
    exp = _explain(shapes_tiny, dc.example_scenes()[1].image, "what shape is red")
    exp.save(tmp_path)
    path = tmp_path / "result.json"
    doc = json.loads(path.read_text())
    doc["grounding"] = [{k: v for k, v in g.items() if k != "case"} for g in doc["grounding"]]
    path.write_text(json.dumps(doc))
    back = dc.Explanation.load(tmp_path)
    assert back.grounding == doc["grounding"] and back.ungrounded() == exp.ungrounded()


def test_cli_grounding_probe(tmp_path):
    scene = dc.example_scenes()[1]
    out = tmp_path / "out"
    rc = main(["explain", str(scene.image), "--prompt", "what shape is purple", "--model", "shapes-tiny",
               "--out", str(out), "--no-pictures", "--grounding-probe"])
    assert rc == 0
    g = json.loads((out / "result.json").read_text())["grounding"][0]
    assert g["case"] == "generated+probe" and g["masked_probability"] is not None


def test_grounding_saved_and_reloaded(tmp_path, shapes_tiny):
    exp = _explain(shapes_tiny, dc.example_scenes()[1].image, "what color is the circle")
    exp.save(tmp_path)
    saved = json.loads((tmp_path / "result.json").read_text())["grounding"]
    assert saved == json.loads(json.dumps(exp.grounding))
    back = dc.Explanation.load(tmp_path)
    assert back.grounding == saved and back.ungrounded() == exp.ungrounded()
    assert "grounding" in exp.to_html()


def test_cli_prints_flagged_words(tmp_path, capsys):
    """The line lists exactly the words the saved result flags, and only when there are some."""
    scene = dc.example_scenes()[0]  # one purple square: "what color is the circle" asks about an absent object
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dc.errors.OutOfWorldWarning)
        rc = main(["explain", str(scene.image), "--prompt", "what color is the circle", "--model", "shapes-tiny",
                   "--out", str(out), "--no-pictures"])
    assert rc == 0
    printed = capsys.readouterr().out.splitlines()
    flagged = [g for g in json.loads((out / "result.json").read_text())["grounding"] if g["flagged"]]
    lines = [line for line in printed if line.startswith("possibly ungrounded")]
    if flagged:
        assert lines == [f"possibly ungrounded (grounding score below {gr.THRESHOLD}): "
                         + ", ".join(f"{g['token'].strip()} ({g['score']:.2f})" for g in flagged)]
        assert printed.index(lines[0]) == 1  # right after the answer
    else:
        assert lines == []


def test_absent_objects_flagged_more_often_than_present_twins_on_shipped_scenes(shapes_tiny):
    """On the five shipped scenes, ask about an absent shape / colour and about a present one (the twin).

    Floor: at least 3 of the 10 absent-object answers flagged, and more of them than of the 10 twins.
    Why so low: a generated word is scored by its commit probability alone, which separates generated
    grounded from hallucinated words with AUROC 0.83 on held-out scenes (docs/benchmarks.md, "Is this
    word grounded?"); shapes-tiny answers "what color is the <absent shape>" with probability near 1,
    so mostly the "what shape is <absent colour>" answers, committed with less certainty, are caught
    (4 of 10 against 0 of 10 now).
    """
    flagged = {"absent": 0, "present": 0}
    for scene in dc.example_scenes():
        shapes_in = [o["shape"] for o in scene.objects]
        colours_in = [o["colour"] for o in scene.objects]
        absent_shape = next(s for s in shapes.SHAPES if s not in shapes_in)
        absent_colour = next(c for c in shapes.COLOURS if c not in colours_in)
        for kind, prompt in (("absent", shapes.colour_question(absent_shape)),
                             ("present", shapes.colour_question(shapes_in[0])),
                             ("absent", shapes.shape_question(absent_colour)),
                             ("present", shapes.shape_question(colours_in[0]))):
            exp = _explain(shapes_tiny, scene.image, prompt)
            flagged[kind] += bool(exp.ungrounded())
    assert flagged["absent"] >= 3 and flagged["absent"] > flagged["present"], flagged


def test_commit_step_share_follows_the_trajectory(shapes_tiny):
    exp = _explain(shapes_tiny, dc.example_scenes()[1].image, "describe the image")
    last = max(t["step"] for t in exp.trajectory)
    for g, step in zip(exp.grounding, exp.steps):
        assert g["commit_step"] == pytest.approx(step / last)


def test_report_marks_flagged_words(shapes_tiny):
    """Shipped scene 2 has no red object: "what shape is red" is answered anyway, and the report marks it."""
    exp = _explain(shapes_tiny, dc.example_scenes()[1].image, "what shape is red")
    page = exp.to_html()
    assert exp.ungrounded() == exp.tokens  # the one answer word is flagged
    assert page.count("chip ungrounded") == 1 and "possibly ungrounded" in page
    grounded = _explain(shapes_tiny, dc.example_scenes()[1].image, "what shape is purple")
    assert grounded.ungrounded() == [] and "chip ungrounded" not in grounded.to_html()


def test_grid_marks_flagged_words(shapes_tiny, monkeypatch):
    from diffusion_cam import visualize

    seen = []
    draw = visualize._draw_panel
    monkeypatch.setattr(visualize, "_draw_panel", lambda panel, *a: seen.append(panel.warning) or draw(panel, *a))
    exp = _explain(shapes_tiny, dc.example_scenes()[1].image, "what shape is red")
    visualize.grid_image(exp)
    assert f"ungrounded? {exp.grounding[0]['score']:.2f}" in seen
