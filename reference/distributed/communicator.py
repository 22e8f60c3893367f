"""The few collectives the trainer needs, behind one interface, for every backend.

* ``gloo`` and ``nccl`` (and ``mpi`` where PyTorch was built with MPI):
  ``torch.distributed``. All of them implement ``all_to_all_single`` with
  uneven splits and ``all_reduce``, the only collectives used here, so no
  backend meets an unsupported collective.
* ``mpi`` with the stock PyPI wheels (no MPI inside torch): mpi4py's
  non-blocking ``Ialltoallv`` / ``Iallreduce`` / ``Ibcast`` on the same tensors.

Every wait has a deadline (``dist_timeout``); a failed or late collective is
diagnosed by the fault monitor (monitor.py), which names the rank at fault.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .errors import DistributedError, first_line
from .launch import LaunchError, LaunchInfo
from .monitor import CollectiveWatch, FaultMonitor

BACKENDS = ("gloo", "nccl", "mpi")


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
            return DistributedError(f"rank {self.rank}: {what} failed: {first_line(cause)}")
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
            dist.init_process_group(backend, timeout=timedelta(seconds=group_timeout), **kwargs)
            self.exchange_group = None if backend == "mpi" else dist.new_group(
                backend=backend, timeout=timedelta(seconds=group_timeout))
        except (RuntimeError, ValueError) as e:
            raise LaunchError(f"rank {rank}: cannot start the {backend} process group: {first_line(e)}") from None
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
        work.handle = None  # a torch Work keeps its process group alive: see close()
        if self.watch is not None:  # NCCL: the wait only made the stream wait; the event completes with it
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.device))
            self.watch.track(work.what, event.query, work.issued)

    def close(self) -> None:
        """Ends the process groups while Python still runs. destroy_process_group only forgets
        them: a gloo group's worker threads stop when its last reference goes, ours or a torch
        Work's. Left to the interpreter's exit, a worker releasing its last collective's tensors
        needs the interpreter as it is torn down, and the process aborts after a run that went
        well ("terminate called without an active exception", in ProcessGroupGloo::runLoop; 1 in
        about 15 resumed 2-rank runs here before this)."""
        if self.watch is not None:
            self.watch.close()
        super().close()
        if dist.is_initialized():
            dist.destroy_process_group()
        self.exchange_group = None


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
