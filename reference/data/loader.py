"""Batches of an MLPerf binary file (layout in :mod:`reference.data.binary`).

A batch is one contiguous slice of a memory-mapped file (the file is never
loaded whole); dense features become float32 log(x + 1), or ln(x + 3) for
files made with the DLRMv2 reference's rules (``--semantics dcnv2``, which
keeps negative integers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from .binary import COLUMNS, DENSE_TRANSFORMS, NUM_DENSE, NUM_SPARSE, DataError, dense_log3, map_records, table_limits
from .jagged import Ids, JaggedIds


def split_sizes(n: int, world_size: int) -> list[int]:
    """Samples of a batch of ``n`` per rank: contiguous, the first ranks one more when uneven."""
    base, extra = divmod(n, world_size)
    return [base + (r < extra) for r in range(world_size)]


def sample_range(n: int, world_size: int, rank: int) -> tuple[int, int]:
    """The samples ``lo .. hi - 1`` of a batch of ``n`` that ``rank`` computes on."""
    sizes = split_sizes(n, world_size)
    lo = sum(sizes[:rank])
    return lo, lo + sizes[rank]


def batch_order(num_batches: int, epoch: int, shuffle: bool, seed: int) -> np.ndarray:
    """The order of batches in ``epoch``: a pure function of (seed, epoch),
    so a resumed run sees the same order without saving RNG state."""
    if not shuffle:
        return np.arange(num_batches)
    return np.random.default_rng([seed, epoch]).permutation(num_batches)


@dataclass
class Batch:
    dense: torch.Tensor   # (B, 13) float32, log(x + 1)
    # (B, 26) int64, one id per table, or bags of ids (JaggedIds);
    # with several ranks: the global batch's, for this rank's tables
    ids: Ids
    labels: torch.Tensor  # (B,) float32, 0 or 1
    global_size: int = -1  # samples in the whole (global) batch; -1: this batch is all of it

    def __post_init__(self):
        if self.global_size < 0:
            self.global_size = len(self)

    def __len__(self) -> int:
        return self.labels.shape[0]

    def pin_memory(self) -> Batch:
        return Batch(self.dense.pin_memory(), self.ids.pin_memory(), self.labels.pin_memory(), self.global_size)

    def to(self, device: torch.device) -> Batch:
        if device.type == "cpu":
            return self
        return Batch(self.dense.to(device, non_blocking=True), self.ids.to(device, non_blocking=True),
                     self.labels.to(device, non_blocking=True), self.global_size)

    def tensors(self) -> list[torch.Tensor]:
        ids = [self.ids.values, self.ids.offsets] if isinstance(self.ids, JaggedIds) else [self.ids]
        return [self.dense, *ids, self.labels]


class Dataset(Protocol):
    """What training reads batches from: a binary file (:class:`BinaryDataset`)
    or batches drawn in memory (random.py)."""

    path: str  # what error messages call it
    batch_size: int
    num_samples: int
    num_batches: int

    def __len__(self) -> int: ...

    def batch_order(self, epoch: int, shuffle: bool, seed: int) -> np.ndarray:
        """The order of batches in ``epoch``: a pure function of (seed, epoch)."""

    def batch(self, index: int) -> Batch: ...

    def batch_part(self, index: int, rank: int, world_size: int, columns: list[int]) -> Batch:
        """One rank's part of batch ``index``: dense features and labels of its
        samples (:func:`sample_range`), ids of the whole batch for ``columns``."""


class BinaryDataset:
    """Batches of one MLPerf binary file.

    ``table_sizes`` (optional) is checked against every batch read: an id
    outside its table would otherwise silently read another table's row.
    ``dense_transform``: log1p (v1 files, negatives refused) or log3 (ln(x + 3)).
    """

    def __init__(self, path: str, batch_size: int, table_sizes: list[int] | None = None,
                 dense_transform: str = "log1p"):
        if dense_transform not in DENSE_TRANSFORMS:
            raise ValueError(f"dense_transform must be one of {', '.join(DENSE_TRANSFORMS)}, got {dense_transform!r}")
        self.dense_transform = dense_transform
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        self._data = map_records(path, COLUMNS, "binary data", f"{COLUMNS} int32 per sample; the file is truncated "
                                                               f"or not in the MLPerf binary format")
        self.path = path
        self.batch_size = batch_size
        self.num_samples = self._data.shape[0]
        self.num_batches = -(-self.num_samples // batch_size)
        self._limits = table_limits(path, table_sizes, "categorical columns")

    def __len__(self) -> int:
        return self.num_batches

    def batch_order(self, epoch: int, shuffle: bool, seed: int) -> np.ndarray:
        return batch_order(self.num_batches, epoch, shuffle, seed)

    def rows(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self._data[start:stop])

    def batch(self, index: int) -> Batch:
        start, stop = self._bounds(index)
        raw = self.rows(start, stop)
        return self._make_batch(raw, raw[:, 1 + NUM_DENSE:], start, stop - start, np.arange(NUM_SPARSE))

    def batch_part(self, index: int, rank: int, world_size: int, columns: list[int]) -> Batch:
        """What one of ``world_size`` ranks reads of batch ``index``: dense
        features and labels of its samples (:func:`sample_range`), and the
        ids of the whole batch for the tables in ``columns`` only."""
        start, stop = self._bounds(index)
        lo, hi = sample_range(stop - start, world_size, rank)
        raw = self.rows(start + lo, start + hi)
        cols = np.asarray(columns, dtype=np.int64)
        ids = self._data[start:stop][:, 1 + NUM_DENSE + cols]
        return self._make_batch(raw, ids, start, stop - start, cols, dense_start=start + lo)

    def _bounds(self, index: int) -> tuple[int, int]:
        if not 0 <= index < self.num_batches:
            raise IndexError(f"batch {index} out of range 0..{self.num_batches - 1}")
        start = index * self.batch_size
        return start, min(start + self.batch_size, self.num_samples)

    def _make_batch(self, raw: np.ndarray, ids: np.ndarray, start: int, global_size: int, columns: np.ndarray,
                    dense_start: int | None = None) -> Batch:
        ids = ids.astype(np.int64)
        if self._limits is not None:
            self._check_ids(ids, start, columns, self._limits[columns])
        dense = raw[:, 1:1 + NUM_DENSE]
        # ln(x + 3) is finite down to -2, the lowest Criteo holds
        bad = dense < (-2 if self.dense_transform == "log3" else 0)
        if bad.any():
            row = (start if dense_start is None else dense_start) + int(np.argwhere(bad)[0, 0])
            if self.dense_transform == "log3":
                raise DataError(f"{self.path}: sample {row} has a dense feature below -2, where ln(x + 3) is not "
                                f"finite")
            raise DataError(f"{self.path}: sample {row} has a negative dense feature; the binary format stores "
                            f"them clamped at 0 (files made with --semantics dcnv2 keep them: dense_transform=log3)")
        values = dense_log3(dense) if self.dense_transform == "log3" else np.log1p(dense, dtype=np.float32)
        return Batch(dense=torch.from_numpy(values),
                     ids=torch.from_numpy(ids),
                     labels=torch.from_numpy(raw[:, 0].astype(np.float32)), global_size=global_size)

    def _check_ids(self, ids: np.ndarray, start: int, columns: np.ndarray, limits: np.ndarray) -> None:
        bad = (ids < 0) | (ids >= limits)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise DataError(f"{self.path}: sample {start + r}, categorical column {columns[c]}: id {ids[r, c]} "
                            f"is outside its table of {limits[c]} rows (wrong counts file or "
                            f"max_ind_range?)")
