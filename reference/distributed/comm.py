"""The few collectives the trainer needs, behind one interface, for every backend.

* ``gloo`` and ``nccl`` (and ``mpi`` where PyTorch was built with MPI):
  ``torch.distributed``. All of them implement ``all_to_all_single`` with
  uneven splits and ``all_reduce``, the only collectives used here, so no
  backend meets an unsupported collective.
* ``mpi`` with the stock PyPI wheels (no MPI inside torch): mpi4py's
  non-blocking ``Ialltoallv`` / ``Iallreduce`` / ``Ibcast`` on the same tensors.

Every wait has a deadline (``dist_timeout``). A rendezvous store (TCPStore on
rank 0) carries each rank's heartbeat, so when a collective fails or times
out the error names the rank that died or stopped answering instead of
hanging or blaming the network.
"""

from __future__ import annotations

import collections
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .launch import LaunchError, LaunchInfo

BACKENDS = ("gloo", "nccl", "mpi")
HEARTBEAT_SECONDS = 1.0


class DistributedError(RuntimeError):
    """A collective failed or timed out, or the ranks disagree; names the rank at fault."""


# --- rendezvous and fault detection ---------------------------------------------------


def _timedelta(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


def open_store(info: LaunchInfo, timeout: float, env=os.environ) -> dist.Store:
    """The rendezvous store, hosted by rank 0 (under torchrun: by torchrun's
    agent, at MASTER_ADDR:MASTER_PORT). Under an MPI launcher without
    MASTER_ADDR, rank 0 listens on a free port and tells the others through MPI.
    Keys are prefixed with the restart count, so a job restarted by torchrun
    does not meet the keys of the attempt before."""
    store = _open_tcp_store(info, timeout, agent_hosted=env.get("TORCHELASTIC_USE_AGENT_STORE") == "True")
    return dist.PrefixStore(f"dlrm/{env.get('TORCHELASTIC_RESTART_COUNT', '0')}/", store)


def _open_tcp_store(info: LaunchInfo, timeout: float, agent_hosted: bool) -> dist.TCPStore:
    addr, port = info.master_addr, info.master_port
    if addr is None:
        try:
            from mpi4py import MPI  # only here: single-process and torchrun runs do not need MPI
        except ImportError:
            raise LaunchError(f"{info.launcher} launch without MASTER_ADDR: rank 0's address is agreed through "
                              f"MPI, which needs mpi4py (pip install mpi4py), or set MASTER_ADDR and "
                              f"MASTER_PORT") from None
        store, failure = None, None
        if info.rank == 0:
            addr = socket.getfqdn()
            try:
                store = _listen(addr, 0, info, timeout)
                port = store.port
            except LaunchError as e:
                failure = str(e)
        # Rank 0 sends its address, or why it has none, so no rank waits in the broadcast forever.
        addr, port, failure = MPI.COMM_WORLD.bcast((addr, port, failure), root=0)
        if failure is not None:
            raise LaunchError(failure if info.rank == 0 else f"rank {info.rank}: rank 0 failed: {failure}")
        if store is not None:
            return store
    elif info.rank == 0 and not agent_hosted:
        return _listen(addr, port, info, timeout)
    try:
        return dist.TCPStore(addr, port, info.world_size, is_master=False, timeout=_timedelta(timeout),
                             wait_for_workers=False)
    except (RuntimeError, dist.DistStoreError) as e:
        raise LaunchError(f"rank {info.rank}: could not reach rank 0's rendezvous at {addr}:{port} within "
                          f"{timeout:.0f} s (dist_timeout): {_first_line(e)}. Is rank 0 running, and are "
                          f"MASTER_ADDR/MASTER_PORT the same for every rank?") from None


def _listen(addr: str, port: int, info: LaunchInfo, timeout: float) -> dist.TCPStore:
    try:
        return dist.TCPStore(addr, port, info.world_size, is_master=True, timeout=_timedelta(timeout),
                             wait_for_workers=False)
    except (RuntimeError, dist.DistStoreError) as e:
        text = str(e)
        if "in use" in text.lower() or "EADDRINUSE" in text:
            raise LaunchError(f"rank 0 cannot listen on {addr}:{port}: the port is already in use "
                              f"(another job?); set MASTER_PORT to a free port") from None
        raise LaunchError(f"rank 0 cannot listen on {addr}:{port}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def join(store: dist.Store, info: LaunchInfo, settings: dict, timeout: float) -> None:
    """Check in, wait for every rank, and check they all run the same settings."""
    try:
        _join(store, info, settings, timeout)
    except (RuntimeError, dist.DistStoreError) as e:
        if isinstance(e, LaunchError):
            raise
        raise LaunchError(f"rank {info.rank}: lost the rendezvous with rank 0 during startup "
                          f"({_first_line(e)}); see rank 0's error") from None


def _join(store: dist.Store, info: LaunchInfo, settings: dict, timeout: float) -> None:
    if store.add(f"join/{info.rank}", 1) > 1:
        raise LaunchError(f"two processes started as rank {info.rank}; check the launcher's rank variables")
    agree(store, info, "settings", dict(settings, world_size=info.world_size), timeout,
          "every rank must get the same config and overrides")


def agree(store: dist.Store, info: LaunchInfo, name: str, values: dict, timeout: float, advice: str) -> None:
    """Every rank publishes ``values``; all raise the same error when a rank
    is missing or any value differs from rank 0's. Rank 0 (the store's host
    outside torchrun) leaves last, so the others can still read the store."""
    try:
        _agree(store, info, name, values, timeout, advice)
    except (RuntimeError, dist.DistStoreError) as e:
        if isinstance(e, LaunchError):
            raise
        raise LaunchError(f"rank {info.rank}: lost the rendezvous with rank 0 while comparing {name} "
                          f"({_first_line(e)}); see rank 0's error") from None


def _agree(store: dist.Store, info: LaunchInfo, name: str, values: dict, timeout: float, advice: str) -> None:
    store.set(f"{name}/{info.rank}", json.dumps(values, sort_keys=True, default=str))
    keys = [f"{name}/{r}" for r in range(info.world_size)]
    deadline = time.time() + timeout + (2 * HEARTBEAT_SECONDS if info.rank == 0 else 0)
    while not store.check(keys):
        if time.time() > deadline:
            missing = [r for r, k in enumerate(keys) if not store.check([k])]
            raise LaunchError(f"rank(s) {_ranks(missing)} did not join within {timeout:.0f} s (dist_timeout); "
                              f"the launcher announced {info.world_size} ranks ({info.launcher}). Wrong world "
                              f"size, or those ranks failed to start?")
        time.sleep(0.05)
    reference = json.loads(store.get(keys[0]))
    problem = None
    for r in range(1, info.world_size):
        theirs = json.loads(store.get(keys[r]))
        diff = sorted(k for k in set(reference) | set(theirs) if reference.get(k) != theirs.get(k))
        if diff and problem is None:
            shown = "; ".join(f"{k}: rank 0 has {_short(reference.get(k))}, rank {r} has {_short(theirs.get(k))}"
                              for k in diff[:5])
            problem = f"the ranks disagree on their {name} ({shown}); {advice}"
    store.set(f"{name}-checked/{info.rank}", "1")
    if info.rank == 0:
        checked = [f"{name}-checked/{r}" for r in range(info.world_size)]
        while not store.check(checked) and time.time() < deadline + timeout:
            time.sleep(0.05)
    if problem is not None:
        raise LaunchError(problem)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _ranks(ranks: list[int]) -> str:
    return ", ".join(map(str, ranks))


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
                    message = (f"rank {self.rank}: rank(s) {_ranks(silent)} stopped answering (no heartbeat for "
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
        self._stop.set()

    def report_failure(self, message: str) -> None:
        """Tell the other ranks why this one is about to exit."""
        try:
            order = self._client.add("failures", 1)  # the first failure is the cause; the rest follow from it
            self._client.set(f"failed/{self.rank}", f"{order}\t{message[:2000]}")
        except Exception:
            pass

    def _snapshot(self) -> dict[int, tuple[int, int]] | None:
        client = self.store.clone()  # type: ignore[attr-defined]  # torch's stub omits Store.clone
        client.set_timeout(_timedelta(3 * HEARTBEAT_SECONDS))
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
                client.set_timeout(_timedelta(3 * HEARTBEAT_SECONDS))
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
                                    f"stopped answering ({_first_line(cause)})")
        silent = [r for r in range(self.world_size)
                  if r != self.rank and (r not in second or second[r][0] == first.get(r, (None,))[0])]
        if silent:
            return DistributedError(f"{prefix}: rank(s) {_ranks(silent)} stopped answering (no heartbeat for "
                                    f"{2.5 * HEARTBEAT_SECONDS:.1f} s: died, killed or suspended) "
                                    f"[{_first_line(cause)}]")
        steps = {r: s for r, (_, s) in second.items()}
        lagging = [r for r, s in steps.items() if s < max(steps.values())]
        if lagging:
            return DistributedError(f"{prefix}: rank(s) {_ranks(lagging)} are alive but stuck behind "
                                    f"(steps {', '.join(f'rank {r}: {steps[r]}' for r in sorted(steps))}) "
                                    f"[{_first_line(cause)}]")
        return DistributedError(f"{prefix}; every rank is alive and at step {max(steps.values())} "
                                f"[{_first_line(cause)}]")


# --- communicators ----------------------------------------------------------------


class Work:
    """A collective in flight. ``wait`` returns when it is complete, or
    raises :class:`DistributedError` naming the rank at fault."""

    def __init__(self, comm: Communicator, what: str, handle, done: Callable[[], object] | None = None):
        self.comm, self.what, self.handle, self.done = comm, what, handle, done
        self.issued = time.monotonic()
        self.keep: object = None  # buffers that must outlive the collective (the MPI backend's host copies)

    def wait(self) -> None:
        self.comm._wait(self)
        if self.done is not None:
            self.done()


class Communicator:
    """Collectives over all ranks. Tensors are flat and contiguous; splits count elements.

    Every rank must issue the same collectives in the same order (they are
    matched by order, not by name): the trainer's forward, backward and
    evaluation do, since nothing in them branches on the rank."""

    backend: str
    rank: int
    world_size: int
    device: torch.device

    def __init__(self, monitor: FaultMonitor | None, timeout: float):
        self.monitor, self.timeout = monitor, timeout
        self.bytes_all_to_all = 0   # sent by this rank, for the benchmark
        self.bytes_all_reduce = 0

    def all_to_all(self, output: torch.Tensor, input: torch.Tensor, output_splits: list[int],
                   input_splits: list[int], what: str = "all-to-all") -> Work:
        self.bytes_all_to_all += (sum(input_splits) - input_splits[self.rank]) * input.element_size()
        return self._issue(what, self._all_to_all, output, input, output_splits, input_splits, what)

    def all_reduce(self, tensor: torch.Tensor, what: str = "all-reduce") -> Work:
        """Sum over ranks, in place."""
        self.bytes_all_reduce += tensor.numel() * tensor.element_size()
        return self._issue(what, self._all_reduce, tensor, what)

    def broadcast(self, tensor: torch.Tensor, root: int = 0, what: str = "broadcast") -> None:
        self._issue(what, self._broadcast, tensor, root, what).wait()

    def barrier(self, what: str = "barrier") -> None:
        """Returns when every rank has reached it. A wait on a GPU collective only
        orders the GPU's stream, so the host waits for the stream too: ranks
        leave together (they start the clock together)."""
        self.all_reduce(torch.zeros(1, device=self.device), what).wait()
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()

    # Each backend starts its collectives and waits for them.
    def _all_to_all(self, output: torch.Tensor, input: torch.Tensor, output_splits: list[int],
                    input_splits: list[int], what: str) -> Work:
        raise NotImplementedError

    def _all_reduce(self, tensor: torch.Tensor, what: str) -> Work:
        raise NotImplementedError

    def _broadcast(self, tensor: torch.Tensor, root: int, what: str) -> Work:
        raise NotImplementedError

    def _wait(self, work: Work) -> None:
        raise NotImplementedError

    def _issue(self, what: str, start, *args) -> Work:
        """Start a collective; a failure to even start it (a peer already gone) is diagnosed too."""
        try:
            return start(*args)
        except RuntimeError as e:
            if isinstance(e, DistributedError):
                raise
            raise self._fail(what, e) from None

    def _fail(self, what: str, cause: BaseException) -> DistributedError:
        if self.monitor is None:
            return DistributedError(f"rank {self.rank}: {what} failed: {_first_line(cause)}")
        return self.monitor.failure(what, cause)

    def _timed_out(self, what: str, cause: BaseException) -> None:
        """A collective that no wait will raise for (NCCL) passed its deadline:
        diagnose it as a failed wait would, tell the others, and end the job."""
        message = str(self._fail(what, cause))
        if self.monitor is not None and self.monitor.on_peer_failure is not None:
            self.monitor.report_failure(message)
            self.monitor.on_peer_failure(message)
            return
        print(f"error: {message}", file=sys.stderr, flush=True)
        os._exit(1)

    def abort(self, code: int) -> None:
        """End this process now, taking the job down with it where the launcher allows."""

    def close(self) -> None:
        if self.monitor is not None:
            self.monitor.close()


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
        self._stop.set()


# NCCL's watchdog fires this long after our own deadline, so that the diagnosis runs first.
WATCHDOG_GRACE_SECONDS = 60.0


class TorchCommunicator(Communicator):
    """torch.distributed. The all-to-alls have a process group of their own:
    under NCCL each group has its own stream, so the backward all-to-all does
    not queue behind the gradient all-reduces issued before it."""

    def __init__(self, backend: str, store, rank: int, world_size: int, timeout: float,
                 monitor: FaultMonitor | None, device: torch.device):
        super().__init__(monitor, timeout)
        self.backend, self.rank, self.world_size, self.device = backend, rank, world_size, device
        self.watch = None
        group_timeout = timeout
        kwargs: dict[str, Any]
        if backend == "mpi":  # MPI knows rank and size itself
            kwargs = {}
        else:
            kwargs = dict(store=dist.PrefixStore("pg", store), rank=rank, world_size=world_size)
            if backend == "nccl":
                kwargs["device_id"] = device
                group_timeout = timeout + max(WATCHDOG_GRACE_SECONDS, timeout)
        try:
            dist.init_process_group(backend, timeout=_timedelta(group_timeout), **kwargs)
            self.exchange_group = None if backend == "mpi" else dist.new_group(
                backend=backend, timeout=_timedelta(group_timeout))
        except (RuntimeError, ValueError) as e:
            raise LaunchError(f"rank {rank}: cannot start the {backend} process group: {_first_line(e)}") from None
        if backend == "nccl":
            self.watch = CollectiveWatch(timeout, self._timed_out, device=device)

    def _all_to_all(self, output, input, output_splits, input_splits, what):
        return Work(self, what, dist.all_to_all_single(output, input, output_splits, input_splits,
                                                       group=self.exchange_group, async_op=True))

    def _all_reduce(self, tensor, what):
        return Work(self, what, dist.all_reduce(tensor, async_op=True))

    def _broadcast(self, tensor, root, what):
        return Work(self, what, dist.broadcast(tensor, root, async_op=True))

    def _wait(self, work: Work) -> None:
        try:
            work.handle.wait()
        except RuntimeError as e:  # gloo: peer closed the connection, or the timeout passed
            raise self._fail(work.what, e) from None
        if self.watch is not None:  # NCCL: the wait only made the stream wait; the event completes with it
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.device))
            self.watch.track(work.what, event.query, work.issued)

    def close(self) -> None:
        if self.watch is not None:
            self.watch.close()
        super().close()
        if dist.is_initialized():
            dist.destroy_process_group()


