"""The rendezvous: the store every rank meets in (a TCPStore hosted by rank 0,
or by torchrun's agent), the check-in, and the check that every rank runs
with the same values (settings, table sizes) before any collective depends on them."""

from __future__ import annotations

import json
import os
import socket
import time
from datetime import timedelta

import torch.distributed as dist

from .errors import first_line, rank_list
from .launch import LaunchError, LaunchInfo
from .monitor import HEARTBEAT_SECONDS


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
        return dist.TCPStore(addr, port, info.world_size, is_master=False, timeout=timedelta(seconds=timeout),
                             wait_for_workers=False)
    except (RuntimeError, dist.DistStoreError) as e:
        raise LaunchError(f"rank {info.rank}: could not reach rank 0's rendezvous at {addr}:{port} within "
                          f"{timeout:.0f} s (dist_timeout): {first_line(e)}. Is rank 0 running, and are "
                          f"MASTER_ADDR/MASTER_PORT the same for every rank?") from None


def _listen(addr: str, port: int, info: LaunchInfo, timeout: float) -> dist.TCPStore:
    try:
        return dist.TCPStore(addr, port, info.world_size, is_master=True, timeout=timedelta(seconds=timeout),
                             wait_for_workers=False)
    except (RuntimeError, dist.DistStoreError) as e:
        text = str(e)
        if "in use" in text.lower() or "EADDRINUSE" in text:
            raise LaunchError(f"rank 0 cannot listen on {addr}:{port}: the port is already in use "
                              f"(another job?); set MASTER_PORT to a free port") from None
        raise LaunchError(f"rank 0 cannot listen on {addr}:{port}: {first_line(e)}") from None



def join(store: dist.Store, info: LaunchInfo, settings: dict, timeout: float) -> None:
    """Check in, wait for every rank, and check they all run the same settings."""
    try:
        _join(store, info, settings, timeout)
    except (RuntimeError, dist.DistStoreError) as e:
        if isinstance(e, LaunchError):
            raise
        raise LaunchError(f"rank {info.rank}: lost the rendezvous with rank 0 during startup "
                          f"({first_line(e)}); see rank 0's error") from None


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
                          f"({first_line(e)}); see rank 0's error") from None


def _agree(store: dist.Store, info: LaunchInfo, name: str, values: dict, timeout: float, advice: str) -> None:
    store.set(f"{name}/{info.rank}", json.dumps(values, sort_keys=True, default=str))
    keys = [f"{name}/{r}" for r in range(info.world_size)]
    deadline = time.time() + timeout + (2 * HEARTBEAT_SECONDS if info.rank == 0 else 0)
    while not store.check(keys):
        if time.time() > deadline:
            missing = [r for r, k in enumerate(keys) if not store.check([k])]
            raise LaunchError(f"rank(s) {rank_list(missing)} did not join within {timeout:.0f} s (dist_timeout); "
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
