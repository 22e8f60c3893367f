"""Model-parallel embeddings: each rank holds some shards (row ranges of
tables) and looks them up for the whole global batch; one all-to-all (the
"butterfly shuffle") then hands every rank the pooled vectors of its own
samples, and the backward pass sends the gradients back the same way.
:class:`ShardedEmbeddings` is both, behind the tables interface of the one
DLRM model (reference/embeddings.py), which computes its bottom MLP while
the all-to-all is in flight.

Exactness with one process: a row-split table is looked up on every shard
owner with the ids outside its range giving zero vectors (in a bag: adding
nothing to its sum), and the receiver sums the shards, so each sample gets
exactly its row, or its bag's sum. Gradients travel
unscaled (the loss is already divided by the global batch size), so the
owner applies the same update one process would.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..data.jagged import Ids, JaggedIds
from ..data.loader import split_sizes
from ..embeddings import RowRange, bag_rows, init_rows, per_id, pool_bags
from ..hugepages import advise_huge_pages
from .communicator import Communicator, Work
from .planner import Plan


class ShardedEmbeddings(nn.Module):
    """This rank's shards in one fused weight, and the all-to-all that trades
    their vectors for those of this rank's samples. Input: the ids of the
    global batch for the tables in ``columns``; output: (this rank's samples,
    tables, dim), as one process's tables would give for those samples."""

    # Buffers: they move with the module.
    shard_column: torch.Tensor
    shard_lo: torch.Tensor
    shard_rows: torch.Tensor
    shard_offset: torch.Tensor

    def __init__(self, plan: Plan, comm: Communicator, seed: int):
        super().__init__()
        device = comm.device
        self.table_sizes = list(plan.table_sizes)
        self.plan = plan  # every rank's shards: what a checkpoint records
        self.shards = plan.shards_of(comm.rank)
        self.dim = plan.dim
        self.columns = sorted({s.table for s in self.shards})
        position = {t: i for i, t in enumerate(self.columns)}
        offsets, total = [], 0
        for s in self.shards:
            offsets.append(total)
            total += s.rows
        self.row_offsets = offsets  # where each shard starts in the fused weight
        as_long = lambda values: torch.tensor(values, dtype=torch.int64, device=device)  # noqa: E731
        self.register_buffer("shard_column", as_long([position[s.table] for s in self.shards]), persistent=False)
        self.register_buffer("shard_lo", as_long([s.lo for s in self.shards]), persistent=False)
        self.register_buffer("shard_rows", as_long([s.rows for s in self.shards]), persistent=False)
        self.register_buffer("shard_offset", as_long(offsets), persistent=False)
        self.whole = all(s.rows == self.table_sizes[s.table] for s in self.shards)
        # Where a rank holds two row ranges of one table, the table's bags go to each of them.
        self.shard_positions = [position[s.table] for s in self.shards]
        self.one_shard_per_table = len(self.shards) == len(self.columns)
        # Built where it is used: a GPU's shards never pass through host memory whole.
        weight = torch.empty(total, self.dim, device=device)
        if weight.device.type == "cpu":
            advise_huge_pages(weight)
        init_rows(weight, seed, [RowRange(offset, s.table, self.table_sizes[s.table], s.lo, s.rows)
                                 for s, offset in zip(self.shards, offsets, strict=True)])
        self.weight = nn.Parameter(weight)
        # The GPU's lookup of split tables (no host sync); an attribute so tests run it on the host too.
        self.sync_free = weight.device.type == "cuda"
        self.exchange = ButterflyExchange(comm, plan)

    def start(self, ids: Ids) -> InFlight:
        return self.exchange.start(self.lookup(ids))

    def finish(self, pending: InFlight) -> torch.Tensor:
        return self.exchange.finish(pending)

    def lookup(self, ids: Ids) -> torch.Tensor:
        """This rank's shards for the global batch: (batch, shards, dim)."""
        if isinstance(ids, JaggedIds):
            return self.pool(ids)
        if ids.dim() != 2 or ids.shape[1] != len(self.columns):
            raise ValueError(f"expected ids of shape (batch, {len(self.columns)}), got {tuple(ids.shape)}")
        batch, count = ids.shape[0], len(self.shards)
        local = ids.long().index_select(1, self.shard_column) - self.shard_lo
        if self.whole:
            return F.embedding(local + self.shard_offset, self.weight, sparse=True)
        held = (local >= 0) & (local < self.shard_rows)
        if self.sync_free:
            # nonzero() would wait for the GPU to learn its size: look every id up (the ones held
            # elsewhere at row 0) and zero them, so their gradients are zeros, which change no row.
            found = F.embedding(torch.where(held, local + self.shard_offset, 0), self.weight, sparse=True)
            return torch.where(held.unsqueeze(2), found, 0.0)
        valid = held.view(-1).nonzero().squeeze(1)
        rows = (local + self.shard_offset).view(-1).index_select(0, valid)
        found = F.embedding(rows, self.weight, sparse=True)
        # Only the rows held here enter the (sparse) gradient; the others are zeros the receiver adds.
        return self.weight.new_zeros(batch * count, self.dim).index_put((valid,), found).view(batch, count, self.dim)

    def pool(self, ids: JaggedIds) -> torch.Tensor:
        """Each shard's sums of the ids it holds in every bag of its table: (batch, shards, dim)."""
        if ids.num_tables != len(self.columns):
            raise ValueError(f"expected bags for {len(self.columns)} tables, got {ids.num_tables}")
        if not self.one_shard_per_table:  # a host read of the offsets: only such rare plans pay it
            ids = ids.tables(self.shard_positions)
        if self.whole:
            return pool_bags(self.weight, bag_rows(ids, self.shard_offset), ids)
        local = ids.values - per_id(ids, self.shard_lo)
        held = (local >= 0) & (local < per_id(ids, self.shard_rows))
        rows = local + per_id(ids, self.shard_offset)
        if self.sync_free:  # as above: the ids held elsewhere read row 0, weighted 0 (zero gradients)
            return pool_bags(self.weight, torch.where(held, rows, 0), ids, held.to(self.weight.dtype))
        # The ids held elsewhere leave their bags: each bag's end moves back by those before it.
        dropped = torch.cat([held.new_zeros(1, dtype=torch.int64), torch.cumsum(~held, 0)])
        kept = JaggedIds(rows[held], ids.offsets - dropped[ids.offsets], ids.batch_size)
        return pool_bags(self.weight, kept.values, kept)


