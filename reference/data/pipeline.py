"""The input pipeline: batches read (and, on CUDA, pinned and copied to the
device) in a background thread a few batches ahead of the step that uses them.

The batches and their order are exactly those of reading on the main thread,
so a run's results do not depend on ``depth``; it only moves the reading off
the critical path. Reading is numpy work on a memory-mapped file (slicing,
int64 conversion, log1p), which releases the GIL.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator

import torch

from .loader import Batch

_DONE = object()


class _Staged:
    """A batch on the device, with the event after which its copy is complete."""

    def __init__(self, batch: Batch, event):
        self.batch, self.event = batch, event


def _stage(batch: Batch, device: torch.device, stream) -> _Staged:
    """Copy to ``device`` from pinned memory on ``stream`` (the copy overlaps the compute stream)."""
    with torch.cuda.stream(stream):
        staged = batch.pin_memory().to(device)
        event = torch.cuda.Event()
        event.record(stream)
    return _Staged(staged, event)


def _receive(staged: _Staged) -> Batch:
    current = torch.cuda.current_stream(staged.batch.labels.device)
    current.wait_event(staged.event)
    for tensor in staged.batch.tensors():
        tensor.record_stream(current)  # the copy stream's allocator must not reuse it before compute is done
    return staged.batch


class Batches:
    """Iterates ``read(i)`` for ``i`` in ``indices``, moved to ``device``.

    ``depth`` > 0 reads that many batches ahead in a thread; 0 reads each
    batch when it is asked for. An error while reading is raised by the
    iteration that reaches that batch. :meth:`close` (or leaving a ``with``
    block) stops the thread when the consumer stops early.
    """

    def __init__(self, read: Callable[[int], Batch], indices: Iterable[int], depth: int,
                 device: torch.device = torch.device("cpu")):
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth}")
        self.read, self.indices, self.depth, self.device = read, list(indices), depth, device
        self._cuda = device.type == "cuda"
        self._stream = torch.cuda.Stream(device) if self._cuda and depth else None
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __iter__(self) -> Iterator[Batch]:
        if not self.depth:
            for i in self.indices:
                yield self.read(i).to(self.device)
            return
        self._queue = queue.Queue(maxsize=self.depth)
        self._thread = threading.Thread(target=self._produce, name="batch-prefetch", daemon=True)
        self._thread.start()
        try:
            while True:
                item = self._queue.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield _receive(item) if self._cuda else item
        finally:
            self.close()

    def _produce(self) -> None:
        try:
            if self._stream is not None:  # a new thread starts on device 0, whichever GPU this rank owns
                torch.cuda.set_device(self._stream.device)
            for i in self.indices:
                batch = self.read(i)
                item = _stage(batch, self.device, self._stream) if self._cuda else batch
                if not self._put(item):
                    return
        except BaseException as e:  # handed to the consumer, raised where it would have been read
            self._put(e)
            return
        self._put(_DONE)

    def _put(self, item) -> bool:
        assert self._queue is not None, "__iter__ makes the queue before it starts the producer"
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Batches:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
