"""Per-column dictionaries from categorical values to contiguous ids, numbered
in order of first appearance (the original reference's rule: day 0's first
line first). Blocks must be mapped in file order.

Each column starts as an open-addressing hash table (linear probing, at most
half full, 12 bytes a slot) sized to the values seen so far, so a column with
a handful of values costs kilobytes. With ``max_ind_range > 0`` a column
whose table would outgrow a dense array of ``max_ind_range`` int32 (id + 1,
0: unseen) becomes that array: one random access per lookup, and at most
26 x 40M x 4 B = 4.2 GB for Criteo 1TB whatever the number of rows. Without
it (Kaggle's raw 32-bit values) columns stay hash tables, sized by their
distinct values.

Lookups run in compiled loops (numba): one pass per column in row order, an
unseen value taking the next id as it is met, which is exactly the
first-appearance rule with no sorting. Columns are independent, so with
``threads > 1`` groups of columns are mapped at once (the loops let go of the
GIL); ids do not depend on it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from ..hugepages import advise_huge_pages
from ..malloc import release_freed_memory

_FIRST_CAPACITY = 1 << 10
_SLOT_BYTES = 12            # int64 key + int32 id
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: the top bits of value * 2^64/phi


class _Column:
    def __init__(self, max_ind_range: int):
        self.max_ind_range = max_ind_range
        self.size = 0
        self.keys = np.zeros(_FIRST_CAPACITY, dtype=np.int64)
        self.ids = np.full(_FIRST_CAPACITY, -1, dtype=np.int32)
        self.dense: np.ndarray | None = None

    def map(self, values: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Write the ids of ``values`` to ``out``; return the unseen values in id order."""
        first = self.size
        new = np.empty(values.size, dtype=np.int64)
        start = 0
        while start < values.size:
            if self.dense is not None:
                start, self.size = _map_dense(values, start, self.dense, self.size, first, out, new)
            else:
                bits = self.keys.size.bit_length() - 1
                start, self.size = _map_hashed(values, start, self.keys, self.ids, bits, self.size,
                                               self.keys.size // 2, self.max_ind_range, first, out, new)
            if start < 0:
                bad = values[-start - 1]
                raise ValueError(f"values must lie in [0, {self.max_ind_range}), got {bad}")
            if start < values.size:
                self._grow()
        return new[:self.size - first]

    def _grow(self) -> None:
        """Double the hash table, or switch to the dense array once it is no larger."""
        capacity = 2 * self.keys.size
        if self.max_ind_range > 0 and capacity * _SLOT_BYTES >= self.max_ind_range * 4:
            self.dense = np.zeros(self.max_ind_range, dtype=np.int32)
            advise_huge_pages(self.dense)  # random first touches: 2 MB pages fault 512x less often
            used = self.ids >= 0
            self.dense[self.keys[used]] = self.ids[used] + 1
            # Fresh empty arrays (not views) free the hash table: the dense array holds the ids now.
            self.keys, self.ids = np.empty(0, np.int64), np.empty(0, np.int32)
            release_freed_memory()  # the outgrown tables, which the heap would keep (reference/malloc.py)
            return
        keys, ids = np.zeros(capacity, dtype=np.int64), np.full(capacity, -1, dtype=np.int32)
        _rehash(self.keys, self.ids, keys, ids, capacity.bit_length() - 1)
        self.keys, self.ids = keys, ids

    @property
    def nbytes(self) -> int:
        return self.dense.nbytes if self.dense is not None else self.keys.nbytes + self.ids.nbytes


@numba.njit(nogil=True, cache=True)
def _slot(value, bits):  # pragma: no cover (compiled)
    return np.int64((np.uint64(value) * _GOLDEN) >> np.uint64(64 - bits))


@numba.njit(nogil=True, cache=True)
def _map_hashed(values, start, keys, ids, bits, size, limit, max_ind_range, first, out,
                new):  # pragma: no cover (compiled)
    """Map values[start:] until done or until one more id would pass ``limit``
    (the table's half); returns (where it stopped, ids given), or
    (-(i + 1), size) at a value outside [0, max_ind_range)."""
    mask = keys.size - 1
    for i in range(start, values.size):
        value = values[i]
        if max_ind_range > 0 and (value < 0 or value >= max_ind_range):
            return -(i + 1), size
        slot = _slot(value, bits)
        while ids[slot] >= 0 and keys[slot] != value:
            slot = (slot + 1) & mask
        if ids[slot] < 0:
            if size >= limit:
                return i, size
            keys[slot] = value
            ids[slot] = size
            new[size - first] = value
            size += 1
        out[i] = ids[slot]
    return values.size, size


@numba.njit(nogil=True, cache=True)
def _map_dense(values, start, dense, size, first, out, new):  # pragma: no cover (compiled)
    """As _map_hashed, on the dense array of id + 1."""
    for i in range(start, values.size):
        value = values[i]
        if value < 0 or value >= dense.size:
            return -(i + 1), size
        known = dense[value]
        if known == 0:
            size += 1
            known = size
            dense[value] = known
            new[size - 1 - first] = value
        out[i] = known - 1
    return values.size, size


@numba.njit(nogil=True, cache=True)
def _rehash(keys, ids, new_keys, new_ids, bits):  # pragma: no cover (compiled)
    mask = new_keys.size - 1
    for j in range(keys.size):
        if ids[j] >= 0:
            slot = _slot(keys[j], bits)
            while new_ids[slot] >= 0:
                slot = (slot + 1) & mask
            new_keys[slot] = keys[j]
            new_ids[slot] = ids[j]


class Vocabulary:
    def __init__(self, num_columns: int, max_ind_range: int, threads: int = 1):
        if max_ind_range < 0:
            raise ValueError(f"max_ind_range must be >= 0, got {max_ind_range}")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.max_ind_range = max_ind_range
        self._columns = [_Column(max_ind_range) for _ in range(num_columns)]
        # Values added since the last take_additions(), in id order, by block: a day's worth at most.
        self._added: list[list[np.ndarray]] = [[] for _ in range(num_columns)]
        # Column c goes to group c mod threads: the large columns of Criteo spread over the groups.
        self._groups = [list(range(g, num_columns, threads)) for g in range(min(threads, num_columns))]
        self._pool = ThreadPoolExecutor(len(self._groups)) if len(self._groups) > 1 else None

    @property
    def num_columns(self) -> int:
        return len(self._columns)

    @property
    def sizes(self) -> list[int]:
        return [column.size for column in self._columns]

    @property
    def nbytes(self) -> int:
        """Memory held by the dictionaries (what peak RSS is made of, besides one block)."""
        return sum(column.nbytes for column in self._columns)

    def map(self, values: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Ids for a block of values (n, num_columns), adding the unseen ones;
        written to ``out`` (n, num_columns) int32 when given (a view into the
        output records, say)."""
        if values.ndim != 2 or values.shape[1] != self.num_columns:
            raise ValueError(f"expected (n, {self.num_columns}) values, got {values.shape}")
        if out is None:
            out = np.empty(values.shape, dtype=np.int32)
        if out.shape != values.shape or out.dtype != np.int32:
            raise ValueError(f"out must be int32 of shape {values.shape}, got {out.dtype} {out.shape}")
        values = values.astype(np.int64, copy=False)

        def map_group(columns: list[int]) -> list[np.ndarray]:
            return [self._columns[c].map(values[:, c], out[:, c]) for c in columns]
        if self._pool is None:
            results = [map_group(self._groups[0])] if self._groups else []
        else:
            results = list(self._pool.map(map_group, self._groups))  # raises what a thread raised
        for columns, news in zip(self._groups, results, strict=True):
            for c, new in zip(columns, news, strict=True):
                if new.size:
                    self._added[c].append(new)
        return out

    def take_additions(self) -> list[np.ndarray]:
        """The values added since the last call, per column in id order (a
        day's new entries, saved for resume), and forget them."""
        additions = [np.concatenate(blocks) if blocks else np.zeros(0, np.int64) for blocks in self._added]
        self._added = [[] for _ in self._columns]
        return additions

    def extend(self, additions: list[np.ndarray]) -> None:
        """Replay additions saved from :meth:`take_additions` (ids follow in order)."""
        for c, values in enumerate(additions):
            values = np.asarray(values, dtype=np.int64)
            if not values.size:
                continue
            new = self._columns[c].map(values, np.empty(values.size, dtype=np.int32))
            if new.size != values.size:
                raise ValueError(f"column {c}: saved additions repeat {values.size - new.size} known values")
