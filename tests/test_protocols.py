"""The published and selected protocols, the selection file, and bootstrap intervals of bench tables."""

import json

import numpy as np
import pytest

from diffusion_cam.cli import main
from diffusion_cam.evaluation import ShapesDataset
from diffusion_cam.evaluation.intervals import load_run, main_table, paired, intervals, statistic
from diffusion_cam.evaluation.protocols import (
    CRITERION, SelectionError, check_selection, choose, grid_label, published_specs, selected_specs, selection_grid,
)
from diffusion_cam.extract import CAM_FORMULAS
from diffusion_cam.refine import MODULES
from diffusion_cam.refine.akd import BORDERS


def test_published_protocol_is_each_papers_defaults_and_its_ablation_reuses_the_main_rows(tiny):
    specs, rows = published_specs(tiny, ablation=True)
    by_label = {s.label: s for s in specs}
    assert by_label["diffusion-cam"].kwargs == {"cam": "poscam", "score": "logit", "akd_border": "reflect101"}
    assert by_label["diffusion-cam-raw"].kwargs == {"cam": "poscam", "score": "logit"}
    assert by_label["layercam"].kwargs == by_label["gradcam"].kwargs == {"score": "logit"}
    assert by_label["tam"].kwargs == by_label["center"].kwargs == {}
    assert rows[0] == ("Baseline (no module)", "diffusion-cam-raw") and rows[-1] == ("Full", "diffusion-cam")
    assert by_label["diffusion-cam[akd]"].kwargs["modules"] == ["akd"]


def test_selection_grid_covers_the_knobs_each_method_has(tiny):
    layers = list(range(len(tiny.blocks()) - 1))
    grid = selection_grid(tiny)
    n, s = len(layers), 2
    assert len(grid["diffusion-cam"]) == len(CAM_FORMULAS) * n * s * len(BORDERS)
    assert len(grid["diffusion-cam-raw"]) == len(CAM_FORMULAS) * n * s
    assert len(grid["layercam"]) == len(grid["gradcam"]) == n * s and len(grid["llava-cam"]) == n
    assert grid["tam"] == grid["center"] == [{}]
    with pytest.raises(Exception, match="out of range|layer"):
        selection_grid(tiny, layers=[99])


def test_choice_is_the_criterion_then_the_tie_break_then_grid_order():
    grid = {"gradcam": [{"layer": 0}, {"layer": 1}, {"layer": 2}],
            "diffusion-cam-raw": [{"cam": "a"}, {"cam": "b"}],
            "diffusion-cam": [{"cam": c, "akd_border": b} for c in "ab" for b in ("zero", "symmetric")]}
    rows = {grid_label("gradcam", {"layer": 0}): {"pointing": 0.5, "f3_of_means": 0.9},
            grid_label("gradcam", {"layer": 1}): {"pointing": 0.6, "f3_of_means": 0.1},
            grid_label("gradcam", {"layer": 2}): {"pointing": 0.6, "f3_of_means": 0.1},
            grid_label("diffusion-cam-raw", {"cam": "a"}): {"pointing": 0.1, "f3_of_means": 0.5},
            grid_label("diffusion-cam-raw", {"cam": "b"}): {"pointing": 0.1, "f3_of_means": 0.6}}
    for c, b, p in (("a", "zero", 0.9), ("a", "symmetric", 0.2), ("b", "zero", 0.3), ("b", "symmetric", 0.4)):
        rows[grid_label("diffusion-cam", {"cam": c, "akd_border": b})] = {"pointing": p, "f3_of_means": 0.0}
    chosen = choose(rows, grid)
    assert CRITERION == ("pointing", "f3_of_means")
    assert chosen["methods"]["gradcam"]["options"] == {"layer": 1}  # pointing first, then grid order
    assert chosen["methods"]["diffusion-cam-raw"]["options"] == {"cam": "b"}  # F3 breaks the pointing tie
    assert chosen["methods"]["diffusion-cam"]["options"] == {"cam": "a", "akd_border": "zero"}
    # the modules go on the best raw configuration, with the border best for it (not the full method's choice)
    assert chosen["ablation_base"] == {"cam": "b", "akd_border": "symmetric"}


