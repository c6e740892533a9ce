"""Two ways of configuring every method of a comparison, the same way for all of them.

``published``: every method with its own paper's defaults.  Diffusion-CAM is
the method spec's (``poscam`` formula, ``logit`` score, AKD's reflect-101
border, the four modules); Grad-CAM and LayerCAM differentiate the logit
(their papers' pre-softmax class score); LLaVA-CAM, TAM and the center prior
have no such knob.  The hooked block is the model's (``adapter.default_layer``),
the same for every gradient method (method spec §4: same layer, same state).

``selected``: every method gets the same selection budget.  Each is run over
the grid of the knobs it has (block x score x formula x AKD border, where they
apply) on the same selection scenes, and the configuration with the best
label-based criterion (pointing game, then F3 of means, then grid order) is
kept.  :func:`select` writes the choices to a JSON file *before* the reported
scenes are run; :func:`selected_specs` reads them back for ``bench``, which
refuses reported scenes that overlap the selection scenes.

The modules' worth is measured on top of the best selected raw configuration
(Diffusion-CAM without modules): the ablation rows of the selected protocol
add each module, and all four, to that configuration, with the AKD border
that scored best for it with all four modules.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any, Sequence

from ..errors import DiffusionCamError, OutputError, UnknownNameError
from ..extract import CAM_FORMULAS
from ..refine import MODULES
from ..refine.akd import BORDERS as AKD_BORDERS
from .runner import ABLATION_ROWS, REFINE_KEYS, BenchConfig, MethodSpec, run_bench

FORMAT = 1
#: first scene of the default selection set: disjoint from the reported scenes (10,000,000+), the held-out
#: sweeps (20,000,000+ and 30,000,000+) and training
SELECTION_SEED = 40_000_000
SELECTION_SCORES = ("logit", "logodds")
#: the label-based criterion, in order: a tie on the first is broken by the second, then by grid order
CRITERION = ("pointing", "f3_of_means")
GRID_METHODS = ("diffusion-cam", "diffusion-cam-raw", "layercam", "gradcam", "llava-cam", "tam", "center")


class SelectionError(DiffusionCamError):
    """A selection file that is missing, malformed, for another model, or overlapping the reported scenes."""


# ------------------------------------------------------------------ published
def published_options(adapter) -> dict[str, dict[str, Any]]:
    """Each method's own paper's defaults (see the module docstring)."""
    spec = {"cam": "poscam", "score": "logit"}
    return {
        "diffusion-cam": {**spec, "akd_border": "reflect101"},
        "diffusion-cam-raw": dict(spec),
        "layercam": {"score": "logit"},
        "gradcam": {"score": "logit"},
        "llava-cam": {},
        "tam": {},
        "center": {},
    }


def _spec(label: str, name: str, options: dict[str, Any]) -> MethodSpec:
    return MethodSpec(label, name, tuple(sorted(options.items())))


def _ablation(specs: list[MethodSpec], base: dict[str, Any]) -> list[tuple[str, str]]:
    """Ablation rows on ``base``: reuse a main spec with the same configuration, else add one."""
    rows = []
    for row, modules in ABLATION_ROWS:
        options = dict(base, modules=tuple(modules)) if modules else {k: v for k, v in base.items() if k not in REFINE_KEYS}
        name = "diffusion-cam" if modules else "diffusion-cam-raw"
        wanted = _spec("", name, options).options
        match = next((s.label for s in specs if s.name == name and s.options == wanted), None)
        if match is None and modules and tuple(modules) == MODULES:
            # the full row equals a spec that leaves the modules at their default
            wanted = _spec("", name, {k: v for k, v in options.items() if k != "modules"}).options
            match = next((s.label for s in specs if s.name == name and s.options == wanted), None)
        if match is None:
            match = f"diffusion-cam[{'+'.join(modules) or 'none'}]"
            specs.append(_spec(match, name, options))
        rows.append((row, match))
    return rows


def published_specs(adapter, methods: Sequence[str] | None = None,
                    ablation: bool = False) -> tuple[list[MethodSpec], list[tuple[str, str]]]:
    """Specs of the published protocol and, with ``ablation``, module rows on the spec's Diffusion-CAM."""
    options = published_options(adapter)
    names = list(methods or GRID_METHODS)
    unknown = [m for m in names if m not in options]
    if unknown:
        raise UnknownNameError(f"the published protocol knows no method {', '.join(map(repr, unknown))}; "
                               f"choose from {', '.join(options)}")
    specs = [_spec(m, m, options[m]) for m in names]
    rows = _ablation(specs, options["diffusion-cam"]) if ablation else []
    return specs, rows


