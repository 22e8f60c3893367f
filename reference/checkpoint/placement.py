"""Where this process's table rows are: the row ranges of tables its
embeddings module holds, and where each sits in its one fused weight.

A checkpoint stores rows by (table, row), never by a process's weight
layout, so it loads into any placement: another world size, another plan.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..distributed.sharded import ShardedEmbeddings
from ..embeddings import EmbeddingTables, FusedEmbeddingBag

TABLE_KEY = "embeddings.weight"  # the fused weight of the ordinary tables (or of one rank's shards)


@dataclass(frozen=True)
class Slot:
    """Rows ``lo .. hi - 1`` of table ``table``, at row ``offset`` of the fused weight."""
    table: int
    lo: int
    hi: int
    offset: int

    @property
    def rows(self) -> int:
        return self.hi - self.lo


def slots_of(embeddings: EmbeddingTables) -> list[Slot] | None:
    """The rows this process holds; None for tables not stored by rows (QR and
    MD tables, one process only: saved whole with the dense weights)."""
    if isinstance(embeddings, ShardedEmbeddings):
        return [Slot(s.table, s.lo, s.hi, offset) for s, offset in zip(embeddings.shards, embeddings.row_offsets,
                                                                        strict=True)]
    if isinstance(embeddings, FusedEmbeddingBag):
        slots, offset = [], 0
        for t, n in enumerate(embeddings.table_sizes):
            slots.append(Slot(t, 0, n, offset))
            offset += n
        return slots
    return None


def table_weight(embeddings: EmbeddingTables) -> torch.Tensor:
    """The fused weight of tables stored by rows (see :func:`slots_of`)."""
    assert isinstance(embeddings, (ShardedEmbeddings, FusedEmbeddingBag)), "tables stored by rows"
    return embeddings.weight.data


def plan_of(embeddings: EmbeddingTables) -> list[list[int]]:
    """Every rank's shards, as ``[table, lo, hi, rank]``: the placement a checkpoint was saved with."""
    if isinstance(embeddings, ShardedEmbeddings):
        return [[s.table, s.lo, s.hi, s.rank] for s in embeddings.plan.shards]
    return [[s.table, s.lo, s.hi, 0] for s in slots_of(embeddings) or []]
