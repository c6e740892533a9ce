"""Does label-free calibration pick configurations that localise well?  Checked against masks afterwards.

1. ``calibrate`` on held-out scenes (seeds 40,000,000 on: neither training,
   nor the reported scenes, nor the two sets the defaults were swept on),
   without their masks; its wall time is recorded.
2. Every configuration it swept explains the reported scenes (seeds
   10,000,000 on) and is scored against the masks: pointing game and F3.
   The chosen configuration is compared with the best of the swept ones
   selected by the masks of those same scenes (an oracle: the most a
   selection among these configurations could get), with 95 % bootstrap
   intervals over scenes, and the label-free score is rank-correlated with
   the mask-based metrics over all swept configurations.
3. ``check`` on the calibration scenes for the chosen configuration, the
   same with the ``poscam`` formula, and the center prior.

Resumable: rerun the same command; finished parts are read back from --out.

    python benchmarks/calibration_validation.py --model shapes-tiny --reported 300 --out runs/calibration_validation
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

import diffusion_cam as dc
from diffusion_cam.calibration import Config, calibrate, load_profile
from diffusion_cam.calibration.checks import check
from diffusion_cam.calibration.sweep import Query, explain_configs
from diffusion_cam.datasets import shapes
from diffusion_cam.evaluation import load_dataset
from diffusion_cam.evaluation.datasets import SHAPES_SEED
from diffusion_cam.evaluation.scoring import score_units
from diffusion_cam.evaluation.tables import summarize
from diffusion_cam.metrics.localization import contrast_score, f3

CALIBRATION_SEED = 40_000_000
PROMPT = "describe the image"


def _config(row) -> Config:
    return Config(row["cam"], row["layer"], row["score_name"], row["modules"], row["akd_border"])


def run_calibration(adapter, out: Path, n: int, seed: int) -> dict:
    path = out / "calibration" / "profile.json"
    if path.exists():
        return load_profile(path).data
    images = [shapes.generate_scene(seed + i).image for i in range(n)]
    t0 = time.perf_counter()
    result = calibrate(adapter, images, [PROMPT], progress=True)
    wall = time.perf_counter() - t0
    result.save(out / "calibration")
    data = load_profile(path).data
    data["wall_seconds"] = wall
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return data


def evaluate_reported(adapter, out: Path, configs: list[Config], n: int) -> list[dict]:
    """Mask-based scores of every configuration on the reported scenes (one JSON line per scene)."""
    from tqdm import tqdm

    path = out / "reported.jsonl"
    done = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            done[rec["item"]] = rec
    dataset = load_dataset("shapes", n=n, seed=SHAPES_SEED, prompts=["describe"])
    maker = dc.DiffusionCAM(adapter, modules=())
    with path.open("a", encoding="utf-8") as f:
        for item in tqdm(dataset.items, desc="reported scenes", unit="scene"):
            if item.id in done:
                continue
            run = maker.generate(item.image(), item.prompt)
            units = dataset.units(item, run.texts)
            rec = {"item": item.id, "answer": adapter.join(run.texts), "configs": {}}
            if run.answer_ids and any(u.kind in ("object", "count") for u in units):
                query = Query(item.id, "", item.prompt, run)
                for c, exp in explain_configs(adapter, query, configs):
                    scored = score_units(adapter, run, exp, units, faithfulness=False)
                    rec["configs"][c.label()] = scored["units"]
            f.write(json.dumps(rec) + "\n")
            f.flush()
            done[item.id] = rec
    return [done[i.id] for i in dataset.items]


def table(records: list[dict], labels: list[str]) -> dict[str, dict]:
    rows = {}
    for label in labels:
        recs = [{"method": label, "status": "ok", "units": r["configs"][label]} for r in records if r["configs"]]
        rows[label] = summarize(recs, label)
    return rows


def _stats(records, label):
    """Per-scene sums for the bootstrap: pointing hits / object words, and Obj-IoU, Contrast, Concentration."""
    out = []
    for r in records:
        units = r["configs"].get(label, [])
        obj = [u for u in units if u["kind"] == "object"]
        out.append([sum(u["pointing"] for u in obj), len(obj), sum(u["obj_iou"] for u in units),
                    sum(u["contrast"] for u in units), sum(u["concentration"] for u in units), len(units)])
    return np.array(out, dtype=np.float64)


def _metrics(s):
    t = s.sum(0)
    return t[0] / t[1], f3(t[2] / t[5], contrast_score(t[3] / t[5]), t[4] / t[5])


def bootstrap(records, a: str, b: str, reps: int = 1000, seed: int = 0) -> dict:
    """95 % intervals of a's pointing and F3 and of a - b, resampling scenes."""
    sa, sb = _stats(records, a), _stats(records, b)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(reps):
        idx = rng.integers(0, len(sa), len(sa))
        pa, fa = _metrics(sa[idx])
        pb, fb = _metrics(sb[idx])
        draws.append((pa, fa, pa - pb, fa - fb))
    lo, hi = np.percentile(np.array(draws), [2.5, 97.5], axis=0)
    pa, fa = _metrics(sa)
    pb, fb = _metrics(sb)
    return {"pointing": (pa, lo[0], hi[0]), "f3": (fa, lo[1], hi[1]),
            "pointing_gap": (pa - pb, lo[2], hi[2]), "f3_gap": (fa - fb, lo[3], hi[3])}


