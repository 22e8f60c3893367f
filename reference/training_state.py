"""Where a training run stands: what a resumed run needs besides the weights
and the optimiser state.

Nothing else is needed to continue exactly: every random draw (initialisation,
batch order) comes from a generator seeded from the config, never from torch's
global one, and the learning-rate schedule is a function of the step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class TrainingState:
    step: int = 0            # optimiser steps taken
    epoch: int = 0           # 0-based epoch of the next batch
    batch_in_epoch: int = 0  # position of the next batch in that epoch's order

    def epochs_trained(self, batches_per_epoch: int) -> float:
        """Epochs trained up to this point, fractional (MLPerf's epoch_num counts from it: mlperf_conventions)."""
        return self.epoch + self.batch_in_epoch / batches_per_epoch

    def next_epoch(self) -> None:
        self.epoch += 1
        self.batch_in_epoch = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainingState:
        """Raises ValueError naming the first missing or invalid field."""
        read = {}
        for f in fields(cls):
            value = values.get(f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{f.name} must be an integer >= 0, got {value!r}")
            read[f.name] = value
        return cls(**read)
