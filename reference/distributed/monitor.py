"""Fault monitoring: which rank is at fault when a collective fails, or never completes.

A rendezvous store carries each rank's heartbeat (:class:`FaultMonitor`), so
when a collective fails or times out the error names the rank that died or
stopped answering instead of hanging or blaming the network; collectives
whose waits never raise (NCCL) get deadlines of their own (:class:`CollectiveWatch`).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import DistributedError, first_line, rank_list

HEARTBEAT_SECONDS = 1.0


class FaultMonitor:
    """Heartbeats in the rendezvous store.

    A background thread bumps this rank's counter every second and publishes
    the step it is at. A rank whose counter stops moving has died or is
    stopped; a rank whose counter moves but whose step lags is stuck. The
    thread also watches the others: a peer silent for half of ``dist_timeout``
    (at least 5 s) is named and the job ended, even where a collective would
    not fail by itself first (NCCL runs asynchronously, and its watchdog
    does not say which rank is gone)."""

    def __init__(self, store: dist.Store, rank: int, world_size: int, timeout: float,
                 on_peer_failure: Callable[[str], None] | None = None):
        self.store, self.rank, self.world_size, self.timeout = store, rank, world_size, timeout
        self.on_peer_failure = on_peer_failure
        self.progress = 0
        self._stop = threading.Event()
        self._client = store.clone()  # type: ignore[attr-defined]  # torch's stub omits Store.clone
        self._thread = threading.Thread(target=self._beat, name="dlrm-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        """Publish this rank's heartbeat; end the process when another rank reported
        a failure, since this one may be blocked in a collective that never completes."""
        beats = 0
        keys = [f"heartbeat/{r}" for r in range(self.world_size)]
        seen: dict[int, tuple[bytes, float]] = {}  # rank -> (its last heartbeat, when it changed)
        while not self._stop.is_set():
            beats += 1
            try:
                self._client.set(f"heartbeat/{self.rank}", f"{beats} {self.progress}")
                reported = self._client.add("failures", 0) > 0  # one call, whatever the world size
                failed = self._failures(self._client) if reported else {}
                if failed and self.on_peer_failure is not None and not self._stop.is_set():
                    r, why = next(iter(failed.items()))
                    self.on_peer_failure(f"rank {self.rank}: stopping because rank {r} failed: {why}")
                    return
                silent = self._silent_peers(keys, seen)
                if silent and self.on_peer_failure is not None and not self._stop.is_set():
                    message = (f"rank {self.rank}: rank(s) {rank_list(silent)} stopped answering (no heartbeat for "
                               f"{self.silence_limit:.0f} s: died, killed or suspended)")
                    self.report_failure(message)
                    self.on_peer_failure(message)
                    return
            except Exception:
                return  # the store is gone: rank 0 ended; whoever waits on it will diagnose
            self._stop.wait(HEARTBEAT_SECONDS)

    @property
    def silence_limit(self) -> float:
        return max(5 * HEARTBEAT_SECONDS, self.timeout / 2)

    def _silent_peers(self, keys: list[str], seen: dict) -> list[int]:
        if not self._client.check(keys):  # some rank has not beaten yet: still starting
            return []
        now = time.monotonic()
        silent = []
        for r, value in enumerate(self._client.multi_get(keys)):
            if r == self.rank:
                continue
            if r not in seen or seen[r][0] != value:
                seen[r] = (value, now)
            elif now - seen[r][1] > self.silence_limit:
                silent.append(r)
        return silent

    def close(self) -> None:
        """Stop beating and wait for the thread: a daemon thread still inside a store call
        when the interpreter exits is killed in C++ code, which aborts the process
        ("terminate called without an active exception") after a run that went well."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(self.timeout)

    def report_failure(self, message: str) -> None:
        """Tell the other ranks why this one is about to exit."""
        try:
            order = self._client.add("failures", 1)  # the first failure is the cause; the rest follow from it
            self._client.set(f"failed/{self.rank}", f"{order}\t{message[:2000]}")
        except Exception:
            pass

    def _snapshot(self) -> dict[int, tuple[int, int]] | None:
        client = self.store.clone()  # type: ignore[attr-defined]  # torch's stub omits Store.clone
        client.set_timeout(timedelta(seconds=3 * HEARTBEAT_SECONDS))
        beats = {}
        try:
            for r in range(self.world_size):
                if client.check([f"heartbeat/{r}"]):
                    count, step = client.get(f"heartbeat/{r}").decode().split()
                    beats[r] = (int(count), int(step))
        except Exception:
            return None
        return beats

    def _failures(self, client=None) -> dict[int, str]:
        out = {}
        try:
            if client is None:
                client = self.store.clone()  # type: ignore[attr-defined]  # torch's stub omits Store.clone
                client.set_timeout(timedelta(seconds=3 * HEARTBEAT_SECONDS))
            for r in range(self.world_size):
                if r != self.rank and client.check([f"failed/{r}"]):
                    order, message = client.get(f"failed/{r}").decode().split("\t", 1)
                    out[r] = (int(order), message)
        except Exception:
            pass
        return {r: message for r, (_, message) in sorted(out.items(), key=lambda item: item[1][0])}

    def failure(self, what: str, cause: BaseException) -> DistributedError:
        """The error to raise after ``what`` failed with ``cause``: which rank, and why."""
        prefix = f"rank {self.rank}: {what} failed"
        failed = self._failures()
        if failed:
            r, why = next(iter(failed.items()))
            return DistributedError(f"{prefix} because rank {r} stopped with an error: {why}")
        first = self._snapshot()
        time.sleep(2.5 * HEARTBEAT_SECONDS)
        second = self._snapshot()
        if first is None or second is None:
            return DistributedError(f"{prefix}: rank 0 (which hosts the rendezvous store) is gone; it died or "
                                    f"stopped answering ({first_line(cause)})")
        silent = [r for r in range(self.world_size)
                  if r != self.rank and (r not in second or second[r][0] == first.get(r, (None,))[0])]
        if silent:
            return DistributedError(f"{prefix}: rank(s) {rank_list(silent)} stopped answering (no heartbeat for "
                                    f"{2.5 * HEARTBEAT_SECONDS:.1f} s: died, killed or suspended) "
                                    f"[{first_line(cause)}]")
        steps = {r: s for r, (_, s) in second.items()}
        lagging = [r for r, s in steps.items() if s < max(steps.values())]
        if lagging:
            return DistributedError(f"{prefix}: rank(s) {rank_list(lagging)} are alive but stuck behind "
                                    f"(steps {', '.join(f'rank {r}: {steps[r]}' for r in sorted(steps))}) "
                                    f"[{first_line(cause)}]")
        return DistributedError(f"{prefix}; every rank is alive and at step {max(steps.values())} "
                                f"[{first_line(cause)}]")


