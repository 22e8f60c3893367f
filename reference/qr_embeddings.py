"""Quotient-remainder embeddings (Shi et al., "Compositional Embeddings Using
Complementary Partitions for Memory-Efficient Recommendation Systems", 2019;
the original's tricks/qr_embedding_bag.py).

A table of ``n`` rows above ``threshold`` becomes two: a quotient table of
ceil(n / c) rows and a remainder table of c rows (c = ``collisions``). Id i
looks up q[i // c] and r[i % c], and the two vectors are combined:

- ``mult``: q * r (element-wise), each of width ``dim``;
- ``add``: q + r, each of width ``dim``;
- ``concat``: [q, r], each of width ``dim / 2``, so the result has the width
  of every other table and of the bottom MLP. (The original gives each half
  the full ``dim`` and asks the bottom MLP for 2 x dim, which leaves the
  tables below the threshold at the wrong width for the interaction.)

Tables at or below the threshold stay ordinary tables. With several ids per
bag, the quotient rows and the remainder rows are pooled (summed) separately
and then combined, as the original's two EmbeddingBags do.

Initialisation: both tables uniform in (-b, b), each from its own seeded
stream, with b chosen so that the combined vector of an id has the variance of
an ordinary table's row, U(-sqrt(1/n), sqrt(1/n)) for the table's n rows:
b = sqrt(1/n) for concat, sqrt(1/(2n)) for add, (3/n) ** 0.25 for mult. (The
original calls ``nn.init.uniform_(w, sqrt(1/n))``, which is uniform in
(sqrt(1/n), 1): the bound passed as the lower end, every weight positive; with
the dot interaction at dimension 128 that starts add and concat at losses
several times the ordinary tables'.)

All quotient tables are stacked into one weight, all remainder tables into
another and the ordinary tables into a third, so a batch is three gathers,
each with one sparse gradient that the optimisers update row by row.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import LocalTables, RowRange, init_rows

OPERATIONS = ("mult", "add", "concat")


def part_bound(operation: str, rows: int) -> float:
    """The bound b of U(-b, b) for both parts of a table of ``rows`` rows: var(q op r)
    equals var(U(-sqrt(1/rows), sqrt(1/rows))) = 1 / (3 rows), with var(U(-b, b)) = b**2 / 3."""
    if operation == "mult":
        return (3.0 / rows) ** 0.25   # (b**2 / 3) ** 2 = 1 / (3 rows)
    if operation == "add":
        return math.sqrt(1.0 / (2 * rows))  # 2 b**2 / 3 = 1 / (3 rows)
    return math.sqrt(1.0 / rows)


def _offsets(sizes: list[int]) -> list[int]:
    out, total = [], 0
    for n in sizes:
        out.append(total)
        total += n
    return out


class QREmbeddingBag(LocalTables):
    # Buffers: they move with the module.
    plain_columns: torch.Tensor
    plain_offsets: torch.Tensor
    qr_columns: torch.Tensor
    qr_offsets_q: torch.Tensor
    qr_offsets_r: torch.Tensor
    order: torch.Tensor

    def __init__(self, table_sizes: list[int], dim: int, threshold: int, collisions: int, operation: str = "mult",
                 seed: int = 0, device=None):
        super().__init__()
        if operation not in OPERATIONS:
            raise ValueError(f"operation must be one of {', '.join(OPERATIONS)}, got {operation!r}")
        if collisions < 1:
            raise ValueError(f"collisions must be >= 1, got {collisions}")
        if operation == "concat" and dim % 2:
            raise ValueError(f"concat needs an even dim (two halves), got {dim}")
        self.table_sizes = [int(n) for n in table_sizes]
        self.dim, self.threshold, self.collisions, self.operation = dim, threshold, collisions, operation
        self.layout = {"kind": "qr", "qr_threshold": threshold, "qr_collisions": collisions,
                       "qr_operation": operation}
        self.part_dim = dim // 2 if operation == "concat" else dim
        self.plain = [t for t, n in enumerate(self.table_sizes) if n <= threshold]
        self.qr = [t for t, n in enumerate(self.table_sizes) if n > threshold]
        plain_sizes = [self.table_sizes[t] for t in self.plain]
        self.quotient_rows = [math.ceil(self.table_sizes[t] / collisions) for t in self.qr]
        remainder_rows = [collisions] * len(self.qr)
        as_long = lambda values: torch.tensor(values, dtype=torch.int64, device=device)  # noqa: E731
        self.register_buffer("plain_columns", as_long(self.plain), persistent=False)
        self.register_buffer("plain_offsets", as_long(_offsets(plain_sizes)), persistent=False)
        self.register_buffer("qr_columns", as_long(self.qr), persistent=False)
        self.register_buffer("qr_offsets_q", as_long(_offsets(self.quotient_rows)), persistent=False)
        self.register_buffer("qr_offsets_r", as_long(_offsets(remainder_rows)), persistent=False)
        # The outputs come as [plain tables..., QR tables...]; ``order`` puts them back in table order.
        position = {t: i for i, t in enumerate(self.plain + self.qr)}
        self.register_buffer("order", as_long([position[t] for t in range(len(self.table_sizes))]),
                             persistent=False)
        num = len(self.table_sizes)
        self.plain_weight = nn.Parameter(torch.empty(sum(plain_sizes), dim, device=device))
        self.quotient = nn.Parameter(torch.empty(sum(self.quotient_rows), self.part_dim, device=device))
        self.remainder = nn.Parameter(torch.empty(sum(remainder_rows), self.part_dim, device=device))
        # Streams: an ordinary table t draws as table t; its quotient as t, its remainder as num + t.
        init_rows(self.plain_weight.data, seed, [RowRange(o, t, n, 0, n) for t, n, o in
                                                 zip(self.plain, plain_sizes, _offsets(plain_sizes), strict=True)])
        init_rows(self.quotient.data, seed, [RowRange(o, t, n, 0, n) for t, n, o in
                                             zip(self.qr, self.quotient_rows, _offsets(self.quotient_rows),
                                                 strict=True)])
        init_rows(self.remainder.data, seed, [RowRange(o, num + t, n, 0, n) for t, n, o in
                                              zip(self.qr, remainder_rows, _offsets(remainder_rows), strict=True)])
        with torch.no_grad():  # init_rows drew U(+-sqrt(1/rows)) for each part's own rows: rescale to U(+-b)
            for t in self.qr:
                b = part_bound(operation, self.table_sizes[t])
                self.quotient_table(t).mul_(b * math.sqrt(self.quotient_rows[self.qr.index(t)]))
                self.remainder_table(t).mul_(b * math.sqrt(collisions))

    @property
    def num_tables(self) -> int:
        return len(self.table_sizes)

    def rows(self) -> int:
        """Embedding rows held (all three weights), against sum(table_sizes) for ordinary tables."""
        return self.plain_weight.shape[0] + self.quotient.shape[0] + self.remainder.shape[0]

    def plain_table(self, t: int) -> torch.Tensor:
        i = self.plain.index(t)
        start = int(self.plain_offsets[i])
        return self.plain_weight.data[start:start + self.table_sizes[t]]

    def quotient_table(self, t: int) -> torch.Tensor:
        i = self.qr.index(t)
        start = int(self.qr_offsets_q[i])
        return self.quotient.data[start:start + self.quotient_rows[i]]

    def remainder_table(self, t: int) -> torch.Tensor:
        i = self.qr.index(t)
        start = int(self.qr_offsets_r[i])
        return self.remainder.data[start:start + self.collisions]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: (B, T) with one id per table, or (B, T, L) with L ids per table
        (pooled by sum). Returns (B, T, dim)."""
        if ids.dim() not in (2, 3) or ids.shape[1] != self.num_tables:
            raise ValueError(f"expected ids of shape (batch, {self.num_tables}[, hotness]), got {tuple(ids.shape)}")
        ids = ids.long()
        shape = (1, -1) if ids.dim() == 2 else (1, -1, 1)

        def lookup(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
            found = F.embedding(rows, weight, sparse=True)
            return found if ids.dim() == 2 else found.sum(dim=2)

        parts = []
        if self.plain:
            plain_ids = ids.index_select(1, self.plain_columns)
            parts.append(lookup(plain_ids + self.plain_offsets.view(shape), self.plain_weight))
        if self.qr:
            qr_ids = ids.index_select(1, self.qr_columns)
            q = lookup(torch.div(qr_ids, self.collisions, rounding_mode="floor")
                       + self.qr_offsets_q.view(shape), self.quotient)
            r = lookup(torch.remainder(qr_ids, self.collisions) + self.qr_offsets_r.view(shape),
                       self.remainder)
            if self.operation == "mult":
                parts.append(q * r)
            elif self.operation == "add":
                parts.append(q + r)
            else:
                parts.append(torch.cat([q, r], dim=2))
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return out if not (self.plain and self.qr) else out.index_select(1, self.order)
