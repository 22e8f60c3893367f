"""Data-parallel MLPs: the replicated parameters' gradients are summed over
ranks in buckets, each launched (asynchronously) as soon as backward has
produced all its gradients, so communication overlaps the rest of backward.

Summed, not averaged: every rank's loss is its share of the *global* batch
mean (sum over its samples / global batch size), so the sum over ranks is
exactly the gradient one process computes for the whole batch.
"""

from __future__ import annotations

import torch

from .communicator import Communicator

BUCKET_BYTES = 8 << 20


class GradientReducer:
    def __init__(self, params: list[torch.nn.Parameter], comm: Communicator, bucket_bytes: int = BUCKET_BYTES):
        self.comm = comm
        # Backward produces the last layers' gradients first: bucket in reverse order.
        self.buckets: list[list[torch.nn.Parameter]] = [[]]
        size = 0
        for p in reversed(params):
            if self.buckets[-1] and size + p.numel() * p.element_size() > bucket_bytes:
                self.buckets.append([])
                size = 0
            self.buckets[-1].append(p)
            size += p.numel() * p.element_size()
        self._bucket_of = {id(p): b for b, bucket in enumerate(self.buckets) for p in bucket}
        self._ready = [0] * len(self.buckets)
        self._in_flight: dict[int, tuple] = {}
        self._active = False
        for p in params:
            p.register_post_accumulate_grad_hook(self._on_grad)

    def start(self) -> None:
        """Arm the hooks for one backward pass (evaluation and other passes leave them idle)."""
        self._ready = [0] * len(self.buckets)
        self._in_flight = {}
        self._active = True

    def _on_grad(self, p: torch.nn.Parameter) -> None:
        if not self._active:
            return
        b = self._bucket_of[id(p)]
        self._ready[b] += 1
        if self._ready[b] == len(self.buckets[b]):
            self._launch(b)

    def _launch(self, b: int) -> None:
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                          for p in self.buckets[b]])
        self._in_flight[b] = (flat, self.comm.all_reduce(flat, f"gradient all-reduce (bucket {b})"))

    def finish(self) -> None:
        """Wait for every bucket and write the summed gradients back. Buckets
        not complete (a parameter unused this step) are sent now, in bucket
        order, so every rank issues the same collectives in the same order."""
        for b in range(len(self.buckets)):
            if b not in self._in_flight:
                self._launch(b)
        self._active = False
        for b, (flat, work) in self._in_flight.items():
            work.wait()
            at = 0
            for p in self.buckets[b]:
                n = p.numel()
                if p.grad is None:
                    p.grad = flat[at:at + n].view_as(p).clone()
                else:
                    p.grad.copy_(flat[at:at + n].view_as(p))
                at += n
