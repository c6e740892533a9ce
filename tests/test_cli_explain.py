"""The explain command end to end on the tiny model, and ground-truth metrics."""

import html
import json

import numpy as np
import pytest
from PIL import Image

import diffusion_cam as dc
from diffusion_cam.cli import main
from diffusion_cam.generation import curve_counts
from diffusion_cam.testing import random_image


def test_explain_writes_result_maps_pictures_and_metrics(tmp_path, capsys):
    img, mask = tmp_path / "img.png", tmp_path / "mask.png"
    Image.fromarray(random_image(0)).save(img)
    labels = np.zeros((48, 48), np.uint8)
    labels[5:20, 5:20], labels[30:44, 28:44] = 1, 2
    Image.fromarray(labels).save(mask)
    out = tmp_path / "out"
    rc = main(["explain", str(img), "--prompt", "describe the image", "--model", "tiny-random",
               "--out", str(out), "--mask", str(mask), "--layer", "1"])
    assert rc == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "result.json").read_text())
    assert printed.splitlines()[0] == f"answer: {result['answer']}"
    assert "metrics (mean over tokens)" in printed
    assert result["settings"]["layers"] == [1] and result["settings"]["state"] == "trajectory"
    assert result["settings"]["akd_border"] == "reflect101"  # tiny-random keeps the reference's border
    assert [t["index"] for t in result["tokens"]] == list(range(len(result["tokens"])))
    assert result["metrics"]["mode"] == "max_class" and len(result["metrics"]["per_token"]) == len(result["tokens"])
    with np.load(out / "maps.npz") as npz:  # maps are stored at grid resolution, placed by their boxes
        assert npz["grid_maps"].dtype == np.float32 and npz["grid_maps"].shape[0] == len(result["tokens"])
        assert npz["grid_boxes"].shape == (1, 4) and list(npz["image_size"]) == [48, 48]
    maps = dc.Explanation.load(out).maps
    assert maps.dtype == np.float32 and maps.shape == (len(result["tokens"]), 48, 48)
    for name in ("grid.png", "trajectory.gif", "report.html"):
        assert (out / name).stat().st_size > 0


def test_several_images_get_one_folder_each_and_a_bad_one_costs_only_itself(tmp_path, capsys):
    paths = []
    for name, seed in (("cat", 0), ("dog", 1)):
        paths.append(tmp_path / name / "photo.png")  # the same file name twice: folders photo, photo-2
        paths[-1].parent.mkdir()
        Image.fromarray(random_image(seed)).save(paths[-1])
    missing = tmp_path / "missing.png"
    out = tmp_path / "out"
    args = ["explain", str(paths[0]), str(missing), str(paths[1]), "--prompt", "describe the image",
            "--model", "tiny-random", "--no-pictures", "--out", str(out)]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "index.json", "photo", "photo-2"]
    for folder, path in zip(("photo", "photo-2"), paths):
        single = tmp_path / f"single-{folder}"
        assert main(["explain", str(path), *args[4:-1], str(single)]) == 0
        assert (out / folder / "result.json").read_text() == (single / "result.json").read_text()
    assert "missing.png" in captured.err and "1 of 3 images failed" in captured.err
    assert captured.out.count("answer: ") == 2
    # one page lists every image: its answer and a link to its folder, or why it failed
    index = (out / "index.html").read_text()
    answers = [json.loads((out / f / "result.json").read_text())["answer"] for f in ("photo", "photo-2")]
    assert all(html.escape(a) in index for a in answers)
    assert 'href="photo/result.json"' in index and 'href="photo-2/result.json"' in index
    assert "report.html" not in index  # --no-pictures: there is no report to link
    assert "missing.png" in index and "1 failed" in index
    assert main([*args[:2], str(paths[1]), *args[4:-1], str(out), "--mask", str(paths[0])]) == 2
    assert "--mask belongs to one image; 2 images were given" in capsys.readouterr().err