class InFlight(NamedTuple):
    """A forward all-to-all begun by :meth:`ButterflyExchange.start`."""
    pooled: torch.Tensor  # what was sent: its gradient is what the backward all-to-all returns
    work: Work
    received: torch.Tensor
    mine: int  # this rank's samples


class _Exchange(torch.autograd.Function):
    """Arranges the values the forward all-to-all delivered; its backward is
    the reverse all-to-all of the gradients to the shards' owners."""

    @staticmethod
    def forward(ctx, pooled, exchange, received, mine):
        ctx.exchange, ctx.batch = exchange, pooled.shape[0]
        return exchange.arrange(received, mine)

    @staticmethod
    def backward(ctx, grad):
        return ctx.exchange.backward(grad.contiguous(), ctx.batch), None, None, None


class ButterflyExchange:
    """The all-to-all between the owners of shards and the owners of samples."""

    def __init__(self, comm: Communicator, plan: Plan):
        self.comm, self.dim = comm, plan.dim
        self.counts = [len(plan.shards_of(r)) for r in range(plan.world_size)]
        self.mine = self.counts[comm.rank]
        ordered = plan.ordered_shards()
        self.num_tables = len(plan.table_sizes)
        # On the device once: a copy from the host in every forward would block the host each step.
        self.shard_table = torch.tensor([s.table for s in ordered], dtype=torch.int64, device=comm.device)
        # Without split tables the shards are a permutation of the tables: gather instead of sum.
        self.permutation = None
        if len(ordered) == self.num_tables:
            self.permutation = torch.argsort(self.shard_table)

    def start(self, pooled: torch.Tensor) -> InFlight:
        """Send every rank its samples' rows of ``pooled`` (global batch, my shards, dim)."""
        sizes = split_sizes(pooled.shape[0], self.comm.world_size)
        mine = sizes[self.comm.rank]
        received = pooled.new_empty(mine * sum(self.counts) * self.dim)
        work = self.comm.all_to_all(received, pooled.detach().contiguous().view(-1),
                                    [mine * c * self.dim for c in self.counts],
                                    [n * self.mine * self.dim for n in sizes], "embedding all-to-all (forward)")
        return InFlight(pooled, work, received, mine)

    def finish(self, pending: InFlight) -> torch.Tensor:
        """Wait for :meth:`start`; the (my samples, tables, dim) input of the interaction."""
        pending.work.wait()
        shards = _Exchange.apply(pending.pooled, self, pending.received, pending.mine)
        if self.permutation is not None:
            return shards.index_select(1, self.permutation)
        out = shards.new_zeros(shards.shape[0], self.num_tables, self.dim)
        return out.index_add(1, self.shard_table, shards)

    def arrange(self, received: torch.Tensor, mine: int) -> torch.Tensor:
        """Flat blocks (rank r's block: my samples x r's shards x dim) -> (my samples, all shards, dim)."""
        blocks, at = [], 0
        for c in self.counts:
            blocks.append(received[at:at + mine * c * self.dim].view(mine, c, self.dim))
            at += mine * c * self.dim
        return torch.cat(blocks, dim=1)

    def backward(self, grad: torch.Tensor, batch: int) -> torch.Tensor:
        """Gradients of my samples for every shard -> gradients of the global batch for my shards."""
        sizes = split_sizes(batch, self.comm.world_size)
        mine = sizes[self.comm.rank]
        send = torch.cat([part.reshape(-1) for part in torch.split(grad, self.counts, dim=1)])
        out = grad.new_empty(batch * self.mine * self.dim)
        self.comm.all_to_all(out, send, [n * self.mine * self.dim for n in sizes],
                             [mine * c * self.dim for c in self.counts], "embedding all-to-all (backward)").wait()
        return out.view(batch, self.mine, self.dim)