_MPI_TYPES = {torch.float32: "FLOAT", torch.float64: "DOUBLE", torch.int64: "INT64_T", torch.int32: "INT32_T"}


class MPI4PyCommunicator(Communicator):
    """MPI through mpi4py, for PyTorch builds without an MPI backend. Waits
    poll the request so a rank that stops answering is caught at the deadline
    instead of blocking forever. Tensors on a GPU go through host memory."""

    backend = "mpi"

    def __init__(self, timeout: float, monitor: FaultMonitor | None, device: torch.device):
        super().__init__(monitor, timeout)
        self.device = device
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.world_size = self.comm.Get_rank(), self.comm.Get_size()

    def _buffer(self, tensor: torch.Tensor):
        if tensor.dtype not in _MPI_TYPES:
            raise TypeError(f"mpi backend: unsupported dtype {tensor.dtype}")
        host = tensor.detach().cpu() if tensor.device.type != "cpu" else tensor.detach()
        if not host.is_contiguous():
            raise ValueError("mpi backend: tensors must be contiguous")
        return host, [host.numpy(), getattr(self.MPI, _MPI_TYPES[tensor.dtype])]

    @staticmethod
    def _copy_back(device_tensor: torch.Tensor, host: torch.Tensor) -> Callable[[], object] | None:
        return None if device_tensor.device.type == "cpu" else (lambda: device_tensor.copy_(host))

    def _all_to_all(self, output, input, output_splits, input_splits, what):
        send_host, send = self._buffer(input)
        recv_host = torch.empty(output.shape, dtype=output.dtype) if output.device.type != "cpu" else output
        _, recv = self._buffer(recv_host)
        counts_in = np.asarray(input_splits, dtype=np.int64)
        counts_out = np.asarray(output_splits, dtype=np.int64)
        displ_in = np.concatenate(([0], np.cumsum(counts_in)[:-1]))
        displ_out = np.concatenate(([0], np.cumsum(counts_out)[:-1]))
        request = self.comm.Ialltoallv([send[0], (counts_in, displ_in), send[1]],
                                       [recv[0], (counts_out, displ_out), recv[1]])
        work = Work(self, what, request, self._copy_back(output, recv_host))
        work.keep = (send_host, recv_host)  # buffers must outlive the request
        return work

    def _all_reduce(self, tensor, what):
        host, buf = self._buffer(tensor)
        request = self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        work = Work(self, what, request, self._copy_back(tensor, host))
        work.keep = host
        return work

    def _broadcast(self, tensor, root, what):
        host, buf = self._buffer(tensor)
        work = Work(self, what, self.comm.Ibcast(buf, root=root), self._copy_back(tensor, host))
        work.keep = host
        return work

    def _wait(self, work: Work) -> None:
        request, deadline, pause = work.handle, time.monotonic() + self.timeout, 0.0
        while not request.Test():
            if time.monotonic() > deadline:
                raise self._fail(work.what, TimeoutError(f"no completion within {self.timeout:.0f} s "
                                                         f"(dist_timeout)"))
            # Spin briefly (latency), then back off so a long wait does not burn a core.
            time.sleep(pause)
            pause = min(0.001, pause + 0.00002)

    def abort(self, code: int) -> None:
        self.comm.Abort(code)


