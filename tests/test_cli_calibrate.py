"""calibrate -> check -> explain --profile on the command line, and their refusals."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from diffusion_cam.cli import main
from diffusion_cam.testing import random_image

SMALL = ["--cam", "poscam", "layercam", "--layer", "0", "--no-progress", "--model", "tiny-random"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cal")
    for i in range(2):
        Image.fromarray(random_image(i)).save(d / f"img{i}.png")
    assert main(["calibrate", str(d / "img0.png"), str(d / "img1.png"), "--prompt", "describe", "--out",
                 str(d / "cal"), *SMALL]) == 0
    return d


def test_calibrate_writes_profile_and_page(workdir):
    profile = json.loads((workdir / "cal" / "profile.json").read_text())
    assert profile["model"]["name"] == "tiny-random"
    assert [i["image"] for i in profile["images"]] == [str(workdir / "img0.png"), str(workdir / "img1.png")]
    assert (workdir / "cal" / "calibration.html").stat().st_size > 0


def test_explain_with_profile_records_it_and_flags_override(workdir, capsys):
    profile = workdir / "cal" / "profile.json"
    chosen = json.loads(profile.read_text())["settings"]
    out = workdir / "ex"
    assert main(["explain", str(workdir / "img0.png"), "--prompt", "describe", "--model", "tiny-random",
                 "--profile", str(profile), "--out", str(out), "--no-pictures"]) == 0
    settings = json.loads((out / "result.json").read_text())["settings"]
    assert settings["cam"] == chosen["cam"] and settings["modules"] == chosen["modules"]
    assert settings["profile"]["file"] == str(profile)
    out2 = workdir / "ex2"
    assert main(["explain", str(workdir / "img0.png"), "--prompt", "describe", "--model", "tiny-random",
                 "--profile", str(profile), "--cam", "gradcam", "--modules", "none", "--out", str(out2),
                 "--no-pictures"]) == 0
    settings = json.loads((out2 / "result.json").read_text())["settings"]
    assert settings["cam"] == "gradcam" and settings["modules"] == [] and settings["score"] == chosen["score"]


def test_profile_refusals_are_one_line_errors(workdir, capsys):
    data = json.loads((workdir / "cal" / "profile.json").read_text())
    data["settings"]["bogus"] = 1
    bad = workdir / "bad.json"
    bad.write_text(json.dumps(data))
    for command in (["explain", "--out", str(workdir / "x")], ["check"],
                    ["bench", "--out", str(workdir / "b"), "--items", "1"]):
        args = [command[0]] + ([] if command[0] == "bench" else [str(workdir / "img0.png"), "--prompt", "describe"])
        rc = main(args + command[1:] + ["--model", "tiny-random", "--profile", str(bad)])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.startswith("error: profile") and "'bogus'" in err and "\n" not in err
    data = json.loads((workdir / "cal" / "profile.json").read_text())
    data["model"]["name"] = "shapes-tiny"
    foreign = workdir / "foreign.json"
    foreign.write_text(json.dumps(data))
    rc = main(["explain", str(workdir / "img0.png"), "--prompt", "describe", "--model", "tiny-random",
               "--profile", str(foreign), "--out", str(workdir / "y")])
    assert rc == 2 and "calibrated for model 'shapes-tiny'" in capsys.readouterr().err


def test_check_prints_pass_fail_lines_and_exit_status(workdir, capsys):
    rc = main(["check", str(workdir / "img0.png"), "--prompt", "describe", "--model", "tiny-random", "--method",
               "center", "--no-progress", "--out", str(workdir / "chk")])
    lines = capsys.readouterr().out.splitlines()
    assert rc == 1  # the center prior ignores the model: the randomization check fails
    assert lines[1].startswith("randomization  FAIL") and "Spearman 1.00" in lines[1]
    assert lines[2].startswith("degenerate") and lines[3].startswith("faithfulness")
    report = json.loads((workdir / "chk" / "check.json").read_text())
    assert report["method"] == "center" and report["passed"] is False


def test_calibrate_needs_an_image_and_a_prompt(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["calibrate", "--prompt", "describe"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        main(["calibrate", "x.png"])
    capsys.readouterr()


def test_calibrate_refuses_a_missing_image(tmp_path, capsys):
    rc = main(["calibrate", "missing.png", "--prompt", "describe", "--out", str(tmp_path), *SMALL])
    assert rc == 2 and capsys.readouterr().err.strip() == "error: missing.png: no such file"


def test_bench_with_profile_records_it_and_spares_the_baselines(workdir):
    from diffusion_cam.evaluation.records import read_records

    profile = workdir / "cal" / "profile.json"
    out = workdir / "bench"
    assert main(["bench", "--model", "tiny-random", "--items", "1", "--methods", "diffusion-cam", "gradcam",
                 "--profile", str(profile), "--no-faithfulness", "--no-progress", "--save-explanations",
                 "--out", str(out)]) == 0
    assert json.loads((out / "bench.json").read_text())["method_options"]["profile"] == str(profile)
    assert not [r for r in read_records(out) if r["status"] == "failed"]
    saved = sorted((out / "explanations").glob("*/*/result.json"))
    by_method = {p.parent.name: json.loads(p.read_text())["settings"] for p in saved}
    assert by_method["diffusion-cam"]["profile"]["file"] == str(profile)
    assert by_method["diffusion-cam"]["cam"] == json.loads(profile.read_text())["settings"]["cam"]
    assert "profile" not in by_method["gradcam"]


def test_a_baseline_with_a_profile_says_the_profile_does_not_apply(workdir, capsys):
    rc = main(["explain", str(workdir / "img0.png"), "--prompt", "describe", "--model", "tiny-random", "--method",
               "gradcam", "--profile", str(workdir / "cal" / "profile.json"), "--out", str(workdir / "g"),
               "--no-pictures"])
    assert rc == 0
    assert "warning: the profile configures diffusion-cam; gradcam keeps its own settings" in capsys.readouterr().err
