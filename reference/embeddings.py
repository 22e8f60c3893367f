"""All embedding tables as one fused table: one lookup for every table at once.

The tables are stacked row-wise into a single weight of shape
``(sum(table_sizes), dim)``; table ``t`` owns the rows ``offsets[t] ..
offsets[t] + table_sizes[t] - 1``. A batch of ids ``(B, T)`` becomes one
gather instead of ``T`` Python-level calls, and bags of ids (jagged, see
reference/data/jagged.py) one ``embedding_bag``; either way the gradient is
one sparse tensor, so the optimiser touches only the rows present in the batch.

With the native kernels (``sparse_update_kernel=native``, CPU tables) the
lookup of one id per table is one compiled gather, written where its consumer
wants it (:class:`LookupOutput`: in the consumer's compute dtype, behind
vectors the consumer stacks in front), and its backward applies the
optimiser's update to the rows from the gradient where it arrives
(optim.backward_row_update) instead of building a sparse gradient: no cast
or copy of the looked-up vectors or of their gradient on the way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .data.jagged import Ids, JaggedIds
from .hugepages import advise_huge_pages
from .row_kernels import VECTOR_DTYPES, NativeRowKernels


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


@dataclass(frozen=True)
class LookupOutput:
    """Where the consumer of a lookup wants its (B, T, D) vectors: ``head``
    vectors left free in front of each sample's T (the dot interaction stacks
    the bottom MLP's output there, so the lookup's vectors need no copy), and
    in autocast's dtype when autocast is on (``compute_dtype``: for a consumer
    that casts them anyway, so the values are the same)."""
    head: int = 0
    compute_dtype: bool = False


def stacked(vectors: torch.Tensor, head: int) -> torch.Tensor | None:
    """The (B, head + T, D) stack behind ``vectors`` when they are its slice
    ``[:, head:]`` and their storage holds exactly that stack, as the native
    lookup's output with ``LookupOutput(head)`` does; else None. Only the
    layout is checked: a consumer writes into the head only when it asked the
    lookup for one (DotInteraction.stack_lookup)."""
    if head <= 0 or vectors.dim() != 3:
        return None
    batch, tables, dim = vectors.shape
    n = head + tables
    whole = vectors.untyped_storage().nbytes() == batch * n * dim * vectors.element_size()
    if not (whole and vectors.stride() == (n * dim, dim, 1) and vectors.storage_offset() == head * dim):
        return None
    return vectors.as_strided((batch, n, dim), (n * dim, dim, 1), 0)


class _NativeLookup(torch.autograd.Function):
    """One id per table: the rows ``rows`` (B, T) of ``weight`` gathered by the
    native kernel into ``stack[:, head:]`` of a new (B, head + T, D) stack of
    ``dtype``. The backward applies ``update(rows, grad)`` (the optimiser's
    step of the rows, :func:`reference.optim.backward_row_update`) and gives
    ``weight`` no gradient, so each backward pass through it is one step of
    the tables (the Trainer makes one a step; not twice differentiable);
    without ``update`` it returns the sparse gradient
    ``F.embedding(..., sparse=True)`` would."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, rows: torch.Tensor, kernels: NativeRowKernels, dtype: torch.dtype,
                head: int, update: Callable | None) -> torch.Tensor:
        batch, tables = rows.shape
        stack = torch.empty(batch, head + tables, weight.shape[1], dtype=dtype)
        ctx.save_for_backward(rows)
        ctx.update, ctx.table_shape, ctx.table_dtype = update, weight.shape, weight.dtype
        return kernels.gather(weight, rows, stack[:, head:])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (rows,) = ctx.saved_tensors
        if ctx.update is not None:
            ctx.update(rows, grad)
            return None, None, None, None, None, None
        values = grad.reshape(-1, ctx.table_shape[1]).to(ctx.table_dtype)
        weight_grad = torch.sparse_coo_tensor(rows.view(1, -1), values, ctx.table_shape, check_invariants=False)
        return weight_grad, None, None, None, None, None


class FusedEmbeddingBag(LocalTables):
    offsets: torch.Tensor  # a buffer: moves with the module
    lookup_output: LookupOutput = LookupOutput()  # what its consumer wants (set by the model)
    kernels: NativeRowKernels | None = None  # the native lookup's, when used
    update: Callable | None = None  # the optimiser's row update, applied by the native lookup's backward

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

    def use_native_kernels(self, kernels: NativeRowKernels | None, update: Callable | None = None) -> None:
        """Look up one id per table with the native gather (CPU tables; None:
        torch's lookup again); with ``update`` (optim.backward_row_update), step
        the rows in the backward pass."""
        if kernels is not None and self.weight.device.type != "cpu":
            raise ValueError(f"the native lookup reads CPU tables; these are on {self.weight.device}")
        if kernels is None and update is not None:
            raise ValueError("the tables are stepped in the backward pass of the native lookup only")
        self.kernels, self.update = kernels, update

    def lookup_dtype(self) -> torch.dtype:
        if self.lookup_output.compute_dtype and torch.is_autocast_enabled("cpu"):
            dtype = torch.get_autocast_dtype("cpu")
            if dtype in VECTOR_DTYPES:
                return dtype
        return self.weight.dtype

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
        if self.kernels is not None and ids.dim() == 2:
            update = self.update if torch.is_grad_enabled() and self.weight.requires_grad else None
            return _NativeLookup.apply(self.weight, rows, self.kernels, self.lookup_dtype(), self.lookup_output.head,
                                       update)
        out = F.embedding(rows, self.weight, sparse=True)
        return out if ids.dim() == 2 else out.sum(dim=2)
