"""This process's rank among the processes a launcher started: torchrun, accelerate, SLURM, MPI.

Each launcher says it in its own environment variables.  ``torchrun`` (and
``accelerate launch``, which runs torch's launcher for several processes)
sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; ``srun`` sets
``SLURM_PROCID``, ``SLURM_NTASKS`` and ``SLURM_LOCALID`` in every task;
Open MPI's ``mpirun`` sets ``OMPI_COMM_WORLD_RANK`` / ``_SIZE`` /
``_LOCAL_RANK``, MPICH and Intel MPI ``PMI_RANK`` / ``PMI_SIZE``.  The first
complete set found, in that order, is this process's place.

Refused, because every process would believe it is alone and redo all the
work into the same files:

* a set that is incomplete (``WORLD_SIZE`` without ``RANK``, ``SLURM_NTASKS``
  above 1 without ``SLURM_PROCID``, an MPI size above 1 without its rank);
* one independent ``torchrun`` per task of an ``srun`` step (``srun
  torchrun ...`` without ``--nnodes`` and a shared rendezvous): torch's
  world is then no larger than one task's own processes
  (``LOCAL_WORLD_SIZE``) while ``SLURM_STEP_NUM_TASKS`` is above 1.

Not detectable: processes started by hand (``cmd & cmd &``) or by a
launcher that sets none of these variables.  A bench started in an
``sbatch`` script itself, outside ``srun``, reads the job's variables as
they are there: where they name task 0 of several it runs that task's share
only (the tables then say how many records are missing), so start it with
``srun``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from ..errors import LaunchError

#: (launcher, rank variable, world-size variable, local-rank variable), in order of precedence
LAUNCHERS = (
    ("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"),
    ("slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
    ("mpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("mpi", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
)


@dataclass(frozen=True)
class Launch:
    rank: int
    world: int
    local: int
    launcher: str  # torchrun, slurm, mpi, or none (one process)


def _int(env: Mapping[str, str], name: str) -> int | None:
    text = env.get(name)
    if text is None or text.strip() == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise LaunchError(f"{name}={text!r} is not an integer") from None


def resolve_launch(env: Mapping[str, str] | None = None) -> Launch:
    """Rank, world size, local rank and launcher from ``env`` (default: this process's environment)."""
    env = os.environ if env is None else env
    found = None
    for launcher, rank_var, world_var, local_var in LAUNCHERS:
        rank, world = _int(env, rank_var), _int(env, world_var)
        if rank is None and world is None:
            continue
        if rank is None and world is not None and world > 1:
            raise LaunchError(f"{world_var}={world} but {rank_var} is not set: {world} processes would each run "
                              f"every item; launch through {_how(launcher)}")
        if rank is None:
            continue  # a world of one: nothing to share
        if world is None:
            raise LaunchError(f"{rank_var}={rank} is set but {world_var} is not: the number of processes is unknown")
        if world < 1 or not 0 <= rank < world:
            raise LaunchError(f"{rank_var}={rank} is not within {world_var}={world}")
        local = _int(env, local_var)
        found = Launch(rank, world, rank if local is None else local, launcher)
        break
    if found is None:
        found = Launch(0, 1, 0, "none")
    # srun sets the step's task count; a torch world that stays on one of several tasks is one torchrun per task
    tasks = _int(env, "SLURM_STEP_NUM_TASKS")
    local_world = _int(env, "LOCAL_WORLD_SIZE")
    if found.launcher == "torchrun" and tasks is not None and tasks > 1 and (
            found.world < tasks or (local_world is not None and found.world <= local_world)):
        raise LaunchError(
            f"torchrun's WORLD_SIZE={found.world} spans one of the {tasks} SLURM tasks running it: each task started "
            "its own torchrun and would redo the others' items; give torchrun --nnodes and a shared rendezvous "
            "(--rdzv-endpoint), or run one process per task with srun alone")
    return found


def _how(launcher: str) -> str:
    return {"torchrun": "torchrun or accelerate launch", "slurm": "srun (it sets SLURM_PROCID in every task)",
            "mpi": "mpirun"}[launcher]
