"""When a run saves a checkpoint."""

from __future__ import annotations


class CheckpointPolicy:
    """Every ``every`` steps (0: only at its end), never without a path."""

    def __init__(self, path: str | None, every: int):
        self.path, self.every = path, every

    def due(self, step: int) -> bool:
        return self.path is not None and self.every > 0 and step % self.every == 0

    @property
    def at_end(self) -> bool:
        return self.path is not None
