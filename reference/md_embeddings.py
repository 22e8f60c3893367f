"""Mixed-dimension embeddings (Ginart et al., "Mixed Dimension Embeddings with
Application to Memory-Efficient Recommendation Systems", 2019; the original's
tricks/md_embedding_bag.py).

Table t gets its own width d_t from the popularity rule of :func:`md_solver`
(d_t proportional to n_t ** -alpha, the smallest table at ``d0``), and a linear
projection without bias (d_t -> ``dim``) brings its vectors to the width of
the interaction, as the original's ``PrEmbeddingBag`` does. A table whose
width is ``dim`` has no projection. Tables at or below ``threshold`` rows keep
the full ``dim`` (the original's ``md_threshold``); widths above ``dim`` (power-of-2
rounding of a ``dim`` that is not one) are capped at ``dim``.

Initialisation as in the original: rows uniform in (-sqrt(1/n), sqrt(1/n)) for
a table of n rows, projections Xavier-uniform (bound sqrt(6 / (d_t + dim))),
each from its own seeded stream.

Tables of one width share one stacked weight (one gather, one sparse gradient)
and one stacked projection (a batched matmul: a dense parameter, updated like
the MLPs' weights). The projection runs in fp32 also under bf16 autocast, as
the tables' lookups do.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import LocalTables, RowRange, init_rows

_PROJECTION_STREAM = 7_000_003  # a seed word of the projections' generators, apart from the tables' streams


def md_solver(n: torch.Tensor, alpha: float, d0: float | None = None, B: float | None = None,
              round_dim: bool = True, k: torch.Tensor | None = None) -> torch.Tensor:
    """Per-table dimensions, exactly as the original's ``md_solver``: sort the
    row counts (divided by ``k``, the average queries per inference, default 1),
    apply the alpha-power rule, optionally round to powers of 2, undo the sort.
    With ``d0`` the smallest table gets ``d0`` and table i gets
    round(max(1, d0 * n_0**alpha * n_i**-alpha)); with a parameter budget ``B``
    instead, lambda = B / sum(n ** (1 - alpha)). Computed in float32 as the original is."""
    n, indices = torch.sort(n)
    k = k[indices] if k is not None else torch.ones(len(n))
    d = alpha_power_rule(n.type(torch.float) / k, alpha, d0=d0, B=B)
    if round_dim:
        d = pow_2_round(d)
    undo_sort = [0] * len(indices)
    for i, v in enumerate(indices.tolist()):
        undo_sort[v] = i
    return d[undo_sort]


def alpha_power_rule(n: torch.Tensor, alpha: float, d0: float | None = None, B: float | None = None) -> torch.Tensor:
    if d0 is not None:
        lamb = d0 * (n[0].type(torch.float) ** alpha)
    elif B is not None:
        lamb = B / torch.sum(n.type(torch.float) ** (1 - alpha))
    else:
        raise ValueError("Must specify either d0 or B")
    d = torch.ones(len(n)) * lamb * (n.type(torch.float) ** (-alpha))
    for i in range(len(d)):
        if i == 0 and d0 is not None:
            d[i] = d0
        else:
            d[i] = 1 if d[i] < 1 else d[i]
    return torch.round(d).type(torch.long)


def pow_2_round(dims: torch.Tensor) -> torch.Tensor:
    return 2 ** torch.round(torch.log2(dims.type(torch.float)))


def table_dims(table_sizes: list[int], dim: int, alpha: float, threshold: int = 0,
               round_dims: bool = False) -> list[int]:
    """Each table's width for a run: md_solver's with d0 = ``dim`` (over all tables,
    as the original solves it), ``dim`` for tables of at most ``threshold`` rows,
    at most ``dim``."""
    solved = md_solver(torch.tensor(table_sizes), alpha, d0=dim, round_dim=round_dims).tolist()
    return [dim if n <= threshold else min(dim, int(d)) for n, d in zip(table_sizes, solved, strict=True)]


def _projection_generator(seed: int, table: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, _PROJECTION_STREAM, table]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) >> 1)


class _Width(nn.Module):
    """The tables of one width: one stacked weight, and their projections (T_w, d, dim) when d < dim."""

    offsets: torch.Tensor
    columns: torch.Tensor

    def __init__(self, tables: list[int], sizes: list[int], width: int, dim: int, seed: int, device=None):
        super().__init__()
        self.tables, self.sizes, self.width = tables, sizes, width
        offsets = [0]
        for n in sizes[:-1]:
            offsets.append(offsets[-1] + n)
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.int64, device=device), persistent=False)
        self.register_buffer("columns", torch.tensor(tables, dtype=torch.int64, device=device), persistent=False)
        self.weight = nn.Parameter(torch.empty(sum(sizes), width, device=device))
        init_rows(self.weight.data, seed, [RowRange(o, t, n, 0, n) for t, n, o in
                                           zip(tables, sizes, offsets, strict=True)])
        self.projection: nn.Parameter | None = None
        if width < dim:
            bound = math.sqrt(6.0 / (width + dim))
            projection = torch.stack([torch.empty(width, dim).uniform_(-bound, bound,
                                                                       generator=_projection_generator(seed, t))
                                      for t in tables])
            self.projection = nn.Parameter(projection.to(device))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mine = ids.index_select(1, self.columns)
        shape = (1, -1) if ids.dim() == 2 else (1, -1, 1)
        found = F.embedding(mine + self.offsets.view(shape), self.weight, sparse=True)
        pooled = found if ids.dim() == 2 else found.sum(dim=2)            # (B, T_w, d)
        if self.projection is None:
            return pooled
        return torch.bmm(pooled.transpose(0, 1), self.projection).transpose(0, 1)  # (B, T_w, dim)


class MDEmbeddingBag(LocalTables):
    order: torch.Tensor

    def __init__(self, table_sizes: list[int], dim: int, dims: list[int], seed: int = 0, device=None,
                 layout: dict | None = None):
        super().__init__()
        if len(dims) != len(table_sizes) or any(not 1 <= d <= dim for d in dims):
            raise ValueError(f"dims must give each of the {len(table_sizes)} tables a width in [1, {dim}], got {dims}")
        self.table_sizes = [int(n) for n in table_sizes]
        self.dim, self.dims = dim, list(dims)
        self.layout = layout if layout is not None else {"kind": "md", "dims": self.dims}
        widths = sorted(set(dims), reverse=True)
        self.widths = nn.ModuleList()
        arranged: list[int] = []
        for w in widths:
            tables = [t for t, d in enumerate(dims) if d == w]
            self.widths.append(_Width(tables, [self.table_sizes[t] for t in tables], w, dim, seed, device))
            arranged += tables
        position = {t: i for i, t in enumerate(arranged)}
        self.register_buffer("order", torch.tensor([position[t] for t in range(len(dims))], dtype=torch.int64,
                                                   device=device), persistent=False)

    @property
    def num_tables(self) -> int:
        return len(self.table_sizes)

    def _find(self, t: int) -> tuple[_Width, int]:
        for group in self.widths:
            assert isinstance(group, _Width)
            if t in group.tables:
                return group, group.tables.index(t)
        raise IndexError(f"no table {t}")

    def table(self, t: int) -> torch.Tensor:
        """Table t's rows, (n_t, d_t)."""
        group, i = self._find(t)
        start = int(group.offsets[i])
        return group.weight.data[start:start + self.table_sizes[t]]

    def projection(self, t: int) -> torch.Tensor | None:
        """Table t's projection, (d_t, dim); None for a table of the full width."""
        group, i = self._find(t)
        return None if group.projection is None else group.projection.data[i]

    def rows_times_width(self) -> int:
        """Embedding values held (tables and projections), against sum(table_sizes) * dim."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: (B, T) or (B, T, L) (pooled by sum, then projected). Returns (B, T, dim)."""
        if ids.dim() not in (2, 3) or ids.shape[1] != self.num_tables:
            raise ValueError(f"expected ids of shape (batch, {self.num_tables}[, hotness]), got {tuple(ids.shape)}")
        ids = ids.long()
        with torch.autocast(ids.device.type, enabled=False):
            parts = [group(ids) for group in self.widths]
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return out if len(parts) == 1 else out.index_select(1, self.order)
