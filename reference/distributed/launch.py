"""Who am I in the job: rank, world size and local rank, from whichever
launcher started this process (torchrun, Open MPI, MPICH / Intel MPI,
MVAPICH, SLURM). One code path for all of them; no variables means one
process."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_PORT = 29500

# (launcher, rank, world size, local rank, local world size), most specific first:
# torchrun's variables win because torchrun may itself run under SLURM or MPI.
_SCHEMES = (
    ("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"),
    ("Open MPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
     "OMPI_COMM_WORLD_LOCAL_SIZE"),
    ("MVAPICH", "MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_LOCAL_RANK",
     "MV2_COMM_WORLD_LOCAL_SIZE"),
    ("MPICH / Intel MPI", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"),
    # srun's per-step variables: the batch script itself also has SLURM_PROCID and SLURM_NTASKS,
    # but is one process, not rank 0 of the job.
    ("SLURM", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID", "SLURM_STEP_TASKS_PER_NODE"),
)
MPI_LAUNCHERS = ("Open MPI", "MVAPICH", "MPICH / Intel MPI")


class LaunchError(RuntimeError):
    """The launcher's variables are missing, inconsistent or malformed."""


@dataclass(frozen=True)
class LaunchInfo:
    launcher: str
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str | None   # None: agree on one through MPI
    master_port: int


def _int(env: Mapping[str, str], name: str, launcher: str) -> int:
    text = env[name]
    try:
        return int(text)
    except ValueError:
        raise LaunchError(f"{launcher}: environment variable {name}={text!r} is not an integer") from None


def _slurm_first_host(nodelist: str) -> str:
    """First host of a SLURM node list such as ``gpu[03-05,9],cpu1``."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    if not m:
        raise LaunchError(f"SLURM: cannot read a host from SLURM_JOB_NODELIST={nodelist!r}")
    prefix, ranges = m.group(1), m.group(2)
    return prefix if ranges is None else prefix + ranges.split(",")[0].split("-")[0]


def _slurm_tasks_here(tasks_per_node: str, nodelist, nodename, node_id) -> int:
    """This node's entry of SLURM_STEP_TASKS_PER_NODE ("4(x2),3" = 4, 4, 3 tasks on nodes 0, 1, 2)."""
    counts = []
    for part in tasks_per_node.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not m:
            raise LaunchError(f"SLURM: cannot read SLURM_STEP_TASKS_PER_NODE={tasks_per_node!r}")
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    index = int(node_id) if node_id is not None and node_id.isdigit() else 0
    return counts[index] if index < len(counts) else counts[0]


def detect(env: Mapping[str, str] = os.environ) -> LaunchInfo | None:
    """The launch, or None for a plain single-process run."""
    for launcher, rank_var, size_var, local_var, local_size_var in _SCHEMES:
        if rank_var not in env or size_var not in env:
            continue
        rank, world = _int(env, rank_var, launcher), _int(env, size_var, launcher)
        if world < 1 or not 0 <= rank < world:
            raise LaunchError(f"{launcher}: {rank_var}={rank} is not a rank of {size_var}={world}")
        local = _int(env, local_var, launcher) if local_var in env else 0
        if launcher == "SLURM" and local_size_var in env:
            local_world = _slurm_tasks_here(env[local_size_var], env.get("SLURM_STEP_NODELIST"),
                                            env.get("SLURMD_NODENAME"), env.get("SLURM_NODEID"))
        elif local_size_var in env:
            local_world = _int(env, local_size_var, launcher)
        else:
            local_world = 1
        addr = env.get("MASTER_ADDR")
        if addr is None and launcher == "torchrun":
            raise LaunchError("torchrun-style launch (RANK and WORLD_SIZE set) without MASTER_ADDR")
        if addr is None and launcher == "SLURM" and "SLURM_JOB_NODELIST" in env:
            addr = _slurm_first_host(env["SLURM_JOB_NODELIST"])
        port = env.get("MASTER_PORT")
        if port is None and launcher == "SLURM" and "SLURM_JOB_ID" in env:
            port = str(DEFAULT_PORT + int(env["SLURM_JOB_ID"]) % 10_000)  # jobs sharing a node differ
        if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
            raise LaunchError(f"{launcher}: MASTER_PORT={port!r} is not a TCP port")
        if addr is None and launcher not in MPI_LAUNCHERS:
            raise LaunchError(f"{launcher}: set MASTER_ADDR (and MASTER_PORT) to rank 0's host")
        return LaunchInfo(launcher, rank, world, local, max(local_world, local + 1), addr,
                          int(port) if port is not None else DEFAULT_PORT)
    return None