def spearman_ci(x, y, reps: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Spearman's rho over configurations with a 95 % bootstrap interval (configurations resampled)."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x), np.asarray(y)
    rng = np.random.default_rng(seed)
    draws = [spearmanr(x[i], y[i]).statistic for i in (rng.integers(0, len(x), len(x)) for _ in range(reps))]
    lo, hi = np.nanpercentile(draws, [2.5, 97.5])
    return float(spearmanr(x, y).statistic), float(lo), float(hi)


def run_checks(adapter, out: Path, chosen: Config, n: int, seed: int, profile_path: Path) -> dict:
    path = out / "checks.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    images = [shapes.generate_scene(seed + i).image for i in range(n)]
    results = {}
    for name, method, options in [
        (f"chosen ({chosen.label()})", "diffusion-cam", {"profile": str(profile_path)}),
        (f"poscam ({replace(chosen, cam='poscam').label()})", "diffusion-cam",
         {"profile": str(profile_path), "cam": "poscam"}),
        ("center prior", "center", {}),
    ]:
        t0 = time.perf_counter()
        report = check(adapter, images, [PROMPT], method=method, progress=True, **options)
        results[name] = {**report.to_dict(), "lines": report.lines(), "seconds": time.perf_counter() - t0}
        print(name, *report.lines(), sep="\n  ")
    path.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="shapes-tiny")
    ap.add_argument("--calibration-items", type=int, default=20)
    ap.add_argument("--calibration-seed", type=int, default=CALIBRATION_SEED)
    ap.add_argument("--reported", type=int, default=300, help="reported scenes (seeds 10,000,000 on)")
    ap.add_argument("--out", default="runs/calibration_validation")
    args = ap.parse_args()
    out = Path(args.out) / args.model
    out.mkdir(parents=True, exist_ok=True)
    adapter = dc.load_model(args.model)

    prof = run_calibration(adapter, out, args.calibration_items, args.calibration_seed)
    sweep = prof["sweep"]
    configs = [_config(r) for r in sweep]
    chosen = configs[0]
    print(f"calibrated on {args.calibration_items} scenes in {prof.get('wall_seconds', prof['seconds']):.0f} s; "
          f"chosen: {chosen.label()}")
    checks = run_checks(adapter, out, chosen, args.calibration_items, args.calibration_seed,
                        out / "calibration" / "profile.json")

    records = evaluate_reported(adapter, out, configs, args.reported)
    rows = table(records, [c.label() for c in configs])
    scored = [r for r in records if r["configs"]]
    labels = [c.label() for c in configs]
    by_pointing = max(labels, key=lambda lab: rows[lab]["pointing"])
    by_f3 = max(labels, key=lambda lab: rows[lab]["f3_of_means"])
    free = [r["score"] for r in sweep]
    f3s = [rows[lab]["f3_of_means"] for lab in labels]
    pts = [rows[lab]["pointing"] for lab in labels]
    rho_f3, rho_pt = spearman_ci(free, f3s), spearman_ci(free, pts)
    # poscam's inverted maps are the easy part: the same without them
    keep = [i for i, c in enumerate(configs) if c.cam != "poscam"]
    rho_f3_no_poscam = spearman_ci([free[i] for i in keep], [f3s[i] for i in keep])
    rho_pt_no_poscam = spearman_ci([free[i] for i in keep], [pts[i] for i in keep])
    poscam_ranks = [r["rank"] for r in sweep if r["cam"] == "poscam"]
    summary = {
        "model": args.model, "calibration_scenes": args.calibration_items,
        "calibration_seconds": prof.get("wall_seconds"), "configurations": len(configs),
        "reported_scenes": len(records), "scored_scenes": len(scored),
        "chosen": chosen.label(), "best_by_pointing": by_pointing, "best_by_f3": by_f3,
        "chosen_vs_best_pointing": bootstrap(scored, chosen.label(), by_pointing),
        "chosen_vs_best_f3": bootstrap(scored, chosen.label(), by_f3),
        "spearman_label_free_vs_f3": rho_f3, "spearman_label_free_vs_pointing": rho_pt,
        "spearman_without_poscam_vs_f3": rho_f3_no_poscam, "spearman_without_poscam_vs_pointing": rho_pt_no_poscam,
        "poscam_ranks": poscam_ranks,
        "table": [{"label": lab, "rank": r["rank"], "label_free": r["score"], "deletion_auc": r["deletion_auc"],
                   "insertion_auc": r["insertion_auc"], "pointing": rows[lab]["pointing"],
                   "f3_of_means": rows[lab]["f3_of_means"], "obj_iou": rows[lab]["obj_iou"],
                   "words": rows[lab]["words"]} for lab, r in zip(labels, sweep)],
        "checks": {k: v["lines"] for k, v in checks.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in summary.items() if k != "table"}, indent=2))
    print("| rank | configuration | insertion − deletion | pointing (%) | F3 (of means) |")
    print("|---:|---|---:|---:|---:|")
    for t in summary["table"]:
        print(f"| {t['rank']} | {t['label']} | {t['label_free']:.3f} | {100 * t['pointing']:.1f} | "
              f"{100 * t['f3_of_means']:.2f} |")


if __name__ == "__main__":
    main()
