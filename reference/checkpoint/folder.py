"""The checkpoint folder: complete step folders and a pointer to the latest.

    CHECKPOINT_PATH/
      LATEST                    the name of the latest complete step folder (replaced atomically)
      step-00000020/
        meta.pt                 rank 0: dense weights and their optimiser state, training state,
                                config, table sizes, the placement plan
        rank-00000.pt           each rank: its table shards' rows and their per-row optimiser state
        rank-00001.pt

A save is written by every rank into ``.step-N.partial``; once all have
finished (a barrier), rank 0 renames it to ``step-N``, then replaces LATEST,
then removes the older step folders. A kill at any moment leaves LATEST
naming a complete folder (or no LATEST before the first save completes).
Every rank must see the same CHECKPOINT_PATH (a shared filesystem on a cluster).
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Protocol

from .files import CheckpointError, save_streamed

VERSION = 2
LATEST = "LATEST"
META = "meta.pt"
_STEP = re.compile(r"^step-\d{8}(\.\d+)?$")


def rank_file(rank: int) -> str:
    return f"rank-{rank:05d}.pt"


class Group(Protocol):
    """The processes that save one checkpoint together (the runtime's Parallel is one)."""

    rank: int
    world_size: int

    def barrier(self) -> None:
        """Return once every process has reached it."""


class Alone:
    """One process saving by itself."""

    rank, world_size = 0, 1

    def barrier(self) -> None:
        pass


def write(path: str, step: int, group: Group, rank_state: dict | None, meta: dict | None) -> None:
    """Save one checkpoint: ``rank_state`` from every rank that holds table
    rows, ``meta`` from rank 0; complete in ``path`` or not there at all."""
    staging = os.path.join(path, f".step-{step:08d}.partial")
    if group.rank == 0:
        os.makedirs(path, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)  # left by a save that was killed
        os.makedirs(staging)
    group.barrier()
    if rank_state is not None:
        save_streamed(rank_state, os.path.join(staging, rank_file(group.rank)))
    if meta is not None:
        save_streamed(meta, os.path.join(staging, META))
    group.barrier()  # every rank's file is durable (fsynced)
    if group.rank == 0:
        _publish(path, staging, step)


def _publish(path: str, staging: str, step: int) -> None:
    name, n = f"step-{step:08d}", 0
    while os.path.exists(os.path.join(path, name)):  # the same step saved again (a resumed run that ended at once)
        n += 1
        name = f"step-{step:08d}.{n}"
    _fsync_dir(staging)
    os.rename(staging, os.path.join(path, name))
    pointer = os.path.join(path, LATEST)
    with open(pointer + ".tmp", "w") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(pointer + ".tmp", pointer)
    _fsync_dir(path)
    for entry in os.listdir(path):  # only now: until LATEST named the new one, the old one was the checkpoint
        if entry != name and (_STEP.match(entry) or entry.endswith(".partial")):
            shutil.rmtree(os.path.join(path, entry), ignore_errors=True)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def find(path: str) -> str:
    """The step folder ``path`` names: itself, or the latest of a checkpoint_path folder."""
    if os.path.isfile(os.path.join(path, META)):
        return path
    pointer = os.path.join(path, LATEST)
    if not os.path.isfile(pointer):
        raise CheckpointError(f"{path}: a folder with neither {LATEST} nor {META}: no checkpoint was completed "
                              f"there (or it is not a checkpoint folder)")
    with open(pointer) as f:
        name = f.read().strip()
    if not _STEP.match(name):
        raise CheckpointError(f"{pointer}: should name a step folder (step-NNNNNNNN), holds {name[:80]!r}")
    folder = os.path.join(path, name)
    if not os.path.isfile(os.path.join(folder, META)):
        raise CheckpointError(f"{pointer}: names {name}, but {os.path.join(folder, META)} is missing")
    return folder
