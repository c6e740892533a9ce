"""Benchmark harness: datasets with ground-truth masks, a resumable data-parallel runner, tables."""

from .datasets import DATASETS, CocoDataset, Dataset, DatasetError, GranDfDataset, Item, ShapesDataset, Unit, load_dataset
from .runner import ABLATION_ROWS, MAIN_METHODS, BenchConfig, BenchRunner, MethodSpec, dist_env, method_specs, run_bench
from .scoring import score_units
from .tables import build_tables, write_tables

__all__ = [
    "ABLATION_ROWS", "DATASETS", "MAIN_METHODS", "BenchConfig", "BenchRunner", "CocoDataset", "Dataset", "DatasetError",
    "GranDfDataset", "Item", "MethodSpec", "ShapesDataset", "Unit", "build_tables", "dist_env", "load_dataset",
    "method_specs", "run_bench", "score_units", "write_tables",
]
