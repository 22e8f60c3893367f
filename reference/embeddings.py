"""All embedding tables as one fused table: one lookup for every table at once.

The tables are stacked row-wise into a single weight of shape
``(sum(table_sizes), dim)``; table ``t`` owns the rows ``offsets[t] ..
offsets[t] + table_sizes[t] - 1``. A batch of ids ``(B, T)`` becomes one
gather instead of ``T`` Python-level calls, and bags of ids (jagged, see
reference/data/jagged.py) one ``embedding_bag``; either way the gradient is
one sparse tensor, so the optimiser touches only the rows present in the batch.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data.jagged import Ids, JaggedIds
from .hugepages import advise_huge_pages


def init_block_rows(dim: int) -> int:
    """Rows per independently seeded initialisation block (about 4M values)."""
    return max(1, (1 << 22) // dim)


def block_generator(seed: int, table: int, block: int) -> torch.Generator:
    # SeedSequence mixes any seed size into 63 bits (manual_seed takes at most 2**63 - 1).
    state = np.random.SeedSequence([seed, table, block]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) >> 1)


@dataclass(frozen=True)
class RowRange:
    """Rows ``lo .. lo + rows - 1`` of table ``table`` (of ``table_rows`` rows), at row ``offset`` of a weight."""
    offset: int
    table: int
    table_rows: int
    lo: int
    rows: int


@torch.no_grad()
def init_table_rows(out: torch.Tensor, seed: int, table: int, table_rows: int, lo: int) -> None:
    """Fill ``out`` with rows ``lo .. lo + len(out) - 1`` of table ``table``'s
    initial weights: uniform in (-sqrt(1/n), sqrt(1/n)) for a table of n rows,
    as in the seed. Each block of :func:`init_block_rows` rows draws from its
    own stream, so the values depend only on (seed, table, row), never on how
    the table is split across ranks, and a row range is initialised without
    generating the rest of the table."""
    init_rows(out, seed, [RowRange(0, table, table_rows, lo, out.shape[0])])


@torch.no_grad()
def init_rows(weight: torch.Tensor, seed: int, ranges: list[RowRange], threads: int | None = None) -> None:
    """Initialise the row ranges of ``weight`` (on any device), block by block
    in ``threads`` threads (default: torch's intra-op count). The values are
    drawn on the host from each block's own generator, so they are the same on
    every device and for any thread count; a weight on a GPU is filled one block
    at a time, never staged whole in host memory."""
    dim = weight.shape[1]
    block = init_block_rows(dim)
    on_host = weight.device.type == "cpu"
    tasks = [(r, b) for r in ranges for b in range(r.lo // block, -(-(r.lo + r.rows) // block))]

    def fill(task) -> None:
        r, b = task
        b_lo, b_hi = b * block, min((b + 1) * block, r.table_rows)
        start, stop = max(r.lo, b_lo), min(r.lo + r.rows, b_hi)
        bound = math.sqrt(1.0 / r.table_rows)
        generator = block_generator(seed, r.table, b)
        target = weight[r.offset + start - r.lo:r.offset + stop - r.lo]
        if on_host and (start, stop) == (b_lo, b_hi):
            target.uniform_(-bound, bound, generator=generator)
        else:  # a block cut by the range, or on a device: draw it whole on the host, keep the overlap
            values = torch.empty(b_hi - b_lo, dim).uniform_(-bound, bound, generator=generator)
            target.copy_(values[start - b_lo:stop - b_lo])

    workers = min(len(tasks), threads or torch.get_num_threads())
    if workers <= 1:
        for task in tasks:
            fill(task)
        return
    # Each block has its own generator: the threads share nothing, and uniform_ releases the GIL.
    # A new thread's current GPU is GPU 0: bind it to the weight's, or each rank would open a context there.
    bind = (lambda: torch.cuda.set_device(weight.device)) if weight.is_cuda else None
    with ThreadPoolExecutor(workers, thread_name_prefix="table-init", initializer=bind) as pool:
        for _ in pool.map(fill, tasks):
            pass


def per_id(ids: JaggedIds, per_table: torch.Tensor) -> torch.Tensor:
    """``per_table[t]`` for every id of table ``t``. The output size is the
    values', so a GPU needs no host read to size it."""
    return per_table.repeat_interleave(ids.table_lengths(), output_size=ids.values.numel())


def bag_rows(ids: JaggedIds, first_rows: torch.Tensor) -> torch.Tensor:
    """Each id's row in a fused weight where table ``t`` starts at row ``first_rows[t]``."""
    return ids.values + per_id(ids, first_rows)


def pool_bags(weight: torch.Tensor, rows: torch.Tensor, bags: JaggedIds,
              per_sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The sums of the rows ``rows`` of ``weight``, in the bags of ``bags``
    (whose values they replace): (batch, tables, dim), zero for an empty bag.
    The gradient is sparse, one entry per id, duplicates included: the
    optimisers sum them (reference/optim.py)."""
    pooled = F.embedding_bag(rows, weight, bags.offsets, mode="sum", sparse=True, include_last_offset=True,
                             per_sample_weights=per_sample_weights)
    return pooled.view(bags.num_tables, bags.batch_size, weight.shape[1]).transpose(0, 1)


class EmbeddingTables(Protocol):
    """What the model, checkpoints and run summaries use of a tables module:
    :class:`FusedEmbeddingBag`, one rank's shards and their all-to-all
    (distributed/sharded.py), or the QR and MD tables (qr_embeddings.py,
    md_embeddings.py). A lookup is started and finished in two calls so that
    the model computes its bottom MLP while an all-to-all is in flight."""

    table_sizes: list[int]
    dim: int

    def start(self, ids: Ids) -> Any:
        """Begin looking ``ids`` up (one per table, or bags); returns what :meth:`finish` needs."""

    def finish(self, pending: Any) -> torch.Tensor:
        """The (samples, tables, dim) vectors of the lookup :meth:`start` began."""


class LocalTables(nn.Module):
    """Tables all held by this process: the lookup is all there is to do, so
    :meth:`start` does it and :meth:`finish` hands it back."""

    def start(self, ids: Ids) -> torch.Tensor:
        return self(ids)

    def finish(self, pending: torch.Tensor) -> torch.Tensor:
        return pending


class FusedEmbeddingBag(LocalTables):
    offsets: torch.Tensor  # a buffer: moves with the module

    def __init__(self, table_sizes: list[int], dim: int, seed: int = 0, device=None):
        super().__init__()
        self.table_sizes = [int(n) for n in table_sizes]
        self.dim = dim
        offsets = [0]
        for n in self.table_sizes[:-1]:
            offsets.append(offsets[-1] + n)
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.int64, device=device), persistent=False)
        # Built where it is used: a GPU's tables never pass through host memory whole.
        weight = torch.empty(sum(self.table_sizes), dim, device=device)
        if weight.device.type == "cpu":
            advise_huge_pages(weight)
        self.weight = nn.Parameter(weight)
        self.reset_parameters(seed)

    @property
    def num_tables(self) -> int:
        return len(self.table_sizes)

    def table(self, t: int) -> torch.Tensor:
        start = sum(self.table_sizes[:t])
        return self.weight.data[start:start + self.table_sizes[t]]

    @torch.no_grad()
    def reset_parameters(self, seed: int) -> None:
        ranges, offset = [], 0
        for t, n in enumerate(self.table_sizes):
            ranges.append(RowRange(offset, t, n, 0, n))
            offset += n
        init_rows(self.weight.data, seed, ranges)

    def forward(self, ids: Ids) -> torch.Tensor:
        """ids: (B, T) with one id per table, (B, T, L) with L ids per table,
        or bags of any length (:class:`JaggedIds`); bags are pooled by sum.
        Returns (B, T, dim)."""
        if isinstance(ids, JaggedIds):
            if ids.num_tables != self.num_tables:
                raise ValueError(f"expected bags for {self.num_tables} tables, got {ids.num_tables}")
            return pool_bags(self.weight, bag_rows(ids, self.offsets), ids)
        # One id per table stays a plain gather: cheaper than embedding_bag's bags of one.
        if ids.dim() not in (2, 3) or ids.shape[1] != self.num_tables:
            raise ValueError(f"expected ids of shape (batch, {self.num_tables}[, hotness]), got {tuple(ids.shape)}")
        shape = (1, -1) if ids.dim() == 2 else (1, -1, 1)
        rows = ids.long() + self.offsets.view(shape)
        out = F.embedding(rows, self.weight, sparse=True)
        return out if ids.dim() == 2 else out.sum(dim=2)
