"""The distributed pieces with real gloo ranks on localhost, in seconds: the
butterfly exchange through the one DLRM, the gradient reducer, and the fault
monitor's diagnosis. Ranks are spawned processes (a process group is one per
process) or, where only the store is involved, threads. The launcher runs in
test_distributed.py stay end-to-end."""

import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from reference.config import Config
from reference.data.jagged import JaggedIds
from reference.data.loader import sample_range
from reference.data.random_batches import RandomDataset, RandomSpec
from reference.distributed import monitor
from reference.distributed.communicator import build_communicator
from reference.distributed.data_parallel import GradientReducer
from reference.distributed.errors import DistributedError
from reference.distributed.launch import LaunchInfo
from reference.distributed.monitor import CollectiveWatch, FaultMonitor
from reference.distributed.planner import plan_tables
from reference.distributed.rendezvous import open_store
from reference.distributed.sharded import ShardedEmbeddings
from reference.model import DLRM

# Over 3 ranks the planner cuts table 0 in three row ranges; over 2 it keeps these tables whole.
SPLIT = [2000, 3, 25, 7, 60, 3, 12, 5, 9, 50, 30, 20, 4, 11, 18, 6, 4, 8, 5, 45, 35, 40, 15, 10, 6, 5]
WHOLE = [40, 3, 25, 7, 60, 3, 12, 5]
DIM = 4
TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(worker, world: int, *args) -> None:
    """``worker(rank, world, port, *args)`` in ``world`` spawned processes; an
    exception in any of them fails the test, with that rank's traceback."""
    mp.start_processes(worker, args=(world, free_port(), *args), nprocs=world, start_method="spawn")


def join_gloo(rank: int, world: int, port: int, with_monitor: bool = False):
    """This rank's gloo communicator, through the trainer's own rendezvous (rank 0 hosts the store)."""
    torch.set_num_threads(1)  # the ranks share two cores
    info = LaunchInfo("test", rank, world, rank, world, "127.0.0.1", port)
    store = open_store(info, TIMEOUT, env={})
    watcher = FaultMonitor(store, rank, world, TIMEOUT) if with_monitor else None
    return build_communicator("gloo", info, store, TIMEOUT, torch.device("cpu"), watcher)


def global_batch(tables: list[int], size: int = 50, bag_size: int = 1):
    """Dense features, ids (bags of 1 .. bag_size when bag_size > 1) and labels."""
    g = torch.Generator().manual_seed(11)
    dense = torch.randn(size, 13, generator=g)
    ids = torch.stack([torch.randint(0, n, (size,), generator=g) for n in tables], dim=1)
    labels = torch.randint(0, 2, (size,), generator=g).float()
    if bag_size > 1:
        ids = RandomDataset(RandomSpec(tables, 13, bag_size), size, 1, seed=11, split="train").batch(0).ids
    return dense, ids, labels


def model_config() -> Config:
    cfg = Config()
    cfg.update(dict(embedding_dim=DIM, bottom_mlp=[13, 8, DIM], top_mlp=[8, 1], seed=5), origin="test")
    return cfg.validate()


# --- the exchange, through the one DLRM -----------------------------------------------------


def exchange_rank(rank: int, world: int, port: int, tables: list[int], split: list[int], bag_size: int) -> None:
    comm = join_gloo(rank, world, port)
    cfg = model_config()
    plan = plan_tables(tables, world, DIM)
    assert plan.split_tables() == split, plan.split_tables()
    dense, ids, labels = global_batch(tables, bag_size=bag_size)  # 50 samples: uneven over 3 ranks
    lo, hi = sample_range(len(labels), world, rank)

    whole = DLRM.from_config(cfg, tables, "aten")
    F.binary_cross_entropy_with_logits(whole(dense, ids), labels).backward()
    with torch.no_grad():
        expected_logits = whole(dense, ids)[lo:hi]
        expected_vectors = whole.embeddings(ids)[lo:hi]
    table_grad = whole.embeddings.weight.grad.to_dense()
    starts = [sum(tables[:t]) for t in range(len(tables))]

    for sync_free in (False, True):  # the host's lookup of split tables, and the GPU's (no nonzero())
        model = DLRM.from_config(cfg, tables, "aten", embeddings=ShardedEmbeddings(plan, comm, cfg.seed))
        emb = model.embeddings
        emb.sync_free = sync_free
        mine = ids.tables(emb.columns) if isinstance(ids, JaggedIds) else ids[:, emb.columns]
        with torch.no_grad():  # the lookup alone: a row, plus zeros from the other owners of a split table
            vectors = emb.finish(emb.start(mine))
        if bag_size == 1:
            assert torch.equal(vectors, expected_vectors)
        else:  # a split table's bag is summed in parts, on its shards' owners, then added up here
            torch.testing.assert_close(vectors, expected_vectors, rtol=1e-5, atol=1e-6)

        reducer = GradientReducer(model.dense_parameters(), comm)
        reducer.start()
        logits = model(dense[lo:hi], mine)
        # This rank's share of the global batch's mean loss: the shares sum to one process's loss.
        loss = F.binary_cross_entropy_with_logits(logits, labels[lo:hi], reduction="sum") / len(labels)
        loss.backward()
        reducer.finish()

        torch.testing.assert_close(logits, expected_logits, rtol=1e-6, atol=1e-7)
        rows = [table_grad[starts[s.table] + s.lo:starts[s.table] + s.lo + s.rows] for s in emb.shards]
        expected_grad = torch.cat(rows)
        assert expected_grad.abs().sum(dim=1).gt(0).sum() >= hi - lo  # rows of this batch: real gradients
        torch.testing.assert_close(emb.weight.grad.to_dense(), expected_grad, rtol=1e-5, atol=1e-9)
        # A split table's bags, summed in another order, move the MLPs' gradients by ~1e-8 (of up to 0.3).
        atol = 1e-9 if bag_size == 1 else 1e-7
        for (name, ours), theirs in zip(model.named_parameters(), whole.parameters(), strict=True):
            if name != "embeddings.weight":  # summed over ranks by the reducer
                torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-5, atol=atol, msg=name)
    comm.close()


