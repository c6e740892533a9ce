"""Benchmark harness: datasets with ground-truth masks, a resumable data-parallel runner, tables."""

from .datasets import DATASETS, CocoDataset, Dataset, DatasetError, GranDfDataset, Item, ShapesDataset, Unit, load_dataset
from .runner import ABLATION_ROWS, MAIN_METHODS, BenchConfig, BenchRunner, MethodSpec, dist_env, method_specs, run_bench
from .intervals import ablation_table, main_table
from .protocols import load_selection, published_specs, select, selected_specs
from .scoring import score_units
from .tables import build_tables, write_tables

__all__ = [
    "ABLATION_ROWS", "DATASETS", "MAIN_METHODS", "BenchConfig", "BenchRunner", "CocoDataset", "Dataset", "DatasetError",
    "GranDfDataset", "Item", "MethodSpec", "ShapesDataset", "Unit", "build_tables", "dist_env", "load_dataset",
    "ablation_table", "load_selection", "main_table", "method_specs", "published_specs", "run_bench", "score_units",
    "select", "selected_specs", "write_tables",
]
