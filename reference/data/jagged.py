"""Bags of ids of variable length, one per (table, sample), in jagged form.

The layout is TorchRec's KeyedJaggedTensor: table-major, so the bags of one
table are contiguous and the ids of a subset of tables (one rank's tables)
are a few slices. Bag ``(t, b)`` of a batch of ``B`` samples holds
``values[offsets[t * B + b]:offsets[t * B + b + 1]]``: ids local to table
``t``. An empty bag pools to a zero vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class JaggedIds:
    values: torch.Tensor   # (N,) int64, every bag's ids one after the other, table by table
    offsets: torch.Tensor  # (tables * batch_size + 1,) int64: where each bag starts, then N
    batch_size: int

    def __post_init__(self):
        v, o = self.values, self.offsets
        if v.dim() != 1 or o.dim() != 1 or v.dtype != torch.int64 or o.dtype != torch.int64:
            raise ValueError(f"jagged ids: values and offsets must be 1-D int64, got values {v.dtype} "
                             f"{tuple(v.shape)} and offsets {o.dtype} {tuple(o.shape)}")
        if v.device != o.device:
            raise ValueError(f"jagged ids: values on {v.device} but offsets on {o.device}")
        if self.batch_size <= 0 or (o.numel() - 1) % self.batch_size or o.numel() < 1:
            raise ValueError(f"jagged ids: {o.numel()} offsets are not tables x batch size ({self.batch_size}) "
                             f"+ 1")
        # The checks of values need the host to read them: made where the batch is built,
        # never on a device, where they would stall every step.
        if o.device.type == "cpu":
            if int(o[0]) != 0 or int(o[-1]) != v.numel():
                raise ValueError(f"jagged ids: offsets must start at 0 and end at the {v.numel()} values, "
                                 f"got {int(o[0])} .. {int(o[-1])}")
            if o.numel() > 1 and bool((o[1:] < o[:-1]).any()):
                raise ValueError("jagged ids: offsets must not decrease (a bag of negative length)")

    @classmethod
    def from_lengths(cls, values: torch.Tensor, lengths: torch.Tensor) -> JaggedIds:
        """From the bag lengths, (tables, batch)."""
        if lengths.dim() != 2:
            raise ValueError(f"jagged ids: lengths must be (tables, batch), got {tuple(lengths.shape)}")
        offsets = torch.zeros(lengths.numel() + 1, dtype=torch.int64, device=lengths.device)
        torch.cumsum(lengths.reshape(-1), 0, out=offsets[1:])
        return cls(values, offsets, lengths.shape[1])

    @classmethod
    def from_dense(cls, ids: torch.Tensor) -> JaggedIds:
        """Bags of one id from (batch, tables) ids."""
        batch, tables = ids.shape
        return cls(ids.t().reshape(-1).long(), torch.arange(batch * tables + 1, device=ids.device), batch)

    @property
    def num_tables(self) -> int:
        return (self.offsets.numel() - 1) // self.batch_size

    def lengths(self) -> torch.Tensor:
        """Ids per bag, (tables, batch)."""
        return self.offsets.diff().view(self.num_tables, self.batch_size)

    def table_lengths(self) -> torch.Tensor:
        """Ids per table, (tables,), on the ids' device (nothing read by the host)."""
        return self.offsets[::self.batch_size].diff()

    def tables(self, columns: list[int]) -> JaggedIds:
        """The bags of the tables ``columns``, in that order (a table may repeat)."""
        starts = self.offsets[::self.batch_size].tolist()
        values, offsets, at = [], [self.offsets.new_zeros(1)], 0
        for c in columns:
            if not 0 <= c < self.num_tables:
                raise IndexError(f"jagged ids: table {c} of {self.num_tables}")
            lo, hi = starts[c], starts[c + 1]
            values.append(self.values[lo:hi])
            offsets.append(self.offsets[c * self.batch_size + 1:(c + 1) * self.batch_size + 1] - lo + at)
            at += hi - lo
        return JaggedIds(torch.cat(values) if values else self.values[:0], torch.cat(offsets), self.batch_size)

    def pin_memory(self) -> JaggedIds:
        return JaggedIds(self.values.pin_memory(), self.offsets.pin_memory(), self.batch_size)

    def to(self, device: torch.device, non_blocking: bool = False) -> JaggedIds:
        return JaggedIds(self.values.to(device, non_blocking=non_blocking),
                         self.offsets.to(device, non_blocking=non_blocking), self.batch_size)


# What a batch carries for its tables: one id per (sample, table), (batch, tables), or bags.
Ids = torch.Tensor | JaggedIds