def build_communicator(backend: str, info: LaunchInfo, store, timeout: float, device: torch.device,
                       monitor: FaultMonitor | None) -> Communicator:
    """The communicator for a backend name; ``mpi`` falls back to mpi4py when
    this PyTorch has no MPI process group (the PyPI wheels)."""
    if backend == "gloo":
        return TorchCommunicator("gloo", store, info.rank, info.world_size, timeout, monitor, device)
    if backend == "nccl":
        if device.type != "cuda":
            raise LaunchError("dist_backend nccl needs device=cuda (each rank uses the GPU of its local rank)")
        if not dist.is_nccl_available():
            raise LaunchError("dist_backend nccl: this PyTorch was built without NCCL")
        return TorchCommunicator("nccl", store, info.rank, info.world_size, timeout, monitor, device)
    if backend == "mpi":
        if dist.is_mpi_available():
            return TorchCommunicator("mpi", None, info.rank, info.world_size, timeout, monitor, device)
        try:
            comm = MPI4PyCommunicator(timeout, monitor, device)
        except ImportError:
            raise LaunchError("dist_backend mpi: this PyTorch has no MPI backend and mpi4py is not "
                              "installed (pip install mpi4py)") from None
        if (comm.rank, comm.world_size) != (info.rank, info.world_size):
            raise LaunchError(f"dist_backend mpi: MPI says rank {comm.rank} of {comm.world_size} but the "
                              f"{info.launcher} variables say rank {info.rank} of {info.world_size}; "
                              f"start the job with mpirun/mpiexec (or srun --mpi=pmix)")
        return comm
    raise LaunchError(f"unknown dist_backend {backend!r}: expected {', '.join(BACKENDS)} or auto")
