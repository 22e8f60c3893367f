"""All embedding tables as one fused table: one lookup for every table at once.

The tables are stacked row-wise into a single weight of shape
``(sum(table_sizes), dim)``; table ``t`` owns the rows ``offsets[t] ..
offsets[t] + table_sizes[t] - 1``. A batch of ids ``(B, T)`` becomes one
gather instead of ``T`` Python-level calls, and its gradient is one sparse
tensor, so the optimiser touches only the rows present in the batch.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .hugepages import advise_huge_pages


def init_block_rows(dim: int) -> int:
    """Rows per independently seeded initialisation block (about 4M values)."""
    return max(1, (1 << 22) // dim)


def block_generator(seed: int, table: int, block: int) -> torch.Generator:
    # SeedSequence mixes any seed size into 63 bits (manual_seed takes at most 2**63 - 1).
    state = np.random.SeedSequence([seed, table, block]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) >> 1)


@torch.no_grad()
def init_table_rows(out: torch.Tensor, seed: int, table: int, table_rows: int, lo: int) -> None:
    """Fill ``out`` with rows ``lo .. lo + len(out) - 1`` of table ``table``'s
    initial weights: uniform in (-sqrt(1/n), sqrt(1/n)) for a table of n rows,
    as in the seed. Each block of :func:`init_block_rows` rows draws from its
    own stream, so the values depend only on (seed, table, row), never on how
    the table is split across ranks, and a row range is initialised without
    generating the rest of the table."""
    dim = out.shape[1]
    block = init_block_rows(dim)
    bound = math.sqrt(1.0 / table_rows)
    hi = lo + out.shape[0]
    for b in range(lo // block, -(-hi // block)):
        b_lo, b_hi = b * block, min((b + 1) * block, table_rows)
        generator = block_generator(seed, table, b)
        if lo <= b_lo and b_hi <= hi:
            out[b_lo - lo:b_hi - lo].uniform_(-bound, bound, generator=generator)
        else:  # a block cut by the range: draw it whole, keep the overlap
            values = torch.empty(b_hi - b_lo, dim).uniform_(-bound, bound, generator=generator)
            start, stop = max(lo, b_lo), min(hi, b_hi)
            out[start - lo:stop - lo].copy_(values[start - b_lo:stop - b_lo])


class FusedEmbeddingBag(nn.Module):
    def __init__(self, table_sizes: list[int], dim: int, seed: int = 0):
        super().__init__()
        self.table_sizes = [int(n) for n in table_sizes]
        self.dim = dim
        offsets = [0]
        for n in self.table_sizes[:-1]:
            offsets.append(offsets[-1] + n)
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.int64), persistent=False)
        weight = torch.empty(sum(self.table_sizes), dim)
        advise_huge_pages(weight)
        self.weight = nn.Parameter(weight)
        self.reset_parameters(seed)

    @property
    def num_tables(self) -> int:
        return len(self.table_sizes)

    def table(self, t: int) -> torch.Tensor:
        start = int(self.offsets[t])
        return self.weight.data[start:start + self.table_sizes[t]]

    @torch.no_grad()
    def reset_parameters(self, seed: int) -> None:
        for t, n in enumerate(self.table_sizes):
            init_table_rows(self.table(t), seed, t, n, 0)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: (B, T) with one id per table, or (B, T, L) with L ids per table
        (a multi-hot bag, pooled by sum). Returns (B, T, dim)."""
        if ids.dim() not in (2, 3) or ids.shape[1] != self.num_tables:
            raise ValueError(f"expected ids of shape (batch, {self.num_tables}[, hotness]), got {tuple(ids.shape)}")
        shape = (1, -1) if ids.dim() == 2 else (1, -1, 1)
        rows = ids.long() + self.offsets.view(shape)
        out = F.embedding(rows, self.weight, sparse=True)
        return out if ids.dim() == 2 else out.sum(dim=2)