@pytest.fixture(scope="module")
def selection(tmp_path_factory):
    out = tmp_path_factory.mktemp("select") / "selection.json"
    args = ["select", "--model", "tiny-random", "--items", "2", "--seed", "10000000", "--layer", "1",
            "--score", "logit", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    return out


def test_select_writes_a_frozen_choice_per_method(selection):
    data = json.loads(selection.read_text())
    assert data["protocol"] == "selected" and data["model"]["name"] == "tiny-random"
    assert data["dataset"]["seed"] == 10_000_000 and data["dataset"]["scenes"] == 2
    assert data["methods"]["gradcam"]["options"] == {"layer": 1, "score": "logit"}
    assert data["methods"]["diffusion-cam"]["configs"] == len(CAM_FORMULAS) * len(BORDERS)
    assert set(data["ablation_base"]) == {"cam", "layer", "score", "akd_border"}
    specs, rows = selected_specs(data, ablation=True)
    assert [s.label for s in specs][:3] == ["diffusion-cam", "diffusion-cam-raw", "layercam"]
    assert [r for r, _ in rows][-1] == "Full" and len(rows) == 2 + len(MODULES)


def test_a_frozen_selection_is_not_overwritten_by_a_different_one(selection, tmp_path, capsys):
    frozen = tmp_path / "frozen.json"
    frozen.write_bytes(selection.read_bytes())
    work = selection.with_suffix(".run")
    base = ["select", "--model", "tiny-random", "--items", "2", "--seed", "10000000", "--layer", "1",
            "--score", "logit", "--no-progress", "--work", str(work), "--out", str(frozen)]
    assert main(base) == 0  # the same run again: the same choice, nothing to refuse
    assert frozen.read_bytes() == selection.read_bytes()
    changed = json.loads(frozen.read_text())
    changed["methods"]["gradcam"]["options"]["layer"] = 0
    frozen.write_text(json.dumps(changed))
    assert main(base) == 2
    assert "already holds a different selection" in capsys.readouterr().err
    assert json.loads(frozen.read_text()) == changed
    assert main(base + ["--replace"]) == 0
    assert json.loads(frozen.read_text()) == json.loads(selection.read_text())


def test_bench_refuses_reported_scenes_that_overlap_the_selection_or_another_model(selection, tmp_path, capsys):
    base = ["bench", "--select", str(selection), "--no-faithfulness", "--no-progress", "--out", str(tmp_path / "b")]
    assert main(base + ["--model", "tiny-random", "--items", "2", "--seed", "9999999"]) == 2
    assert "overlap the selection scenes" in capsys.readouterr().err
    assert main(base + ["--model", "shapes-tiny", "--items", "1", "--seed", "10000003"]) == 2
    assert "selection was made for model 'tiny-random'" in capsys.readouterr().err
    assert main(["bench", "--select", str(tmp_path / "none.json"), "--model", "tiny-random", "--out",
                 str(tmp_path / "c")]) == 2
    assert "does not exist" in capsys.readouterr().err
    import diffusion_cam as dc

    adapter = dc.load_model("tiny-random")
    with pytest.raises(SelectionError, match="overlap"):
        check_selection(json.loads(selection.read_text()), adapter, ShapesDataset(n=1, seed=10_000_001))
    check_selection(json.loads(selection.read_text()), adapter, ShapesDataset(n=1, seed=10_000_002))


@pytest.fixture(scope="module")
def selected_run(selection, tmp_path_factory):
    out = tmp_path_factory.mktemp("selected")
    args = ["bench", "--select", str(selection), "--model", "tiny-random", "--items", "2", "--seed", "10000003",
            "--methods", "diffusion-cam", "diffusion-cam-raw", "gradcam", "center", "--ablation",
            "--no-faithfulness", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    return out


def test_bench_select_runs_each_method_with_its_chosen_configuration(selection, selected_run):
    data = json.loads(selection.read_text())
    config = json.loads((selected_run / "bench.json").read_text())
    methods = {m["label"]: m["options"] for m in config["methods"]}
    assert methods["gradcam"] == data["methods"]["gradcam"]["options"]
    assert config["main"] == ["diffusion-cam", "diffusion-cam-raw", "gradcam", "center"]
    assert config["ablation"][0] == ["Baseline (no module)", "diffusion-cam-raw"] or \
        data["methods"]["diffusion-cam-raw"]["options"] != {k: v for k, v in data["ablation_base"].items()
                                                            if k != "akd_border"}


def test_intervals_hold_the_table_figures_and_are_deterministic(selected_run):
    table = {r["method"]: r for r in json.loads((selected_run / "table.json").read_text())["main"]}
    assert all(r["words"] > 0 for r in table.values())
    run = load_run(selected_run)
    keys = ("obj_iou", "f3_of_means", "f3_mean", "pointing", "concentration", "contrast_median")
    got = intervals(run, list(table), keys, resamples=300)
    names = {"f3_mean": "f3_mean", "contrast_median": "contrast_median"}
    for label, row in table.items():
        for key in keys:
            if row.get(names.get(key, key)) is None:
                continue
            value, lo, hi = got[label][key]
            assert value == pytest.approx(row[names.get(key, key)], abs=1e-9)
            assert lo <= value + 1e-9 and value - 1e-9 <= hi
    assert main_table([run], resamples=300) == main_table([run], resamples=300)
    assert main_table([run], resamples=300, seed=1) != main_table([run], resamples=300)


def test_a_paired_difference_with_itself_is_exactly_zero_and_others_are_signed(selected_run):
    run = load_run(selected_run)
    same = paired(run, "diffusion-cam-raw", ["diffusion-cam-raw"], ["obj_iou", "pointing"], resamples=200)
    assert same["diffusion-cam-raw"]["obj_iou"] == (0.0, 0.0, 0.0)
    diff = paired(run, "center", ["gradcam"], ["obj_iou"], resamples=200)["gradcam"]["obj_iou"]
    both = intervals(run, ["center", "gradcam"], ["obj_iou"], resamples=200)
    assert diff[0] == pytest.approx(both["gradcam"]["obj_iou"][0] - both["center"]["obj_iou"][0])


def test_weighted_statistics_count_a_twice_drawn_item_twice():
    words = [[{"obj_iou": 1.0, "kind": "object", "pointing": True}],
             [{"obj_iou": 0.0, "kind": "object", "pointing": False}, {"obj_iou": 0.5, "kind": "count",
                                                                      "pointing": False}]]
    w = np.array([[1.0, 1.0], [2.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    np.testing.assert_allclose(statistic(words, "obj_iou", w), [0.5, 1.0, 0.25, 2.5 / 4])
    np.testing.assert_allclose(statistic(words, "pointing", w), [0.5, 1.0, 0.0, 2 / 3])  # object words only


def test_bench_published_runs_every_method_with_its_papers_defaults(tmp_path):
    out = tmp_path / "published"
    args = ["bench", "--published", "--model", "tiny-random", "--items", "1", "--seed", "10000000",
            "--methods", "diffusion-cam", "layercam", "center", "--no-faithfulness", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    config = json.loads((out / "bench.json").read_text())
    methods = {m["label"]: m["options"] for m in config["methods"]}
    assert methods == {"diffusion-cam": {"akd_border": "reflect101", "cam": "poscam", "score": "logit"},
                       "layercam": {"score": "logit"}, "center": {}}
    with pytest.raises(SystemExit):  # one protocol at a time
        main(args + ["--select", str(tmp_path / "x.json")])
