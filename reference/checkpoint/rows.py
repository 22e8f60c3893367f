"""Reading table rows from checkpoint files, only the rows asked for.

The files are memory-mapped (``torch.load(mmap=True, weights_only=True)``),
so copying rows reads only their pages. Mapped pages a process has read count
in its resident memory until unmapped; each chunk's pages are handed back to
the kernel once copied (``madvise(MADV_DONTNEED)``: on a private file mapping
that was only read, they are dropped from this process and stay in the page
cache), so a rank loading its share of a 96 GB file peaks at its share plus
one chunk, not twice its share.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
from collections.abc import Callable
from typing import Protocol

import torch

from .files import FORMAT, CheckpointError, load_file

CHUNK_BYTES = 64 << 20
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def release_pages(mapped: torch.Tensor) -> None:
    """Hand the pages under ``mapped`` (a read-only view of a private file mapping) back to the kernel.
    Only for such views: on ordinary memory MADV_DONTNEED would zero the values."""
    if _LIBC is None or mapped.numel() == 0 or not mapped.is_contiguous():
        return
    page = mmap.PAGESIZE
    start = mapped.data_ptr() // page * page
    end = -(-(mapped.data_ptr() + mapped.numel() * mapped.element_size()) // page) * page
    _LIBC.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), mmap.MADV_DONTNEED)


def copy_rows(out: torch.Tensor, source: torch.Tensor, mapped: bool) -> None:
    """``out.copy_(source)`` chunk by chunk; a ``mapped`` source's pages are released after each chunk."""
    if tuple(out.shape) != tuple(source.shape):
        raise AssertionError(f"copy of {tuple(source.shape)} rows into {tuple(out.shape)}")
    per_row = max(1, source[0].numel() * source.element_size()) if len(source) else 1
    step = max(1, CHUNK_BYTES // per_row)
    for lo in range(0, len(source), step):
        part = source[lo:lo + step]
        out[lo:lo + step].copy_(part)
        if mapped:
            release_pages(part)


class TableRows(Protocol):
    """The rows of a checkpoint's tables, by (table, row): the weights (key
    ``weight``) and the optimiser's per-row state (``state.NAME``)."""

    path: str
    table_sizes: list[int]
    dim: int
    row_state: dict[str, tuple[list[int], torch.dtype]]  # per-row optimiser state: shape of a row, dtype

    def describe(self, table: int) -> str:
        """How the checkpoint names a table's weights, for errors."""

    def copy(self, key: str, table: int, lo: int, out: torch.Tensor) -> None:
        """Rows ``lo .. lo + len(out) - 1`` of ``table``'s ``key`` into ``out``."""

    def close(self) -> None:
        """Unmap the files."""


class FileTables:
    """Whole tables of one file (ours of version 1, or the original
    dlrm_s_pytorch.py's): one tensor per table and key."""

    def __init__(self, path: str, tables: dict[str, list[torch.Tensor]], mapped: bool,
                 row_state: dict[str, tuple[list[int], torch.dtype]], describe: Callable[[int], str]):
        self.path, self.tables, self.mapped, self.row_state = path, tables, mapped, row_state
        weights = tables["weight"]
        self.table_sizes = [int(w.shape[0]) for w in weights]
        self.dim = int(weights[0].shape[1]) if weights else 0
        self._describe = describe

    def describe(self, table: int) -> str:
        return self._describe(table)

    def copy(self, key: str, table: int, lo: int, out: torch.Tensor) -> None:
        copy_rows(out, self.tables[key][table][lo:lo + len(out)], self.mapped)

    def close(self) -> None:
        self.tables.clear()


class ShardFiles:
    """Tables saved by rows across the rank files of a step folder (folder.py):
    a row is read from the file of the rank that held it, through the plan the
    checkpoint was saved with; each file is mapped on first use."""

    def __init__(self, folder: str, meta: dict, file_name: Callable[[int], str], version: int):
        self.folder, self.file_name, self.version = folder, file_name, version
        self.path = folder
        self.table_sizes = [int(n) for n in meta["table_sizes"]]
        self.dim = int(meta["dim"])
        self.plan = [tuple(int(v) for v in shard) for shard in meta["plan"]]
        self.row_state = {k: (list(v["shape"]), getattr(torch, v["dtype"])) for k, v in meta["row_state"].items()}
        self.files: dict[int, dict] = {}
        self.offsets: dict[tuple[int, int], int] = {}  # (rank, index in self.plan) -> row in that rank's file

    def describe(self, table: int) -> str:
        return f"table {table}"

    def _file(self, rank: int) -> dict:
        if rank not in self.files:
            path = os.path.join(self.folder, self.file_name(rank))
            data = load_file(path)
            if data.get("format") != FORMAT or data.get("version") != self.version or data.get("rank") != rank:
                raise CheckpointError(f"{path}: not rank {rank}'s file of this checkpoint (format "
                                      f"{data.get('format')!r}, version {data.get('version')!r}, rank "
                                      f"{data.get('rank')!r})")
            mine = sorted((s for s in self.plan if s[3] == rank), key=lambda s: (s[0], s[1]))
            held, offset = [], 0
            for s in mine:
                held.append([s[0], s[1], s[2], offset])
                self.offsets[(rank, self.plan.index(s))] = offset
                offset += s[2] - s[1]
            if data.get("shards") != held or tuple(data["weight"].shape) != (offset, self.dim):
                raise CheckpointError(f"{path}: holds shards {data.get('shards')} of weight "
                                      f"{tuple(data['weight'].shape)}; the checkpoint's plan gives this rank "
                                      f"{held} ({offset} rows of {self.dim})")
            self.files[rank] = data
        return self.files[rank]

    def copy(self, key: str, table: int, lo: int, out: torch.Tensor) -> None:
        hi = lo + len(out)
        for index, (t, s_lo, s_hi, rank) in enumerate(self.plan):
            a, b = max(lo, s_lo), min(hi, s_hi)
            if t != table or a >= b:
                continue
            data = self._file(rank)
            if key not in data:
                raise CheckpointError(f"{os.path.join(self.folder, self.file_name(rank))}: has no {key!r} rows")
            start = self.offsets[(rank, index)] + a - s_lo
            copy_rows(out[a - lo:b - lo], data[key][start:start + b - a], mapped=True)

    def close(self) -> None:
        self.files.clear()
