"""Placement of embedding tables on ranks (model parallelism).

A *shard* is a row range of one table held by one rank; most tables are one
shard. Every shard costs its owner memory (rows x dim x 4 bytes of weights
plus the optimiser's state) and one lookup per sample of the global batch,
and it adds ``batch x dim`` values to every all-to-all. Splitting a table
therefore balances memory but adds traffic, so the planner splits only the
tables larger than a rank's budget.

The budget is ``embedding_memory_per_rank`` when given; otherwise the even
share of the total plus a small slack, which gives balanced memory. Whole
tables go largest first to the rank with the least memory in use (longest
processing time first); tables too small to matter for memory go to the rank
with the fewest lookups. A table larger than the room left anywhere is cut
into row ranges that fill the least-loaded ranks up to the even share.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Default budget over the even share: room for the small tables once the large ones are spread.
SLACK = 0.05
# Tables under this share of the budget are placed to even out lookups, not memory.
SMALL_SHARE = 0.01


class PlanError(ValueError):
    """The tables cannot be placed on the ranks as asked."""


def state_bytes_per_row(optimizer: str, dim: int) -> int:
    """Optimiser state per embedding row, in bytes."""
    per_row = {"sgd": 0, "rowwise_adagrad": 4, "adagrad": 4 * dim}
    if optimizer not in per_row:
        raise PlanError(f"unknown optimizer {optimizer!r}: expected {', '.join(per_row)}")
    return per_row[optimizer]


@dataclass(frozen=True)
class Shard:
    table: int
    lo: int    # first row of the table held
    hi: int    # one past the last row
    rank: int

    @property
    def rows(self) -> int:
        return self.hi - self.lo


@dataclass
class Plan:
    table_sizes: list[int]
    world_size: int
    dim: int
    bytes_per_row: int   # weights plus optimiser state
    budget: int          # bytes per rank the plan was made for
    shards: list[Shard] = field(default_factory=list)

    def shards_of(self, rank: int) -> list[Shard]:
        """The shards a rank holds, in table order (the order of its all-to-all slots)."""
        return sorted((s for s in self.shards if s.rank == rank), key=lambda s: (s.table, s.lo))

    def ordered_shards(self) -> list[Shard]:
        """All shards, rank by rank: the order of the slots after the all-to-all."""
        return [s for r in range(self.world_size) for s in self.shards_of(r)]

    def memory(self, rank: int) -> int:
        return sum(s.rows for s in self.shards_of(rank)) * self.bytes_per_row

    def split_tables(self) -> list[int]:
        counts: dict[int, int] = {}
        for s in self.shards:
            counts[s.table] = counts.get(s.table, 0) + 1
        return sorted(t for t, n in counts.items() if n > 1)

    def check(self) -> None:
        """Every row of every table is held exactly once."""
        for t, n in enumerate(self.table_sizes):
            ranges = sorted((s.lo, s.hi) for s in self.shards if s.table == t)
            covered = 0
            for lo, hi in ranges:
                if lo != covered or hi <= lo:
                    raise AssertionError(f"table {t}: shards {ranges} do not tile rows 0..{n - 1}")
                covered = hi
            if covered != n:
                raise AssertionError(f"table {t}: shards {ranges} do not tile rows 0..{n - 1}")

    def alltoall_bytes(self, batch_size: int) -> int:
        """Bytes one rank sends to the others in one forward all-to-all, at
        the largest shard count of any rank (the backward pass moves as many)."""
        most = max(len(self.shards_of(r)) for r in range(self.world_size))
        return most * batch_size * (self.world_size - 1) // self.world_size * self.dim * 4


def plan_tables(table_sizes: list[int], world_size: int, dim: int, optimizer: str = "sgd",
                budget_bytes: int | None = None) -> Plan:
    if world_size < 1:
        raise PlanError(f"world size must be >= 1, got {world_size}")
    bytes_per_row = dim * 4 + state_bytes_per_row(optimizer, dim)
    total_rows = sum(table_sizes)
    if budget_bytes is None:
        budget_rows = max(1, int(total_rows / world_size * (1 + SLACK)) + 1)
    else:
        budget_rows = budget_bytes // bytes_per_row
        need = total_rows * bytes_per_row
        if budget_rows * world_size < total_rows:
            raise PlanError(f"the embedding tables need {_gib(need)} ({total_rows:,} rows x {bytes_per_row} B) "
                            f"but {world_size} ranks x {_gib(budget_bytes)} (embedding_memory_per_rank) hold "
                            f"only {_gib(budget_bytes * world_size)}; use more ranks or a larger budget")
    # Split tables are cut at the even share, so the ranks they fill end level with the others.
    fill_rows = min(budget_rows, -(-total_rows // world_size))
    plan = Plan(list(table_sizes), world_size, dim, bytes_per_row, budget_rows * bytes_per_row)
    load = [0] * world_size     # rows held
    lookups = [0] * world_size  # shards held
    small = max(1, int(budget_rows * SMALL_SHARE))

    def place(table: int, lo: int, hi: int, rank: int) -> None:
        plan.shards.append(Shard(table, lo, hi, rank))
        load[rank] += hi - lo
        lookups[rank] += 1

    for t in sorted(range(len(table_sizes)), key=lambda t: (-table_sizes[t], t)):
        lo, n = 0, table_sizes[t]
        while lo < n:
            rows = n - lo
            fits = [r for r in range(world_size) if load[r] + rows <= budget_rows]
            if fits:
                key = (lambda r: (lookups[r], load[r], r)) if rows < small else (lambda r: (load[r], lookups[r], r))
                place(t, lo, n, min(fits, key=key))
                break
            r = min(range(world_size), key=lambda r: (load[r], r))
            room = (fill_rows if load[r] < fill_rows else budget_rows) - load[r]
            if room <= 0:
                raise PlanError(f"table {t} ({n:,} rows) does not fit: every rank is full "
                                f"({budget_rows:,} rows each)")
            place(t, lo, lo + room, r)
            lo += room
    plan.check()
    return plan


def _gib(n: float) -> str:
    """Bytes in the largest unit that keeps a number >= 1."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def format_plan(plan: Plan, batch_size: int, dense_parameters: int = 0) -> str:
    """The plan as a table a person reads: shards per rank and memory per rank."""
    lines = [f"Embedding placement for {plan.world_size} rank(s): {len(plan.table_sizes)} tables, "
             f"{sum(plan.table_sizes):,} rows, dim {plan.dim}, {plan.bytes_per_row} B per row "
             f"(weights and optimiser state); budget {_gib(plan.budget)} per rank.",
             f"{'rank':>5} {'shards':>6} {'rows':>14} {'memory':>11}  tables (rows held)"]
    for r in range(plan.world_size):
        held = plan.shards_of(r)
        parts = [f"{s.table}" if s.rows == plan.table_sizes[s.table] else f"{s.table}[{s.lo:,}:{s.hi:,}]"
                 for s in held]
        lines.append(f"{r:>5} {len(held):>6} {sum(s.rows for s in held):>14,} {_gib(plan.memory(r)):>11}  "
                     + ", ".join(parts))
    memory = [plan.memory(r) for r in range(plan.world_size)]
    split = plan.split_tables()
    lines.append(f"memory per rank: max {_gib(max(memory))}, min {_gib(min(memory))}, "
                 f"mean {_gib(sum(memory) / len(memory))} (max/mean {max(memory) / (sum(memory) / len(memory)):.3f})")
    lines.append(f"tables split by rows: {', '.join(map(str, split)) if split else 'none'}; "
                 f"{len(plan.shards)} shards in all")
    if plan.world_size > 1:
        a2a = plan.alltoall_bytes(batch_size)
        lines.append(f"per iteration at batch {batch_size}: all-to-all {_gib(a2a)} sent per rank each way "
                     f"(forward and backward); all-reduce of {dense_parameters:,} MLP parameters "
                     f"({_gib(dense_parameters * 4)}) per rank")
    return "\n".join(lines)