@pytest.mark.parametrize("world, tables, split, bag_size", [(2, WHOLE, [], 1), (3, SPLIT, [0], 1), (2, SPLIT, [0], 4)],
                         ids=["2 ranks, whole tables", "3 ranks, table 0 split", "2 ranks, table 0 split, bags"])
def test_the_sharded_model_computes_what_one_process_does(world, tables, split, bag_size):
    run_ranks(exchange_rank, world, tables, split, bag_size)


# --- the gradient reducer --------------------------------------------------------------------


def rank_weights(rank: int, sizes: list[int]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    return [torch.randn(n, generator=g) for n in sizes]


def reducer_rank(rank: int, world: int, port: int) -> None:
    comm = join_gloo(rank, world, port)
    sizes = [10, 300, 5, 1000]
    params = [torch.nn.Parameter(torch.zeros(n)) for n in sizes]
    # Reverse order, 4,100 bytes a bucket: [p3, p2] and [p1, p0]; p2 is never used, so its
    # bucket only goes out in finish().
    reducer = GradientReducer(params, comm, bucket_bytes=4100)
    assert [[p.numel() for p in bucket] for bucket in reducer.buckets] == [[1000, 5], [300, 10]]
    used = (0, 1, 3)

    def backward(weights):
        sum((w * params[i]).sum() for i, w in enumerate(weights) if i in used).backward()

    for step in range(2):  # the second step writes into the gradients the first left
        reducer.start()
        backward(rank_weights(rank + 10 * step, sizes))
        reducer.finish()
        for i in used:
            expected = sum(rank_weights(r + 10 * step, sizes)[i] for r in range(world))
            torch.testing.assert_close(params[i].grad, expected, rtol=1e-6, atol=1e-6)  # summed in another order
            params[i].grad = None
        assert torch.equal(params[2].grad, torch.zeros(5))  # the zeros every rank sent for it
        params[2].grad = None
    # Outside start()/finish() (an evaluation pass) nothing is sent: the gradients stay this rank's.
    backward(rank_weights(rank, sizes))
    assert torch.equal(params[3].grad, rank_weights(rank, sizes)[3])
    comm.close()


def test_the_reducer_sums_every_bucket_over_the_ranks():
    run_ranks(reducer_rank, 3)


# --- the fault monitor ------------------------------------------------------------------------


@pytest.fixture
def start_monitors(monkeypatch):
    """``start(timeout)``: three ranks' fault monitors (threads) on one rendezvous store, beating
    every 0.2 s instead of 1 s, once each has beaten; with what each was told to end with."""
    monkeypatch.setattr(monitor, "HEARTBEAT_SECONDS", 0.2)
    port = free_port()
    stores = [open_store(LaunchInfo("test", r, 3, r, 3, "127.0.0.1", port), TIMEOUT, env={}) for r in range(3)]
    started: list[FaultMonitor] = []

    def start(timeout: float = 2.0):
        ended: dict[int, list[str]] = {r: [] for r in range(3)}
        started.extend(FaultMonitor(s, r, 3, timeout, on_peer_failure=ended[r].append) for r, s in enumerate(stores))
        wait_for(lambda: stores[0].check([f"heartbeat/{r}" for r in range(3)]))
        return started, ended

    yield start
    for m in started:
        m.close()


def stop(m: FaultMonitor) -> None:
    """Stop a rank's heartbeat, as in a killed or suspended process."""
    m.close()


def test_close_waits_for_the_background_threads(start_monitors):
    """A daemon thread still inside a store call when the interpreter exits aborts the
    process in C++ ("terminate called without an active exception"): close() joins."""
    monitors, _ = start_monitors()
    threads = [m._thread for m in monitors]
    assert all(t.is_alive() for t in threads)
    for m in monitors:
        m.close()
    assert not any(t.is_alive() for t in threads)
    watch = CollectiveWatch(60.0, lambda what, cause: None, poll=0.05)
    watch.close()
    assert not watch._thread.is_alive()


def threads_now() -> int:
    return len(os.listdir("/proc/self/task"))


def close_rank(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    info = LaunchInfo("test", rank, world, rank, world, "127.0.0.1", port)
    store = open_store(info, TIMEOUT, env={})
    torch.ones(4).sum()  # threads torch starts on first use, counted before
    before = threads_now()
    comm = build_communicator("gloo", info, store, TIMEOUT, torch.device("cpu"), None)
    output, total = torch.empty(4), torch.ones(3)
    # Kept past close(), as a trainer may keep its last collectives.
    works = [comm.all_to_all(output, torch.arange(4.0) + 10 * rank, [2, 2], [2, 2]), comm.all_reduce(total)]
    for work in works:
        work.wait()
    comm.barrier()
    assert output.tolist() == ([0.0, 1.0, 10.0, 11.0] if rank == 0 else [2.0, 3.0, 12.0, 13.0])
    assert total.tolist() == [2.0] * 3 and threads_now() > before  # gloo's workers
    comm.close()
    assert threads_now() == before, "a process group's threads outlived close()"


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_close_stops_every_process_groups_threads():
    """A gloo group's worker threads left running into the interpreter's exit abort the process
    after a run that went well (a worker releasing tensors needs the interpreter): close() ends
    them, the exchange group's and those kept alive by a collective's handle too."""
    run_ranks(close_rank, 2)


def wait_for(condition, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "not within the time limit"
        time.sleep(0.02)


def test_a_rank_that_reported_a_failure_is_named_by_the_others(start_monitors):
    monitors, ended = start_monitors()
    monitors[1].report_failure("rank 1: CUDA out of memory")
    error = monitors[0].failure("gradient all-reduce (bucket 0)", RuntimeError("Connection closed by peer\ntrace"))
    assert isinstance(error, DistributedError)
    assert str(error) == ("rank 0: gradient all-reduce (bucket 0) failed because rank 1 stopped with an error: "
                          "rank 1: CUDA out of memory")
    # The heartbeat threads end the ranks still running, which may be inside a collective forever.
    wait_for(lambda: ended[0] and ended[2])
    assert ended[0] == ["rank 0: stopping because rank 1 failed: rank 1: CUDA out of memory"]
    assert ended[2] == ["rank 2: stopping because rank 1 failed: rank 1: CUDA out of memory"]
    monitors[1].close()  # before it finds the others silent (they ended)
    assert ended[1] == []


def test_a_silent_rank_is_named_by_the_others(start_monitors):
    monitors, ended = start_monitors()  # silence limit: 5 heartbeats (1 s)
    stop(monitors[2])
    wait_for(lambda: ended[0] and ended[1])
    for r in (0, 1):
        assert "rank(s) 2 stopped answering (no heartbeat for 1 s: died, killed or suspended)" in ended[r][0]
    assert ended[2] == []


def test_a_failed_collective_names_a_silent_or_a_lagging_rank(start_monitors):
    monitors, _ = start_monitors(timeout=60.0)  # the threads' own limit stays out of the way
    monitors[0].progress = monitors[2].progress = 7
    monitors[1].progress = 6
    time.sleep(0.5)  # the steps are published with the next beats
    error = monitors[0].failure("loss all-reduce", RuntimeError("timed out"))
    assert str(error) == ("rank 0: loss all-reduce failed: rank(s) 1 are alive but stuck behind "
                          "(steps rank 0: 7, rank 1: 6, rank 2: 7) [timed out]")
    stop(monitors[1])
    error = monitors[2].failure("embedding all-to-all (forward)", RuntimeError("timed out"))
    assert str(error) == ("rank 2: embedding all-to-all (forward) failed: rank(s) 1 stopped answering (no "
                          "heartbeat for 0.5 s: died, killed or suspended) [timed out]")


def dead_peer_rank(rank: int, world: int, port: int) -> None:
    monitor.HEARTBEAT_SECONDS = 0.2  # a fresh process: the diagnosis waits 2.5 beats, not 2.5 s
    comm = join_gloo(rank, world, port, with_monitor=True)
    total = torch.ones(4)
    comm.all_reduce(total).wait()  # the connections are up
    if rank == 1:
        os._exit(0)  # dies without a word (exit 0: the launcher here would stop rank 0 on any other)
    t0 = time.monotonic()
    with pytest.raises(DistributedError) as caught:
        comm.all_reduce(total, "gradient all-reduce (bucket 0)").wait()
    assert str(caught.value).startswith("rank 0: gradient all-reduce (bucket 0) failed: rank(s) 1 stopped "
                                        "answering"), str(caught.value)
    assert time.monotonic() - t0 < TIMEOUT / 2  # diagnosed when gloo sees the peer gone, not at the deadline
    comm.monitor.close()


def test_a_collective_with_a_dead_peer_raises_an_error_naming_it():
    run_ranks(dead_peer_rank, 2)