# ------------------------------------------------------------------- selected
def selection_layers(adapter) -> list[int]:
    """Every block but the last, which gets no gradient at image positions in a single-stack model."""
    n = len(adapter.blocks())
    return list(range(max(n - 1, 1)))


def selection_grid(adapter, layers: Sequence[int] | None = None, scores: Sequence[str] = SELECTION_SCORES,
                   methods: Sequence[str] = GRID_METHODS) -> dict[str, list[dict[str, Any]]]:
    """Every method's configurations: the grid over the knobs it has (block, score, formula, AKD border)."""
    layers = list(selection_layers(adapter) if layers is None else layers)
    adapter.resolve_layers(layers)  # an out-of-range block fails here, before any scene runs
    knobs = {
        "diffusion-cam": {"cam": CAM_FORMULAS, "layer": layers, "score": scores, "akd_border": tuple(AKD_BORDERS)},
        "diffusion-cam-raw": {"cam": CAM_FORMULAS, "layer": layers, "score": scores},
        "layercam": {"layer": layers, "score": scores},
        "gradcam": {"layer": layers, "score": scores},
        "llava-cam": {"layer": layers},  # its score is the method's own (the sum of the answer's logits)
        "tam": {},  # the last block's logit lens: no block, score or formula to choose
        "center": {},
    }
    unknown = [m for m in methods if m not in knobs]
    if unknown:
        raise UnknownNameError(f"no selection grid for method {', '.join(map(repr, unknown))}; "
                               f"choose from {', '.join(knobs)}")
    grid = {}
    for m in methods:
        keys = list(knobs[m])
        grid[m] = [dict(zip(keys, values)) for values in itertools.product(*(knobs[m][k] for k in keys))]
    return grid


def grid_label(method: str, options: dict[str, Any]) -> str:
    return " ".join([method] + [f"{k}={v}" for k, v in options.items()])


def grid_specs(grid: dict[str, list[dict[str, Any]]]) -> list[MethodSpec]:
    return [_spec(grid_label(m, o), m, o) for m, configs in grid.items() for o in configs]


def _criterion(row: dict[str, Any]) -> tuple[float, ...]:
    return tuple(-1.0 if row.get(k) is None else float(row[k]) for k in CRITERION)


