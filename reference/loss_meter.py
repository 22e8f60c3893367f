"""Training losses, kept where they are computed and read every few steps.

Reading a loss (``.item()``, or an all-reduce across ranks) waits for the step
that made it: on a GPU every step would stall the host. The meter holds each
step's loss as a tensor and reads a whole window at once, with one host read
(one all-reduce with several ranks), every ``every`` steps and at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


class LossMeter:
    def __init__(self, every: int, read: Callable[[torch.Tensor], list[float]], samples_per_step: int):
        self.every, self.read, self.samples_per_step = every, read, samples_per_step
        self.losses: list[float] = []             # one per step, in order
        self.curve: list[tuple[int, float]] = []  # (step, mean loss of the window ending there), full windows
        self._pending: list[torch.Tensor] = []
        self._started = time.perf_counter()

    def add(self, step: int, loss: torch.Tensor) -> tuple[float, float] | None:
        """Record ``step``'s loss; every ``every`` steps returns the window's
        (mean loss, samples per second)."""
        self._pending.append(loss.detach().reshape(()))
        if len(self._pending) < self.every:
            return None
        values = self.flush()
        mean = sum(values) / len(values)
        self.curve.append((step, mean))
        now = time.perf_counter()
        rate = len(values) * self.samples_per_step / max(now - self._started, 1e-9)
        self._started = now
        return mean, rate

    def flush(self) -> list[float]:
        """Read the pending losses (every rank must call this at the same step)."""
        if not self._pending:
            return []
        values = self.read(torch.stack(self._pending))
        self._pending = []
        self.losses.extend(values)
        return values
