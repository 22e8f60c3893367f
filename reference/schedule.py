"""Learning-rate schedule: linear warmup, constant, polynomial decay, constant.

Step ``s`` counts from 1 (the first optimiser step):
- ``s <= W``: ``lr * s / W`` (reaches the base lr exactly at ``s = W``);
- up to the decay start: ``lr`` (the seed held ``lr * (1 - 1/W)`` here by mistake);
- ``decay_start <= s < decay_start + D``: ``lr * ((D - (s - decay_start)) / D) ** power``,
  at least ``min_lr``;
- after the decay: held at its last value.
``W = 0`` (no warmup) and ``D = 0`` (no decay) are both valid.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PolyWarmupSchedule:
    base_lr: float
    warmup_steps: int = 0
    decay_start_step: int = 0
    decay_steps: int = 0
    power: int = 2
    min_lr: float = 1e-7

    def __call__(self, step: int) -> float:
        if step < 1:
            raise ValueError(f"schedule steps count from 1, got {step}")
        if step <= self.warmup_steps:
            return self.base_lr * step / self.warmup_steps
        if self.decay_steps <= 0 or step < self.decay_start_step:
            return self.base_lr
        done = min(step - self.decay_start_step, self.decay_steps - 1)
        scale = ((self.decay_steps - done) / self.decay_steps) ** self.power
        return max(self.min_lr, self.base_lr * scale)

    @classmethod
    def from_config(cls, cfg) -> PolyWarmupSchedule:
        return cls(cfg.learning_rate, cfg.warmup_steps, cfg.decay_start_step, cfg.decay_steps, cfg.decay_power)
