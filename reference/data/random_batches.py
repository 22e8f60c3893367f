"""Random batches of any shape, drawn in memory: the original
dlrm_s_pytorch.py's ``--data-generation=random`` (with its
``--num-indices-per-lookup[-fixed]``), for speed studies on shapes no data
file has.

Dense features are uniform in [0, 1), ids uniform in their table, bags of
``bag_size`` ids or of 1 .. ``bag_size`` ids, uniformly, or of a fixed size per
table (``bag_sizes``: DLRMv2's multi-hot shape). Labels are fair coin
flips, as the original's (``--round-targets``): there is nothing to learn,
so the AUC is about 0.5 by construction. Unlike the original, a bag may hold
an id twice (it drew ids and dropped repeats with ``np.unique``).

A batch is a pure function of (seed, split, index), drawn when it is read:
the same seed gives the same batches in any order, on any rank, and each
table's ids come from their own stream, so a rank draws only its tables'.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .jagged import Ids, JaggedIds
from .loader import Batch, batch_order, sample_range

SPLITS = ("train", "eval")


@dataclass(frozen=True)
class RandomSpec:
    table_sizes: list[int]
    dense_features: int
    bag_size: int = 1             # ids per bag (at most, unless fixed)
    bag_size_fixed: bool = False  # every bag exactly bag_size ids
    bag_sizes: tuple[int, ...] | None = None  # or exactly bag_sizes[t] ids in every bag of table t

    def __post_init__(self):
        if not self.table_sizes or any(n <= 0 for n in self.table_sizes):
            raise ValueError(f"random data: table sizes must be positive, got {self.table_sizes}")
        if self.dense_features <= 0 or self.bag_size <= 0:
            raise ValueError(f"random data: dense_features and bag_size must be > 0, got "
                             f"{self.dense_features} and {self.bag_size}")
        if self.bag_sizes is not None and (len(self.bag_sizes) != len(self.table_sizes)
                                           or any(k <= 0 for k in self.bag_sizes)):
            raise ValueError(f"random data: bag_sizes needs one size > 0 per table ({len(self.table_sizes)}), "
                             f"got {list(self.bag_sizes)}")


class RandomDataset:
    """``num_batches`` batches of ``batch_size`` samples of one split."""

    def __init__(self, spec: RandomSpec, batch_size: int, num_batches: int, seed: int, split: str):
        if split not in SPLITS:
            raise ValueError(f"random data: split must be one of {', '.join(SPLITS)}, got {split!r}")
        if batch_size <= 0 or num_batches <= 0:
            raise ValueError(f"random data: batch_size and num_batches must be > 0, got {batch_size} and "
                             f"{num_batches}")
        self.spec, self.seed, self.split = spec, seed, split
        self.path = f"random {split} batches (data_mode=random)"
        self.batch_size, self.num_batches = batch_size, num_batches
        self.num_samples = batch_size * num_batches

    def __len__(self) -> int:
        return self.num_batches

    def batch_order(self, epoch: int, shuffle: bool, seed: int) -> np.ndarray:
        return batch_order(self.num_batches, epoch, shuffle, seed)

    def batch(self, index: int) -> Batch:
        return self.batch_part(index, 0, 1, list(range(len(self.spec.table_sizes))))

    def batch_part(self, index: int, rank: int, world_size: int, columns: list[int]) -> Batch:
        if not 0 <= index < self.num_batches:
            raise IndexError(f"batch {index} out of range 0..{self.num_batches - 1}")
        lo, hi = sample_range(self.batch_size, world_size, rank)
        rng = self._stream(index, 0)
        dense = rng.random((self.batch_size, self.spec.dense_features), dtype=np.float32)
        labels = rng.integers(0, 2, self.batch_size).astype(np.float32)
        return Batch(torch.from_numpy(dense[lo:hi]), self.ids(index, columns), torch.from_numpy(labels[lo:hi]),
                     global_size=self.batch_size)

    def ids(self, index: int, columns: list[int]) -> Ids:
        """The ids of batch ``index`` for the tables ``columns``: (batch, tables)
        for bags of one, else jagged."""
        streams = [(self._stream(index, 1 + t), self.spec.table_sizes[t], t) for t in columns]
        if self.spec.bag_size == 1 and self.spec.bag_sizes is None:
            ids = [rng.integers(0, n, self.batch_size) for rng, n, _ in streams]
            return torch.from_numpy(np.stack(ids, axis=1) if ids else np.zeros((self.batch_size, 0), np.int64))
        lengths, values = [], []
        for rng, n, t in streams:
            if self.spec.bag_sizes is not None:
                count = np.full(self.batch_size, self.spec.bag_sizes[t])
            elif self.spec.bag_size_fixed:
                count = np.full(self.batch_size, self.spec.bag_size)
            else:
                count = rng.integers(1, self.spec.bag_size + 1, self.batch_size)
            lengths.append(count)
            values.append(rng.integers(0, n, int(count.sum())))
        return JaggedIds.from_lengths(torch.from_numpy(np.concatenate(values) if values else np.zeros(0, np.int64)),
                                      torch.from_numpy(np.stack(lengths) if lengths else
                                                       np.zeros((0, self.batch_size), np.int64)))

    def _stream(self, index: int, part: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLITS.index(self.split), index, part])
