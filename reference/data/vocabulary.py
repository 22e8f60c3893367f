"""Per-column dictionaries from categorical values to contiguous ids, numbered
in order of first appearance (the original reference's rule: day 0's first
line first). Blocks must be mapped in file order; within a block the order is
found with ``np.unique(return_index=True)``, so there is no Python loop per row.

With ``max_ind_range > 0`` each column is a dense array of that many int32
holding id + 1 (0: unseen), allocated zeroed so the operating system maps
pages only as values land in them: at most 26 x 40M x 4 B = 4.2 GB for
Criteo 1TB, whatever the number of rows.
Without it (raw 32-bit values) each column keeps its known values sorted and
looks them up with ``searchsorted``.
"""

from __future__ import annotations

import numpy as np

from ..hugepages import advise_huge_pages


class Vocabulary:
    def __init__(self, num_columns: int, max_ind_range: int):
        self.max_ind_range = max_ind_range
        self.order: list[list[np.ndarray]] = [[] for _ in range(num_columns)]  # values in id order, by block
        self.sizes = [0] * num_columns
        if max_ind_range > 0:
            self._dense = [np.zeros(max_ind_range, dtype=np.int32) for _ in range(num_columns)]
            for column in self._dense:  # random first touches: 2 MB pages fault 512x less often
                advise_huge_pages(column)
        else:
            self._keys = [np.zeros(0, dtype=np.int64) for _ in range(num_columns)]
            self._ids = [np.zeros(0, dtype=np.int32) for _ in range(num_columns)]

    @property
    def num_columns(self) -> int:
        return len(self.sizes)

    def _lookup(self, c: int, values: np.ndarray) -> np.ndarray:
        if self.max_ind_range > 0:
            return self._dense[c][values] - 1
        keys = self._keys[c]
        if keys.size == 0:
            return np.full(values.shape, -1, dtype=np.int32)
        pos = np.minimum(np.searchsorted(keys, values), keys.size - 1)
        return np.where(keys[pos] == values, self._ids[c][pos], -1).astype(np.int32)

    def _add(self, c: int, new_values: np.ndarray) -> None:
        """Give ids to values not seen before, in the order given."""
        ids = np.arange(self.sizes[c], self.sizes[c] + new_values.size, dtype=np.int32)
        if self.max_ind_range > 0:
            self._dense[c][new_values] = ids + 1
        else:
            keys = np.concatenate([self._keys[c], new_values])
            all_ids = np.concatenate([self._ids[c], ids])
            order = np.argsort(keys, kind="stable")
            self._keys[c], self._ids[c] = keys[order], all_ids[order]
        self.sizes[c] += new_values.size
        self.order[c].append(new_values)

    def map(self, values: np.ndarray) -> np.ndarray:
        """Ids for a block of values (n, num_columns), adding the unseen ones."""
        if values.ndim != 2 or values.shape[1] != self.num_columns:
            raise ValueError(f"expected (n, {self.num_columns}) values, got {values.shape}")
        if self.max_ind_range > 0 and values.size and (values.min() < 0 or values.max() >= self.max_ind_range):
            raise ValueError(f"values must lie in [0, {self.max_ind_range})")
        out = np.empty(values.shape, dtype=np.int32)
        for c in range(self.num_columns):
            column = values[:, c]
            if self.max_ind_range > 0:
                out[:, c] = self._map_dense(c, column)
                continue
            unique, first = np.unique(column, return_index=True)
            unseen = self._lookup(c, unique) < 0
            if unseen.any():
                self._add(c, unique[unseen][np.argsort(first[unseen], kind="stable")])
            out[:, c] = self._lookup(c, column)
        return out

    def _map_dense(self, c: int, column: np.ndarray) -> np.ndarray:
        """One gather finds the values already known; only the rest (few, once
        the first days are in) are sorted to number them by first appearance."""
        dense = self._dense[c]
        ids = dense[column]  # id + 1, or 0 for unseen
        new_rows = np.flatnonzero(ids == 0)
        if new_rows.size:
            new_values = column[new_rows]
            unique, first = np.unique(new_values, return_index=True)
            self._add(c, unique[np.argsort(first, kind="stable")])
            ids[new_rows] = dense[new_values]
        return ids - 1

    def added_since(self, marks: list[int]) -> list[np.ndarray]:
        """Values added after each column had ``marks[c]`` blocks of additions
        (for saving a day's additions and replaying them on resume)."""
        return [np.concatenate(self.order[c][marks[c]:]) if self.order[c][marks[c]:] else np.zeros(0, np.int64)
                for c in range(self.num_columns)]

    def marks(self) -> list[int]:
        return [len(blocks) for blocks in self.order]

    def extend(self, additions: list[np.ndarray]) -> None:
        """Replay additions saved with :meth:`added_since` (ids follow in order)."""
        for c, values in enumerate(additions):
            if values.size:
                self._add(c, np.asarray(values, dtype=np.int64))