def choose(rows: dict[str, dict[str, Any]], grid: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The best configuration of every method by :data:`CRITERION` (first in grid order on a tie)."""
    methods = {}
    for m, configs in grid.items():
        best = max(configs, key=lambda o: _criterion(rows[grid_label(m, o)]))  # max keeps the first of equals
        row = rows[grid_label(m, best)]
        methods[m] = {"options": best, "configs": len(configs), **{k: row.get(k) for k in CRITERION}}
    base = None
    if "diffusion-cam-raw" in methods and "diffusion-cam" in grid:
        raw = methods["diffusion-cam-raw"]["options"]
        # the modules are added to the best raw configuration, with the AKD border that suits it best
        full = [o for o in grid["diffusion-cam"] if all(o.get(k) == v for k, v in raw.items())]
        border = max(full, key=lambda o: _criterion(rows[grid_label("diffusion-cam", o)]))["akd_border"]
        base = {**raw, "akd_border": border}
    return {"methods": methods, "ablation_base": base}


def select(adapter, dataset, work: Path, out: Path | None = None, *, layers: Sequence[int] | None = None,
           scores: Sequence[str] = SELECTION_SCORES, methods: Sequence[str] = GRID_METHODS,
           rank: int | None = None, world: int | None = None, progress: bool = True,
           replace: bool = False) -> dict[str, Any] | None:
    """Run every method's grid on ``dataset`` (a resumable bench run in ``work``) and choose.

    Returns the selection (and writes it to ``out`` as JSON) on rank 0 once
    every rank is done; ``None`` on the other ranks.  No deletion / insertion:
    the criterion is label-based.  An ``out`` that already holds a different
    selection is kept unless ``replace``: reported runs may have been made with it.
    """
    grid = selection_grid(adapter, layers, scores, methods)
    config = BenchConfig(out=Path(work), specs=grid_specs(grid), faithfulness=False, progress=progress)
    tables = run_bench(adapter, dataset, config, rank, world, report=False)
    if tables is None:
        return None
    if not tables["complete"]:
        raise OutputError(f"the selection run in {work} is incomplete ({tables['records']} of "
                          f"{tables['expected_records']} records); rerun the same command to finish it")
    rows = {r["method"]: r for r in tables["main"]}
    chosen = choose(rows, grid)
    selection = {
        "format": FORMAT,
        "protocol": "selected",
        "model": {"name": adapter.name, "family": adapter.family, "weights": adapter.weights_id},
        "dataset": dataset.describe(),
        "criterion": list(CRITERION),
        "grid": {"layers": list(selection_layers(adapter) if layers is None else layers), "scores": list(scores),
                 "formulas": list(CAM_FORMULAS), "akd_borders": list(AKD_BORDERS)},
        **chosen,
        "results": {label: {k: row.get(k) for k in ("pointing", "f3_of_means", "obj_iou", "words")}
                    for label, row in rows.items()},
    }
    if out is not None:
        write_selection(selection, Path(out), replace=replace)
    return selection


def write_selection(selection: dict[str, Any], path: Path, replace: bool = False) -> None:
    if not replace and path.is_file():
        try:
            same = json.loads(path.read_text(encoding="utf-8")) == json.loads(json.dumps(selection))
        except (OSError, ValueError):
            same = False
        if not same:
            raise OutputError(f"{path} already holds a different selection, which reported runs may have used; "
                              "write to another --out, or pass --replace to overwrite it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(selection, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from None


def load_selection(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    try:
        selection = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SelectionError(f"selection file {path} does not exist; write it with `diffusion-cam select`") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SelectionError(f"cannot read selection file {path}: {err}") from None
    if not isinstance(selection, dict) or selection.get("protocol") != "selected" or "methods" not in selection:
        raise SelectionError(f"{path} is not a selection file written by `diffusion-cam select`")
    return selection


def check_selection(selection: dict[str, Any], adapter, dataset) -> None:
    """The selection must be for this model and its scenes disjoint from the reported ones."""
    model = selection.get("model", {})
    if (model.get("name"), model.get("weights")) != (adapter.name, adapter.weights_id):
        raise SelectionError(f"the selection was made for model {model.get('name')!r} (weights "
                             f"{str(model.get('weights'))[:12]}), not {adapter.name!r} (weights "
                             f"{str(adapter.weights_id)[:12]}); run `diffusion-cam select --model {adapter.name}`")
    chosen, reported = selection.get("dataset", {}), dataset.describe()
    if chosen.get("name") != reported.get("name"):
        return
    if "seed" in chosen and "seed" in reported:
        a0, a1 = int(chosen["seed"]), int(chosen["seed"]) + int(chosen["scenes"])
        b0, b1 = int(reported["seed"]), int(reported["seed"]) + int(reported["scenes"])
        if a0 < b1 and b0 < a1:
            raise SelectionError(f"the reported scenes (seeds {b0}-{b1 - 1}) overlap the selection scenes "
                                 f"(seeds {a0}-{a1 - 1}): a configuration must not be chosen on the scenes it is "
                                 "reported on")
    elif chosen == reported:
        raise SelectionError("the reported items are the selection items: choose other items (--skip / --data)")


def selected_specs(selection: dict[str, Any], methods: Sequence[str] | None = None,
                   ablation: bool = False) -> tuple[list[MethodSpec], list[tuple[str, str]]]:
    """Specs of the selected protocol and, with ``ablation``, module rows on the best raw configuration."""
    chosen = selection["methods"]
    # the file's keys are sorted; tables list the methods in the usual order
    names = list(methods or [m for m in GRID_METHODS if m in chosen] + [m for m in chosen if m not in GRID_METHODS])
    missing = [m for m in names if m not in chosen]
    if missing:
        raise SelectionError(f"the selection file chose no configuration for {', '.join(map(repr, missing))}; "
                             f"it has {', '.join(chosen)}")
    specs = [_spec(m, m, chosen[m]["options"]) for m in names]
    rows = []
    if ablation:
        if not selection.get("ablation_base"):
            raise SelectionError("the selection file has no raw Diffusion-CAM choice to add the modules to")
        rows = _ablation(specs, selection["ablation_base"])
    return specs, rows