def test_a_given_answer_from_the_cli_is_explained_from_the_final_state(tmp_path, capsys):
    img = tmp_path / "img.png"
    Image.fromarray(random_image(0)).save(img)
    out = tmp_path / "given"
    base = ["explain", str(img), "--prompt", "describe the image", "--model", "tiny-random"]
    assert main([*base, "--answer", "a red circle", "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "answer: a red circle"
    result = json.loads((out / "result.json").read_text())
    assert result["settings"]["state"] == "final" and [t["text"] for t in result["tokens"]] == ["a", "red", "circle"]
    assert result["trajectory"] == [] and all(t["step"] == -1 for t in result["tokens"])
    assert (out / "report.html").exists() and not (out / "trajectory.gif").exists()  # nothing was denoised
    assert main([*base, "--answer", "a red circle", "--state", "trajectory", "--out", str(tmp_path / "bad")]) == 2
    assert "use state='final'" in capsys.readouterr().err


def test_sampler_options_reach_generation_and_the_trajectory(tmp_path, capsys):
    img = tmp_path / "img.png"
    Image.fromarray(random_image(0)).save(img)
    base = ["explain", str(img), "--prompt", "describe the image", "--model", "tiny-random", "--no-pictures"]
    assert main([*base, "--out", str(tmp_path / "plain")]) == 0
    assert main([*base, "--remasking", "margin", "--threshold", "0", "--out", str(tmp_path / "sure")]) == 0
    plain = json.loads((tmp_path / "plain" / "result.json").read_text())
    sure = json.loads((tmp_path / "sure" / "result.json").read_text())
    assert plain["settings"]["generation"]["remasking"] == "low_confidence"
    assert sure["settings"]["generation"]["remasking"] == "margin" and sure["settings"]["generation"]["threshold"] == 0
    assert len(plain["trajectory"]) == len(plain["tokens"])  # one token per step
    assert len(sure["trajectory"]) == 1  # every margin is above 0: one confident step commits all
    # LaViDa's shift schedule over 4 steps: the committed counts follow its curve
    assert main([*base, "--steps", "4", "--schedule", "shift", "--schedule-shift", "2", "--out", str(tmp_path / "shift")]) == 0
    shift = json.loads((tmp_path / "shift" / "result.json").read_text())
    assert shift["settings"]["generation"]["schedule"] == "shift"
    assert shift["settings"]["generation"]["schedule_shift"] == 2
    n = shift["settings"]["generation"]["gen_length"]
    assert [len(step["committed"]) for step in shift["trajectory"]] == curve_counts(n, 4, "shift", 2.0)
    capsys.readouterr()
    assert main([*base, "--remasking", "entropy", "--threshold", "0.5", "--out", str(tmp_path / "bad")]) == 2
    assert "probability confidence" in capsys.readouterr().err


def test_evaluate_scores_a_perfect_map_as_perfect(tiny, image):
    exp = dc.GradientCAM(tiny, layer=1, modules=()).explain(image, "describe the image", targets=[0])
    mask = np.zeros((48, 48), bool)
    mask[8:24, 16:40] = True
    exp.maps = mask[None].astype(np.float32)
    m = exp.evaluate(mask)
    assert m["mode"] == "mask"
    assert m["per_token"][0]["obj_iou"] == 1.0 and m["per_token"][0]["concentration"] > 0.999
    assert m["per_token"][0]["pointing_game"] == 1.0


def test_faithfulness_of_every_map_from_the_api_and_the_cli(tiny, image, tmp_path, capsys):
    from diffusion_cam.metrics.faithfulness import PerturbationTarget, deletion_insertion

    method = dc.GradientCAM(tiny, layer=1, modules=())
    exp = method.explain(image, "describe the image", faithfulness="mean")
    run = method.generate(image, "describe the image")
    targets = [PerturbationTarget(run.canvas_position(i), run.answer_ids[i], m)
               for i, m in zip(exp.token_indices, exp.grid_maps)]
    expected = deletion_insertion(tiny, run.inputs, run.generation.sequence, targets, replacement="mean")
    assert exp.faithfulness["replacement"] == "mean"
    assert [r["deletion_auc"] for r in exp.faithfulness["per_token"]] == [r.deletion_auc for r in expected]
    assert exp.faithfulness["mean"]["insertion_auc"] == pytest.approx(np.mean([r.insertion_auc for r in expected]))
    exp.save(tmp_path / "saved")
    assert dc.Explanation.load(tmp_path / "saved").faithfulness == exp.faithfulness
    img = tmp_path / "img.png"
    Image.fromarray(image).save(img)
    args = ["explain", str(img), "--prompt", "describe the image", "--model", "tiny-random", "--no-pictures"]
    assert main([*args, "--faithfulness", "--out", str(tmp_path / "cli")]) == 0
    assert "faithfulness (mean over tokens, blur): deletion_auc=" in capsys.readouterr().out
    result = json.loads((tmp_path / "cli" / "result.json").read_text())
    assert len(result["faithfulness"]["per_token"]) == len(result["tokens"])
    with pytest.raises(dc.errors.UnknownNameError, match="unknown replacement 'noise'"):
        method.explain(image, "describe the image", faithfulness="noise")


def test_a_family_file_and_its_checkpoint_from_the_cli(tmp_path, capsys, monkeypatch):
    from diffusion_cam.adapters import config_adapter

    family = tmp_path / "my_family.json"
    family.write_text(json.dumps({"name": "my-dlm", "family": "my-dlm", "loader": "auto", "blocks": "model.layers",
                                  "mask_token_id": 3, "image": {"rule": "token_runs", "image_token_id": 9, "grid": [4, 4]},
                                  "prompt": {"template": "{image} {prompt}"}}))
    loaded = []

    def fake_load_family(spec, target, **options):
        loaded.append((spec.name, target, options.get("trust_remote_code")))
        return dc.load_model("tiny-random")

    monkeypatch.setattr(config_adapter, "load_family", fake_load_family)
    img = tmp_path / "img.png"
    Image.fromarray(random_image(48, 48)).save(img)
    base = ["explain", str(img), "--prompt", "describe the image", "--no-pictures", "--trust-remote-code"]
    assert main([*base, "--model", str(family), "--checkpoint", "org/my-dlm", "--out", str(tmp_path / "o")]) == 0
    assert loaded == [("my-dlm", "org/my-dlm", True)]
    assert (tmp_path / "o" / "result.json").exists()
    # without a checkpoint (and no hub id in the file) the error names the option
    assert main([*base, "--model", str(family), "--out", str(tmp_path / "o2")]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    # --checkpoint with anything but a family file is refused, not ignored
    assert main([*base, "--model", "tiny-random", "--checkpoint", "x", "--out", str(tmp_path / "o3")]) == 2
    assert "--checkpoint goes with a family file" in capsys.readouterr().err
    assert len(loaded) == 1


def test_a_mask_of_another_size_or_without_foreground_is_refused(tiny, image, tmp_path, capsys):
    exp = dc.GradientCAM(tiny, layer=1, modules=()).explain(image, "describe the image", targets=[0])
    with pytest.raises(dc.errors.TargetError, match="mask is 24x12 pixels but the explained image is 48x48"):
        exp.evaluate(np.ones((12, 24), np.uint8))
    with pytest.raises(dc.errors.TargetError, match="no foreground"):
        exp.evaluate(np.zeros((48, 48), np.uint8))
    img, mask = tmp_path / "img.png", tmp_path / "mask.png"
    Image.fromarray(image).save(img)
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(mask)
    assert main(["explain", str(img), "--prompt", "describe the image", "--model", "tiny-random", "--no-pictures",
                 "--mask", str(mask), "--out", str(tmp_path / "o")]) == 2
    assert "mask is 1x1 pixels" in capsys.readouterr().err


def test_bench_refuses_counts_that_cannot_be_meant(tmp_path, capsys):
    for option, value in (("--items", "0"), ("--skip", "-1"), ("--batch-size", "0"), ("--chunk-size", "0"),
                          ("--blur-sigma", "-2"), ("--save-explanations", "-5")):
        with pytest.raises(SystemExit) as stop:
            main(["bench", "--dataset", "shapes", option, value, "--out", str(tmp_path / "b")])
        assert stop.value.code == 2
        assert f"argument {option}" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    from diffusion_cam.evaluation import load_dataset
    from diffusion_cam.evaluation.datasets import DatasetError

    with pytest.raises(DatasetError, match="at least one scene"):
        load_dataset("shapes", n=0)


def test_an_image_path_right_after_faithfulness_gets_a_hint(tmp_path, capsys):
    img = tmp_path / "img.png"
    Image.fromarray(random_image(0)).save(img)
    with pytest.raises(SystemExit) as stop:
        main(["explain", "--faithfulness", str(img), "--prompt", "describe the image", "--out", str(tmp_path / "o")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "looks like an image: put it before --faithfulness, or write --faithfulness=blur" in err
    with pytest.raises(SystemExit):
        main(["explain", str(img), "--faithfulness", "noise", "--prompt", "describe the image"])
    err = capsys.readouterr().err
    assert "'noise' is not a fill" in err and "looks like" not in err
