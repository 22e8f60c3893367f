"""Training losses and throughput, losses kept where they are computed and read every few steps.

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
    def __init__(self, every: int, read: Callable[[torch.Tensor], list[float]]):
        self.every, self.read = every, read
        self.losses: list[float] = []             # one per step, in order
        self.curve: list[tuple[int, float]] = []  # (step, mean loss of the window ending there), full windows
        self.samples = 0                          # trained on, all ranks together
        self._pending: list[torch.Tensor] = []
        self._window_samples = 0
        self._started = time.perf_counter()

    def add(self, step: int, loss: torch.Tensor, samples: int) -> tuple[float, float] | None:
        """Record ``step``'s loss over ``samples`` (the global batch); every
        ``every`` steps returns the window's (mean loss, samples per second)."""
        self._pending.append(loss.detach().reshape(()))
        self.samples += samples
        self._window_samples += samples
        if len(self._pending) < self.every:
            return None
        values = self.flush()
        mean = sum(values) / len(values)
        self.curve.append((step, mean))
        now = time.perf_counter()
        rate = self._window_samples / max(now - self._started, 1e-9)
        self._started, self._window_samples = now, 0
        return mean, rate

    def flush(self) -> list[float]:
        """Read the pending losses (every rank must call this at the same step)."""
        if not self._pending:
            return []
        values = self.read(torch.stack(self._pending))
        self._pending = []
        self.losses.extend(values)
        return values
