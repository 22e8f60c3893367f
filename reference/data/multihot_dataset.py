"""Batches of a multi-hot binary file (layout in :mod:`reference.data.multihot`).

Like :class:`reference.data.loader.BinaryDataset`: the file is memory-mapped
and a batch is one contiguous slice of it. The ids come as :class:`JaggedIds`
(every bag of table t holds ``sizes[t]`` ids), the form every embeddings module
pools, one process or sharded; the dense features are read as stored.
"""

from __future__ import annotations

import numpy as np
import torch

from .binary import NUM_SPARSE, DataError, map_records, table_limits
from .jagged import JaggedIds
from .loader import Batch, batch_order, sample_range
from .multihot import ID_START, bag_starts, check_sizes, record_words


class MultiHotDataset:
    """Batches of one multi-hot file made with bag lengths ``sizes``.

    ``table_sizes`` (optional) is checked against every batch read: an id
    outside its table would otherwise silently read another table's row.
    """

    def __init__(self, path: str, batch_size: int, sizes: list[int], table_sizes: list[int] | None = None):
        self.sizes = check_sizes(sizes, path)
        words = record_words(self.sizes)
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        self._data = map_records(path, words, "multi-hot data",
                                 f"{words} 4-byte words per sample for bags of {sum(self.sizes)} ids; the file is "
                                 f"truncated, or was made with other multihot_sizes, or is not multi-hot data")
        self.path = path
        self.batch_size = batch_size
        self.num_samples = self._data.shape[0]
        self.num_batches = -(-self.num_samples // batch_size)
        self._starts = bag_starts(self.sizes)
        self._limits = table_limits(path, table_sizes, "bags per sample")

    def __len__(self) -> int:
        return self.num_batches

    def batch_order(self, epoch: int, shuffle: bool, seed: int) -> np.ndarray:
        return batch_order(self.num_batches, epoch, shuffle, seed)

    def batch(self, index: int) -> Batch:
        return self.batch_part(index, 0, 1, list(range(NUM_SPARSE)))

    def batch_part(self, index: int, rank: int, world_size: int, columns: list[int]) -> Batch:
        """What one of ``world_size`` ranks reads of batch ``index``: dense
        features and labels of its samples (:func:`sample_range`), and the
        bags of the whole batch for the tables in ``columns`` only."""
        if not 0 <= index < self.num_batches:
            raise IndexError(f"batch {index} out of range 0..{self.num_batches - 1}")
        start = index * self.batch_size
        stop = min(start + self.batch_size, self.num_samples)
        raw = np.asarray(self._data[start:stop])  # the one read of this batch
        lo, hi = sample_range(stop - start, world_size, rank)
        dense = np.ascontiguousarray(raw[lo:hi, 1:ID_START]).view("<f4")
        if not np.isfinite(dense).all():
            row = start + lo + int(np.argwhere(~np.isfinite(dense))[0, 0])
            raise DataError(f"{self.path}: sample {row} has a dense feature that is not a finite number")
        return Batch(dense=torch.from_numpy(dense), ids=self._bags(raw, start, columns),
                     labels=torch.from_numpy(raw[lo:hi, 0].astype(np.float32)), global_size=stop - start)

    def _bags(self, raw: np.ndarray, start: int, columns: list[int]) -> JaggedIds:
        n = raw.shape[0]
        values = []
        for t in columns:
            bags = raw[:, self._starts[t]:self._starts[t + 1]]
            if self._limits is not None:
                self._check(bags, start, t)
            values.append(bags.reshape(-1))
        lengths = np.repeat(np.asarray([self.sizes[t] for t in columns], dtype=np.int64), n)
        offsets = np.zeros(lengths.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.concatenate(values).astype(np.int64) if values else np.zeros(0, np.int64)
        return JaggedIds(torch.from_numpy(flat), torch.from_numpy(offsets), n)

    def _check(self, bags: np.ndarray, start: int, table: int) -> None:
        assert self._limits is not None, "only called with table sizes"
        limit = self._limits[table]
        bad = (bags < 0) | (bags >= limit)
        if bad.any():
            r, j = np.argwhere(bad)[0]
            raise DataError(f"{self.path}: sample {start + r}, table {table}, id {j} of its bag of "
                            f"{bags.shape[1]}: {bags[r, j]} is outside its table of {limit} rows (wrong counts "
                            f"file?)")