class CollectiveWatch:
    """Deadlines for collectives whose waits never raise.

    NCCL's ``wait`` only orders the GPU's stream, and a collective that never
    completes meets NCCL's watchdog, which ends the process without saying
    which rank is at fault. Each waited collective is tracked by a test of its
    completion (a CUDA event recorded after the wait: it holds no tensors, as
    the collective's own handle would); this thread checks, once per ``poll``
    seconds and without blocking the GPU, whether the oldest has completed;
    one past ``timeout`` since it was issued is handed to ``on_timeout(what,
    cause)`` (the diagnosis that names the rank). The process group's own
    timeout is set later than this one, so the diagnosis comes first."""

    def __init__(self, timeout: float, on_timeout: Callable[[str, BaseException], None], poll: float = 1.0,
                 device: torch.device | None = None):
        self.timeout, self.on_timeout, self.poll, self.device = timeout, on_timeout, poll, device
        self._pending: collections.deque = collections.deque()  # (deadline, what, completed), oldest first
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dlrm-collective-watch", daemon=True)
        self._thread.start()

    def track(self, what: str, completed: Callable[[], bool], issued: float) -> None:
        """``completed()``: whether the collective is done; ``issued``: its time.monotonic() at the start."""
        with self._lock:
            self._pending.append((issued + self.timeout, what, completed))

    def _run(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # a new thread's GPU is GPU 0: no context of this rank there
        while not self._stop.wait(self.poll):
            with self._lock:
                while self._pending and self._pending[0][2]():
                    self._pending.popleft()
                late = self._pending[0] if self._pending and self._pending[0][0] < time.monotonic() else None
            if late is not None and not self._stop.is_set():
                self.on_timeout(late[1], TimeoutError(f"not complete within {self.timeout:.0f} s (dist_timeout)"))
                return

    def close(self) -> None:
        self._stop.set()  # as FaultMonitor.close: never leave the thread running into the interpreter's exit
        if self._thread is not threading.current_thread():
            self._thread.join(self.timeout)

