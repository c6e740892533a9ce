"""``bench``: run explanation methods over dataset items and score every answer word.

One item = one generated answer, shared by every method (generation is
deterministic and method-independent); methods that differ only in their
refinement modules (the ablation) also share one raw-map computation.  Each
(item, method) result is appended to a JSON-lines shard as soon as it is
known, so a killed run restarted with the same command resumes where it
stopped and ends with the same records as an uninterrupted run.  Items are
sharded across processes by the launcher's ranks (``torchrun``,
``accelerate launch``, SLURM's ``srun``, MPI: :mod:`.launch`); every process
writes its own shard and rank 0 builds the tables once all are done (with a
launcher that gives no meeting point, ``bench --merge`` afterwards).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Sequence


from ..errors import OutputError, UnknownNameError
from ..methods import get_method
from ..methods.base import ExplanationMethod, Run
from ..refine import MODULES
from .datasets import Dataset, Item, Unit
from .launch import resolve_launch
from .records import ShardWriter, clean, read_records, shard_path, slug
from .tables import write_tables

CONFIG_FILE = "bench.json"
FORMAT = 1
MAIN_METHODS = ("diffusion-cam", "diffusion-cam-raw", "layercam", "gradcam", "llava-cam", "tam", "center")
#: registered names whose raw maps are another method's (they differ only in refinement)
RAW_OF = {"diffusion-cam-raw": "diffusion-cam"}
#: ablation rows (paper §4.2): no module, each module alone, all four
ABLATION_ROWS = (("Baseline (no module)", ()), ("+ AKD", ("akd",)), ("+ DACG", ("dacg",)),
                 ("+ CBA", ("cba",)), ("+ SICD", ("sicd",)), ("Full", MODULES))
#: options that only change refinement, so methods differing in them share raw maps
REFINE_KEYS = ("modules", "sicd_mode", "akd_kernel", "akd_border", "module_params")
SCORED_KINDS = ("object", "count")


@dataclass(frozen=True)
class MethodSpec:
    """A method configuration in a run: its table label, registered name and own options."""

    label: str
    name: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def kwargs(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.options}

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "name": self.name, "options": self.kwargs}


def method_specs(methods: Sequence[str] = MAIN_METHODS, ablation: bool = False) -> tuple[list[MethodSpec], list]:
    """Specs to run and the ablation rows ``[(row name, label)]`` (empty without ``ablation``)."""
    specs = [MethodSpec(m, m) for m in methods]
    rows = []
    if ablation:
        for row, modules in ABLATION_ROWS:
            label = "diffusion-cam" if tuple(modules) == MODULES else f"diffusion-cam[{'+'.join(modules) or 'none'}]"
            if label not in {s.label for s in specs}:
                specs.append(MethodSpec(label, "diffusion-cam", (("modules", tuple(modules)),)))
            rows.append((row, label))
    return specs, rows


def _jsonable(value: Any) -> Any:
    if is_dataclass(value):
        return asdict(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


@dataclass
class BenchConfig:
    out: Path
    specs: list[MethodSpec]
    ablation_rows: list = field(default_factory=list)
    method_options: dict[str, Any] = field(default_factory=dict)  # shared by every method (layer, state, ...)
    faithfulness: bool = True
    blur_sigma: float | None = None
    replacement: str = "blur"  # what removed patches show: one of metrics.faithfulness.REPLACEMENTS
    batch_size: int = 64
    save_explanations: int = 0  # keep the explanations of the first N items (-1: all)
    retry_failed: bool = False
    progress: bool = True

    def main_labels(self) -> list[str]:
        """Methods of the main table: every spec except the ablation's own configurations."""
        ablation = {label for _, label in self.ablation_rows}
        return [s.label for s in self.specs if s.label not in ablation or s.label == s.name]

    def identity(self, adapter, dataset: Dataset) -> dict[str, Any]:
        """What a resumed run must share with the original (timings and output options excluded)."""
        return clean({
            "format": FORMAT,
            "model": {"name": adapter.name, "family": adapter.family, "weights": adapter.weights_id},
            "dataset": dataset.describe(),
            "methods": [s.to_dict() for s in self.specs],
            "main": self.main_labels(),
            "ablation": [list(r) for r in self.ablation_rows],
            "method_options": _jsonable({k: v for k, v in self.method_options.items() if v is not None}),
            "faithfulness": {"enabled": self.faithfulness, "blur_sigma": self.blur_sigma, "mask_target": True,
                             "kinds": list(SCORED_KINDS),
                             # named only when not the default, so runs made before the option still resume
                             **({"replacement": self.replacement} if self.replacement != "blur" else {})},
        })


def dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the launcher's environment (1 process without one).

    torchrun / accelerate launch, SLURM's srun and MPI are read; a launch of
    several processes without their ranks is refused (:mod:`.launch`).
    """
    launch = resolve_launch()
    return launch.rank, launch.world, launch.local


def wait_for_all(world: int) -> bool:
    """Barrier over all ranks (gloo) when launched by torchrun / accelerate; False if there is no launcher."""
    if world <= 1:
        return True
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        return False
    import torch.distributed as dist

    if not dist.is_initialized():
        # ranks finish their shards at different times; the wait may be long
        dist.init_process_group("gloo", timeout=timedelta(days=7))
    dist.barrier()
    dist.destroy_process_group()
    return True


class BenchRunner:
    """Runs ``config.specs`` over this process's share of ``dataset`` and records every result."""

    def __init__(self, adapter, dataset: Dataset, config: BenchConfig, rank: int = 0, world: int = 1) -> None:
        self.adapter, self.dataset, self.config = adapter, dataset, config
        self.rank, self.world = rank, world
        self.out = Path(config.out)
        labels = [s.label for s in config.specs]
        if len(set(labels)) != len(labels):
            raise UnknownNameError(f"method labels must be unique, got {labels}")
        shared = {k: v for k, v in config.method_options.items() if v is not None}
        self.methods: dict[str, ExplanationMethod] = {
            s.label: get_method(s.name, adapter, **{**shared, **s.kwargs}) for s in config.specs}
        gens = {json.dumps(asdict(m.generation), sort_keys=True) for m in self.methods.values()}
        if len(gens) != 1:
            raise UnknownNameError("all methods of a bench run must use the same generation settings")
        # methods that share raw maps: same registered name and same non-refinement options
        groups: dict[str, list[MethodSpec]] = {}
        for s in config.specs:
            opts = {k: v for k, v in s.kwargs.items() if k not in REFINE_KEYS}
            key = [RAW_OF.get(s.name, s.name), _jsonable(opts)]
            groups.setdefault(json.dumps(key, sort_keys=True, default=str), []).append(s)
        self.groups = list(groups.values())
        self.order = {s.label: i for i, s in enumerate(config.specs)}

    # ---------------------------------------------------------------- setup
    def check_config(self) -> None:
        """Write ``bench.json``, or check that an existing one describes the same run."""
        path = self.out / CONFIG_FILE
        identity = self.config.identity(self.adapter, self.dataset)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            if path.exists():
                old = json.loads(path.read_text(encoding="utf-8"))
                if old != identity:
                    diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
                    raise OutputError(
                        f"{self.out} holds a bench run with a different configuration ({', '.join(diff)} differ); "
                        "rerun the same command to resume it, or choose another --out")
                return
            tmp = path.with_suffix(f".tmp{self.rank}")
            tmp.write_text(json.dumps(identity, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            os.replace(tmp, path)
        except OSError as err:
            raise OutputError(f"cannot write {path}: {err.strerror or err}") from None

    def done(self) -> dict[tuple[str, str], str]:
        return {(r["item"], r["method"]): r["status"] for r in read_records(self.out)}

    def todo(self) -> tuple[list[int], dict[int, list[str]]]:
        """This rank's item indices and, per index, the labels still to run."""
        done = self.done()
        mine = [i for i in range(len(self.dataset)) if i % self.world == self.rank]
        pending: dict[int, list[str]] = {}
        for i in mine:
            item = self.dataset.items[i]
            labels = [s.label for s in self.config.specs
                      if done.get((item.id, s.label)) is None
                      or (self.config.retry_failed and done[(item.id, s.label)] == "failed")]
            if labels:
                pending[i] = labels
        return mine, pending

    # ------------------------------------------------------------------ run
    def run(self) -> int:
        """Process this rank's pending items; returns the number of records written."""
        self.check_config()
        mine, pending = self.todo()
        from ..progress import bar as progress_bar

        written = 0
        with ShardWriter(shard_path(self.out, self.rank, self.world)) as writer, progress_bar(
            total=len(mine), initial=len(mine) - len(pending), unit="item",
            desc=f"bench{'' if self.world == 1 else f' rank {self.rank}'}",
            disable=not self.config.progress, position=self.rank, leave=True,
        ) as bar:
            everything = [s.label for s in self.config.specs]
            for index, labels in pending.items():
                # a partly done item runs whole again (only its missing records are written), so that
                # work shared between its methods happens exactly as in an uninterrupted run
                for record in self.process(index, everything):
                    if record["method"] in labels:
                        writer.write(record)
                        written += 1
                bar.update(1)
        return written

    def _record(self, index: int, item: Item, label: str, status: str, **extra: Any) -> dict[str, Any]:
        return {"item": item.id, "index": index, "method": label, "method_order": self.order[label],
                "prompt": item.prompt, "status": status, **extra}

    def process(self, index: int, labels: Sequence[str]) -> list[dict[str, Any]]:
        """All requested methods on one item (never raises for a failing item: failures are records)."""
        item = self.dataset.items[index]
        first = self.methods[labels[0]]
        try:
            t0 = time.perf_counter()
            image = item.image()
            run = first.generate(image, item.prompt)
            run.gradients = {}  # every method of this item reading the same block and score shares its backward
            gen_s = time.perf_counter() - t0
            answer = self.adapter.join(run.texts)
            if not run.answer_ids:
                return [self._record(index, item, lab, "skipped", reason="empty answer", answer="") for lab in labels]
            units = self.dataset.units(item, run.texts)
        except Exception as err:  # a bad image or annotation fails this item only
            return [self._record(index, item, lab, "failed", reason=f"{type(err).__name__}: {err}") for lab in labels]
        common = {"answer": answer, "reference": item.reference, "gen_seconds": gen_s,
                  "units_absent": [u.word for u in units if u.kind == "absent"]}
        if not any(u.kind in SCORED_KINDS for u in units):
            return [self._record(index, item, lab, "skipped", reason="answer has no scorable word", **common)
                    for lab in labels]
        wanted = set(labels)
        records = []
        cache: dict = {}  # perturbed forwards shared by the methods explaining this answer
        indices = list(range(len(run.answer_ids)))
        for group in self.groups:
            members = [s for s in group if s.label in wanted]
            if not members:
                continue
            try:
                t1 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # degenerate maps are counted in the record instead
                    raw = self.methods[members[0].label].compute(run, indices)
                compute_s = time.perf_counter() - t1
            except Exception as err:
                records += [self._record(index, item, s.label, "failed", reason=f"{type(err).__name__}: {err}",
                                         **common) for s in members]
                continue
            for spec in members:
                try:
                    records.append(self._score(index, item, spec, run, indices, raw, units, common,
                                               gen_s + compute_s, cache))
                except Exception as err:
                    records.append(self._record(index, item, spec.label, "failed",
                                                reason=f"{type(err).__name__}: {err}", **common))
        return sorted(records, key=lambda r: r["method_order"])

    def _score(self, index: int, item: Item, spec: MethodSpec, run: Run, indices: list[int], raw, units: list[Unit],
               common: dict[str, Any], shared_s: float, cache: dict) -> dict[str, Any]:
        from .scoring import score_units

        method = self.methods[spec.label]
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exp = method.build(run, indices, raw)
        seconds = shared_s + time.perf_counter() - t0
        t1 = time.perf_counter()
        scored = score_units(self.adapter, run, exp, units, faithfulness=self.config.faithfulness,
                             blur_sigma=self.config.blur_sigma, replacement=self.config.replacement,
                             batch_size=self.config.batch_size, cache=cache)
        score_s = time.perf_counter() - t1
        keep = self.config.save_explanations
        if keep and (keep < 0 or index < keep):
            exp.metrics = clean({"units": scored["units"], "function": scored["function"]})
            exp.save(self.out / "explanations" / f"{index:06d}" / slug(spec.label))
        return self._record(index, item, spec.label, "ok", seconds=seconds, score_seconds=score_s,
                            degenerate=int(sum(exp.degenerate)), **common, **scored)


def run_bench(adapter, dataset: Dataset, config: BenchConfig, rank: int | None = None,
              world: int | None = None, report: bool = True) -> dict[str, Any] | None:
    """Run (or resume) a bench; rank 0 returns the tables once every rank is done.

    ``report=False``: tables only, no chart or HTML report (a grid of many configurations).
    """
    env_rank, env_world, _ = dist_env()
    rank = env_rank if rank is None else rank
    world = env_world if world is None else world
    BenchRunner(adapter, dataset, config, rank, world).run()
    if not wait_for_all(world):
        if rank == 0:
            print(f"rank 0 done; once every rank has finished run `diffusion-cam bench --merge --out {config.out}`")
        return None
    if rank != 0:
        return None
    return write_tables(Path(config.out), report=report)
