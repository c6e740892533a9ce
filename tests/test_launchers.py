"""Ranks from each launcher's environment, refused launches, and a SLURM run that matches one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from diffusion_cam.cli import main
from diffusion_cam.errors import LaunchError
from diffusion_cam.evaluation.launch import Launch, resolve_launch
from diffusion_cam.evaluation.records import read_records, read_shard

ARGS = ["bench", "--model", "tiny-random", "--items", "6", "--methods", "gradcam", "center", "--no-faithfulness",
        "--no-progress"]
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
TIMING = ("seconds", "score_seconds", "gen_seconds")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in LAUNCH_VARS and not k.startswith(("SLURM_", "OMPI_", "PMI_", "MPI_"))}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path), **extra}


@pytest.mark.parametrize("env, expected", [
    ({}, Launch(0, 1, 0, "none")),
    ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}, Launch(3, 8, 1, "torchrun")),
    # accelerate launch with several processes runs torch's launcher: the same variables, plus its own
    ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "ACCELERATE_MIXED_PRECISION": "no"}, Launch(1, 2, 1, "torchrun")),
    ({"SLURM_PROCID": "5", "SLURM_NTASKS": "6", "SLURM_LOCALID": "1", "SLURM_STEP_NUM_TASKS": "6"},
     Launch(5, 6, 1, "slurm")),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, Launch(0, 1, 0, "slurm")),
    ({"SLURM_NTASKS": "1"}, Launch(0, 1, 0, "none")),  # one task: nothing to share
    ({"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "0"}, Launch(2, 4, 0, "mpi")),
    ({"PMI_RANK": "1", "PMI_SIZE": "2"}, Launch(1, 2, 1, "mpi")),
    # multi-node torchrun under srun (one task per node, shared rendezvous): torch's ranks win over SLURM's
    ({"RANK": "6", "WORLD_SIZE": "8", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "4",
      "SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2", "SLURM_LOCALID": "0"},
     Launch(6, 8, 2, "torchrun")),
], ids=["none", "torchrun", "accelerate", "slurm", "slurm-one-task", "slurm-no-procid-one-task", "openmpi", "pmi",
        "torchrun-multinode-under-srun"])
def test_rank_from_each_launcher(env, expected):
    assert resolve_launch(env) == expected


@pytest.mark.parametrize("env, message", [
    ({"WORLD_SIZE": "4"}, "WORLD_SIZE=4 but RANK is not set"),
    ({"SLURM_NTASKS": "2"}, "SLURM_NTASKS=2 but SLURM_PROCID is not set: 2 processes would each run every item"),
    ({"OMPI_COMM_WORLD_SIZE": "3"}, "OMPI_COMM_WORLD_SIZE=3 but OMPI_COMM_WORLD_RANK is not set"),
    ({"RANK": "0"}, "RANK=0 is set but WORLD_SIZE is not"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2 is not within WORLD_SIZE=2"),
    ({"SLURM_PROCID": "x", "SLURM_NTASKS": "2"}, "SLURM_PROCID='x' is not an integer"),
    # srun --ntasks 2 torchrun --nproc_per_node 2 without --nnodes: two separate worlds of 2
    ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
      "SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2"}, "each task started its own torchrun"),
], ids=["world-without-rank", "slurm-without-procid", "mpi-without-rank", "rank-without-world", "rank-outside",
        "not-an-integer", "torchrun-per-srun-task"])
def test_launches_without_ranks_are_refused(env, message):
    with pytest.raises(LaunchError, match=message.replace("(", r"\(")):
        resolve_launch(env)


def test_cli_refuses_before_loading_anything(tmp_path, capsys, monkeypatch):
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    assert main([*ARGS, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: SLURM_NTASKS=2 but SLURM_PROCID is not set")
    assert not (tmp_path / "x" / "results").exists()


def _rows(out):
    table = json.loads((out / "table.json").read_text())
    return [{k: v for k, v in r.items() if k != "seconds"} for r in table["main"]]


def _strip(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def test_two_slurm_tasks_share_the_items_and_merge_into_the_single_process_table(tmp_path):
    single = tmp_path / "single"
    cmd = [sys.executable, "-m", "diffusion_cam.cli", *ARGS]
    res = subprocess.run([*cmd, "--out", str(single)], env=_clean_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    shared = tmp_path / "shared"  # one --out for both tasks, as on a cluster's shared file system
    tasks = [subprocess.Popen([*cmd, "--out", str(shared)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=_clean_env(SLURM_PROCID=str(r), SLURM_NTASKS="2", SLURM_LOCALID=str(r),
                                             SLURM_STEP_NUM_TASKS="2", SLURM_JOB_ID="42"))
             for r in (0, 1)]
    outputs = [t.communicate(timeout=600) for t in tasks]
    assert [t.returncode for t in tasks] == [0, 0], [e[-2000:] for _, e in outputs]
    assert "bench --merge" in outputs[0][0]  # no meeting point under srun alone: rank 0 says how to finish
    shards = sorted(p.name for p in (shared / "results").iterdir())
    assert shards == ["rank-0-of-2.jsonl", "rank-1-of-2.jsonl"]
    assert [{r["index"] % 2 for r in read_shard(shared / "results" / s)} for s in shards] == [{0}, {1}]
    assert main(["bench", "--merge", "--out", str(shared)]) == 0
    assert _strip(read_records(shared)) == _strip(read_records(single))
    assert _rows(shared) == _rows(single)
