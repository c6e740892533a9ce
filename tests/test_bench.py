"""``diffusion-cam bench``: datasets, per-item records, failures, resume after SIGKILL, data-parallel merge."""

import copy
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from diffusion_cam.cli import main
from diffusion_cam.datasets import shapes
from diffusion_cam.evaluation import BenchConfig, Dataset, Item, ShapesDataset, method_specs, run_bench
from diffusion_cam.evaluation.records import ShardWriter, read_records, read_shard
from diffusion_cam.errors import ImageLoadError, OutputError

ARGS = ["bench", "--model", "tiny-random", "--items", "8", "--methods", "gradcam", "center", "--no-progress"]
TIMING = ("seconds", "score_seconds", "gen_seconds")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}


def _strip(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def _main_rows(out):
    table = json.loads((out / "table.json").read_text())
    return [{k: v for k, v in r.items() if k != "seconds"} for r in table["main"]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted single-process run, the yardstick of resumed and sharded runs."""
    out = tmp_path_factory.mktemp("reference")
    assert main(ARGS + ["--out", str(out)]) == 0
    return out


def test_shapes_items_and_units_follow_the_scene_contract():
    ds = ShapesDataset(n=3, seed=123, prompts=("describe", "count"))
    assert [it.id for it in ds.items][:2] == ["shapes:123:describe the image", "shapes:123:how many objects"]
    assert len(ds) == 6
    item = ds.items[0]
    scene = shapes.generate_scene(123)
    np.testing.assert_array_equal(item.image(), scene.image)
    words = shapes.answer(scene, item.prompt).split()
    units = ds.units(item, words)
    masks = shapes.referent_masks(scene, item.prompt, words)
    for u in units:
        (i,) = u.tokens
        assert u.kind == ("function" if words[i] in ("a", "and") else "object")
        if u.kind == "object":
            np.testing.assert_array_equal(u.mask, masks[i])
    count = ds.units(ds.items[1], ["two"])
    assert count[0].kind == "count" and count[0].mask.sum() == sum(o.mask.sum() for o in scene.objects)
    assert ds.units(item, ["image", "describe"]) == []  # nothing scorable


def test_default_shapes_seeds_are_disjoint_from_training_and_its_evaluation():
    from diffusion_cam.evaluation.datasets import SHAPES_SEED
    from diffusion_cam.models.shapes_tiny.train import EVAL_SEED

    assert SHAPES_SEED == 10_000_000 and not SHAPES_SEED <= EVAL_SEED < SHAPES_SEED + 100_000


def test_reference_run_records_every_item_and_method(reference):
    records = read_records(reference)
    assert len(records) == 16 and {r["method"] for r in records} == {"gradcam", "center"}
    for r in records:
        assert r["status"] in ("ok", "skipped")
        if r["status"] == "skipped":
            assert r["reason"] == "answer has no scorable word" and r["answer"]
        else:
            assert r["units"] and all({"obj_iou", "f3", "pointing", "deletion_auc"} <= u.keys() for u in r["units"])
    md = (reference / "table.md").read_text()
    assert "| gradcam |" in md and "| center |" in md
    assert {"table.md", "table.csv", "table.json"} <= {p.name for p in reference.iterdir()}


class BrokenDataset(Dataset):
    name = "broken"

    def __init__(self):
        super().__init__()
        good = ShapesDataset(n=1, seed=0)  # the tiny model's answer names an object of this scene
        self.inner = good
        self.items = [good.items[0], Item("broken:1", "describe the image", None, self._fail)]

    @staticmethod
    def _fail():
        raise ImageLoadError("scene.png: not an image")

    def units(self, item, texts):
        return self.inner.units(item, texts)


def test_a_failing_item_is_recorded_with_its_reason_and_reported(tmp_path, tiny):
    specs, _ = method_specs(["center"])
    config = BenchConfig(tmp_path, specs, faithfulness=False, progress=False, save_explanations=-1)
    tables = run_bench(tiny, BrokenDataset(), config, 0, 1)
    (failed,) = [r for r in read_records(tmp_path) if r["item"] == "broken:1"]
    assert failed["status"] == "failed" and failed["reason"] == "ImageLoadError: scene.png: not an image"
    assert tables["main"][0]["n_failed"] == 1 and tables["complete"]
    assert "ImageLoadError: scene.png: not an image" in (tmp_path / "table.md").read_text()
    ok = [r for r in read_records(tmp_path) if r["status"] == "ok"]
    assert len(ok) == 1
    for r in ok:  # kept explanations carry their word scores (report gallery)
        from diffusion_cam import Explanation

        exp = Explanation.load(tmp_path / "explanations" / f"{r['index']:06d}" / "center")
        assert exp.method == "center" and exp.metrics["units"] == r["units"]
    if "report.html" in tables["written"]:
        assert "ImageLoadError" in (tmp_path / "report.html").read_text()


def test_resuming_with_other_settings_is_refused(tmp_path, tiny):
    ds = ShapesDataset(n=1, seed=5)
    run_bench(tiny, ds, BenchConfig(tmp_path, method_specs(["center"])[0], faithfulness=False, progress=False), 0, 1)
    with pytest.raises(OutputError, match="different configuration \\(main, methods differ"):
        run_bench(tiny, ds, BenchConfig(tmp_path, method_specs(["tam"])[0], faithfulness=False, progress=False), 0, 1)
    # the same model name with other weights (e.g. retrained) is another run, not a resume
    other = copy.copy(tiny)
    other.weights_id = "0" * 64
    with pytest.raises(OutputError, match="different configuration \\(model differ"):
        run_bench(other, ds, BenchConfig(tmp_path, method_specs(["center"])[0], faithfulness=False, progress=False), 0, 1)


def test_a_torn_last_line_is_ignored_and_cut_before_appending(tmp_path):
    path = tmp_path / "results" / "rank-0-of-1.jsonl"
    with ShardWriter(path) as w:
        w.write({"a": 1, "x": float("nan")})
    with open(path, "a") as f:
        f.write('{"a": 2, "trunc')
    assert list(read_shard(path)) == [{"a": 1, "x": None}]
    with ShardWriter(path) as w:
        w.write({"a": 3})
    assert list(read_shard(path)) == [{"a": 1, "x": None}, {"a": 3}]


def test_sigkill_then_rerun_resumes_and_matches_an_uninterrupted_run(tmp_path, reference):
    out = tmp_path / "killed"
    shard = out / "results" / "rank-0-of-1.jsonl"
    cmd = [sys.executable, "-m", "diffusion_cam.cli", *ARGS, "--out", str(out)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if shard.exists() and shard.read_text().count("\n") >= 1:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    before = shard.read_text().splitlines()
    assert 1 <= len(before) < 16
    with open(shard, "a") as f:  # as if killed in the middle of a write
        f.write('{"item": "shapes:10000007:describe the image", "meth')
    assert main(ARGS + ["--out", str(out)]) == 0
    after = shard.read_text().splitlines()
    assert after[: len(before)] == before and len(after) == 16  # done items were not redone
    assert _strip(read_records(out)) == _strip(read_records(reference))
    assert _main_rows(out) == _main_rows(reference)


def test_torchrun_two_processes_shard_items_and_merge_into_the_single_process_table(tmp_path, reference):
    out = tmp_path / "dp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "diffusion_cam.cli",
           *ARGS, "--out", str(out)]
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert res.returncode == 0, (errors, res.stderr[-2000:])
    shards = sorted(p.name for p in (out / "results").iterdir())
    assert shards == ["rank-0-of-2.jsonl", "rank-1-of-2.jsonl"]
    ranks = [{r["index"] % 2 for r in read_shard(out / "results" / s)} for s in shards]
    assert ranks == [{0}, {1}]  # item i ran on rank i % 2
    assert _strip(read_records(out)) == _strip(read_records(reference))
    assert _main_rows(out) == _main_rows(reference)
    # --merge rebuilds the same tables from the shards alone
    (out / "table.json").unlink()
    assert main(["bench", "--merge", "--out", str(out)]) == 0
    assert _main_rows(out) == _main_rows(reference)


def test_cam_and_sampler_options_reach_diffusion_cam_and_spare_the_baselines(tmp_path):
    out = tmp_path / "cam"
    args = ["bench", "--model", "tiny-random", "--items", "2", "--methods", "diffusion-cam", "gradcam",
            "--cam", "layercam", "--akd-border", "symmetric", "--no-faithfulness", "--no-progress", "--out", str(out),
            "--remasking", "margin", "--schedule", "cosine", "--steps", "4"]
    assert main(args) == 0
    options = json.loads((out / "bench.json").read_text())["method_options"]
    assert options["cam"] == "layercam" and options["akd_border"] == "symmetric"
    # the sampler options reach the one generation every method explains
    generation = options["generation"]
    assert (generation["remasking"], generation["schedule"], generation["steps"]) == ("margin", "cosine", 4)
    records = read_records(out)
    assert {r["method"] for r in records} == {"diffusion-cam", "gradcam"}
    # Grad-CAM keeps its own formula instead of failing on the shared option
    assert not [r for r in records if r["status"] == "failed"]
    assert any(r["status"] == "ok" for r in records)


def test_mean_colour_replacement_is_recorded_and_changes_the_curves(tmp_path, reference):
    out = tmp_path / "mean"
    assert main(ARGS[:4] + ["2", *ARGS[5:], "--replacement", "mean", "--out", str(out)]) == 0
    assert json.loads((out / "bench.json").read_text())["faithfulness"]["replacement"] == "mean"
    assert "replacement" not in json.loads((reference / "bench.json").read_text())["faithfulness"]
    mean = {(r["item"], r["method"]): r for r in read_records(out)}
    blur = {(r["item"], r["method"]): r for r in read_records(reference)}
    units = [(u, blur[key]["units"][i]) for key, r in mean.items() for i, u in enumerate(r.get("units", []))]
    assert units and all(u["obj_iou"] == b["obj_iou"] for u, b in units)  # same maps
    assert any(u["deletion_auc"] != b["deletion_auc"] for u, b in units)  # other removed patches


def test_processes_probing_one_output_directory_at_once_do_not_trip_each_other(tmp_path):
    # every rank of a data-parallel run checks that --out is writable at the same moment
    from concurrent.futures import ThreadPoolExecutor

    from diffusion_cam.cli.explain import prepare_output

    out = tmp_path / "shared"
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: prepare_output(str(out)), range(400)))
    assert results == [out] * 400
    assert list(out.iterdir()) == []  # no probe left behind


def test_layercam_and_raw_diffusion_cam_are_main_table_methods(tmp_path):
    from diffusion_cam.evaluation import MAIN_METHODS

    assert {"layercam", "diffusion-cam-raw"} <= set(MAIN_METHODS)
    out = tmp_path / "run"
    args = ["bench", "--model", "tiny-random", "--items", "3", "--no-faithfulness", "--no-progress",
            "--methods", "diffusion-cam", "diffusion-cam-raw", "layercam", "--out", str(out)]
    assert main(args) == 0
    rows = {r["method"]: r for r in json.loads((out / "table.json").read_text())["main"]}
    assert set(rows) == {"diffusion-cam", "diffusion-cam-raw", "layercam"}
    assert all(r["n_ok"] + r["n_skipped"] == 3 for r in rows.values())
    # the raw row is the no-module ablation row of the same run, computed from the same raw maps
    ablation = out / "ablation"
    assert main(args[:-1] + [str(ablation), "--ablation"]) == 0
    table = json.loads((ablation / "table.json").read_text())
    none_row = next(r for r in table["ablation"] if r["config"] == "Baseline (no module)")
    raw_row = next(r for r in table["main"] if r["method"] == "diffusion-cam-raw")
    for key in ("obj_iou", "f3_of_means", "pointing", "words"):
        assert none_row[key] == raw_row[key]
