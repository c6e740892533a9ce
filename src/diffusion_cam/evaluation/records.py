"""Per-item results as JSON lines: append with fsync, read back tolerating a torn last line."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterator

from ..errors import OutputError

RESULTS_DIR = "results"
STATUSES = ("ok", "skipped", "failed")


def shard_path(out: Path, rank: int, world: int) -> Path:
    return out / RESULTS_DIR / f"rank-{rank}-of-{world}.jsonl"


def clean(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become None, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class ShardWriter:
    """Appends one JSON object per line and makes it durable before returning.

    A process killed mid-write leaves at most one torn last line; opening the
    shard again cuts it off, so the appended lines always parse.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._repair()
            self._file = open(path, "a", encoding="utf-8")
        except OSError as err:
            raise OutputError(f"cannot write results to {path}: {err.strerror or err}") from None

    def _repair(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
                f.flush()
                os.fsync(f.fileno())

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(clean(record), ensure_ascii=False, sort_keys=True) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_shard(path: Path) -> Iterator[dict[str, Any]]:
    """Records of one shard; a torn last line (a killed writer) is skipped, any other bad line is an error."""
    try:
        data = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise OutputError(f"cannot read {path}: {err.strerror or err}") from None
    lines = data.split("\n")
    complete, torn = lines[:-1], lines[-1]
    for n, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as err:
            raise OutputError(f"{path}:{n}: not a JSON record ({err}); the results file is corrupt") from None
    del torn  # written by a process that was killed: the item is simply not done


def read_records(out: Path) -> list[dict[str, Any]]:
    """All records of a run, one per (item, method): a success beats an earlier failure, else the first wins."""
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted((out / RESULTS_DIR).glob("*.jsonl")):
        for rec in read_shard(path):
            key = (rec["item"], rec["method"])
            old = best.get(key)
            if old is None or (old["status"] == "failed" and rec["status"] != "failed"):
                best[key] = rec
    return sorted(best.values(), key=lambda r: (r["index"], r["method_order"]))


def slug(text: str) -> str:
    """A method label as a folder name (saved explanations of a run)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"
