"""The GPU path on a machine without one: device binding from launcher
environments, GPU memory checks against a mocked ``mem_get_info``,
initialisation on a device equal to the host's, and the CUDA-only checks,
which skip with the reason where torch sees no GPU."""

from types import SimpleNamespace

import pytest
import torch

from reference.distributed import runtime
from reference.distributed.gpu_binding import check_distinct, gpu_index
from reference.distributed.launch import LaunchError, detect

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: torch sees no GPU here")


# --- device binding --------------------------------------------------------------------


def srun_env(rank, tasks=8, gpu=None):
    """srun --ntasks-per-node=8 --gpus-per-task=1: SLURM shows each task only its own GPU."""
    env = {"SLURM_PROCID": str(rank), "SLURM_STEP_NUM_TASKS": str(tasks), "SLURM_LOCALID": str(rank),
           "SLURM_STEP_TASKS_PER_NODE": str(tasks), "SLURM_JOB_NODELIST": "gpu01", "SLURM_JOB_ID": "9"}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


@pytest.mark.parametrize("rank", range(8))
def test_srun_gpus_per_task_each_rank_takes_its_one_visible_gpu(rank):
    env = srun_env(rank, gpu=str(rank))
    info = detect(env)
    assert info.local_world_size == 8
    assert gpu_index("cuda", info.rank, info.local_rank, info.local_world_size, 1,
                     env["CUDA_VISIBLE_DEVICES"]) == 0


@pytest.mark.parametrize("local_rank", range(8))
def test_one_node_with_eight_visible_gpus_binds_by_local_rank(local_rank):
    env = {"RANK": str(8 + local_rank), "WORLD_SIZE": "16", "LOCAL_RANK": str(local_rank),
           "LOCAL_WORLD_SIZE": "8", "MASTER_ADDR": "n0"}
    info = detect(env)
    assert gpu_index("cuda", info.rank, info.local_rank, info.local_world_size, 8, None) == local_rank
    assert gpu_index("cuda", info.rank, info.local_rank, info.local_world_size, 8, "0,1,2,3,4,5,6,7") == local_rank


def test_cuda_n_names_the_gpu_of_a_single_process():
    assert gpu_index("cuda:3", 0, 0, 1, 4, None) == 3
    assert gpu_index("cuda", 0, 0, 1, 4, None) == 0
    assert gpu_index("cuda:0", 0, 0, 1, 1, "5") == 0   # the one GPU CUDA_VISIBLE_DEVICES=5 shows
    with pytest.raises(LaunchError, match=r"device=cuda:4 but only 4 GPU\(s\) are visible .*0\.\.3"):
        gpu_index("cuda:4", 0, 0, 1, 4, None)
    # One rank per machine of a multi-machine job: cuda:N still names its GPU.
    assert gpu_index("cuda:2", 5, 0, 1, 8, None) == 2


def test_cuda_n_with_several_ranks_per_machine_is_refused_not_ignored():
    with pytest.raises(LaunchError, match="device=cuda:1 names one GPU, but 4 ranks run on this machine"):
        gpu_index("cuda:1", 2, 2, 4, 4, None)


@pytest.mark.parametrize("visible, env", [(2, None), (2, "0,1"), (1, None)])
def test_too_few_gpus_is_a_clear_error_not_ranks_stacked_on_one(visible, env):
    # mpirun -np 4 on a machine showing 2 GPUs (or 1, to everyone): local_rank % gpus would share them.
    with pytest.raises(LaunchError, match=rf"rank 3 \(local rank 3 of 4\): 4 ranks on this machine but "
                                          rf"{visible} GPU\(s\) visible"):
        gpu_index("cuda", 3, 3, 4, visible, env)
    with pytest.raises(LaunchError, match="no GPU is visible"):
        gpu_index("cuda", 0, 0, 1, 0, "")


def test_ranks_stacked_on_one_gpu_by_a_wrapper_are_named():
    check_distinct([(0, "a", "GPU-1"), (1, "a", "GPU-2"), (2, "b", "GPU-1")])  # same UUID, other host: fine
    with pytest.raises(LaunchError, match=r"ranks 1 and 3 were bound to the same GPU \(GPU-2 on a\)"):
        check_distinct([(0, "a", "GPU-1"), (1, "a", "GPU-2"), (3, "a", "GPU-2")])


@pytest.fixture
def cuda_settings(monkeypatch):
    """Record the process-wide CUDA settings instead of changing them for the other tests."""
    calls = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda mode: calls.append(("deterministic", mode)))
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.utils.deterministic.fill_uninitialized_memory)
    yield calls
    (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
     torch.utils.deterministic.fill_uninitialized_memory) = saved


def test_single_process_cuda_n_sets_the_current_device(monkeypatch, cuda_settings):
    calls = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(d))
    cfg = runtime.Config()
    cfg.device = "cuda:2"  # validate() would refuse it without a GPU; the binding itself is what is tested
    assert runtime.bind_device(cfg, env={}) == torch.device("cuda", 2)
    assert calls == [torch.device("cuda", 2)]


def test_tf32_and_determinism_are_applied_for_cuda_and_validated(cuda_settings):
    cfg = runtime.Config()
    cfg.allow_tf32, cfg.deterministic = True, True
    env = {}
    runtime.apply_cuda_settings(cfg, env)
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert cuda_settings == [("deterministic", True)] and env == {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    assert not torch.utils.deterministic.fill_uninitialized_memory
    cfg.allow_tf32, cfg.deterministic = False, False
    runtime.apply_cuda_settings(cfg, env := {"CUBLAS_WORKSPACE_CONFIG": ":16:8"})
    assert not torch.backends.cuda.matmul.allow_tf32
    assert cuda_settings == [("deterministic", True), ("deterministic", False)]
    with pytest.raises(runtime.ConfigError, match=r"command line: allow_tf32: TF32 is a GPU mode .*'cpu'"):
        runtime.Config.from_sources(None, ["allow_tf32=true"])


# --- GPU memory ------------------------------------------------------------------------

H200 = (139 * 2 ** 30, 140 * 2 ** 30)  # (free, total) as mem_get_info reports a fresh H200


def mlperf_config(**values):
    cfg = runtime.Config()
    cfg.update(dict(submission_division="open", **values), origin="test")
    return cfg


def test_gpu_memory_is_checked_against_the_gpu_not_the_host(monkeypatch):
    import yaml

    from conftest import ROOT
    sizes = yaml.safe_load(open(f"{ROOT}/configs/mlperf_closed.yaml"))["table_sizes"]
    asked = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: asked.append(device) or H200)
    monkeypatch.setattr(runtime, "available_memory_bytes", lambda: 2 ** 30)  # host RAM is not where they live
    gpu = torch.device("cuda", 3)
    # SGD: 89.5 GiB fits.
    runtime.check_table_memory(mlperf_config(optimizer="sgd", table_sizes=sizes), sum(sizes), device=gpu)
    assert asked == [gpu]
    # Dense Adagrad: 89.5 GiB of state on top of the weights.
    with pytest.raises(runtime.ConfigError, match=r"test: the embedding tables need 179\.1 GiB of GPU memory "
                                                  r"\(187,767,399 rows x 128 x 4 B = 89\.5 GiB of weights, plus "
                                                  r"89\.5 GiB of adagrad state\) but cuda:3 has 139\.0 GiB free"):
        runtime.check_table_memory(mlperf_config(optimizer="adagrad", table_sizes=sizes), sum(sizes), device=gpu)
    with pytest.raises(runtime.ConfigError, match="only 1.0 GiB of memory is available"):
        runtime.check_table_memory(mlperf_config(optimizer="sgd", table_sizes=sizes), sum(sizes))


def test_each_rank_checks_its_shards_against_its_own_gpu(monkeypatch):
    from reference.distributed.planner import plan_tables
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (10 * 2 ** 30, 16 * 2 ** 30))
    sizes = [40_000_000, 3_000_000, 1000]
    plan = plan_tables(sizes, 4, 128, "rowwise_adagrad")
    rows = sum(s.rows for s in plan.shards_of(0))  # ~10.8M rows, 5.2 GiB: fits in 10 - 2 GiB
    runtime.check_table_memory(mlperf_config(optimizer="rowwise_adagrad"), rows, 4, device=torch.device("cuda", 0))
    # Reserve: at least 2 GiB, or 5% of the GPU.
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (6 * 2 ** 30, 16 * 2 ** 30))
    with pytest.raises(runtime.ConfigError, match=r"but cuda:0 has 6\.0 GiB free of 16\.0 GiB, 2\.0 GiB of it kept"):
        runtime.check_table_memory(mlperf_config(optimizer="rowwise_adagrad"), rows, 4,
                                   device=torch.device("cuda", 0))


# --- tables built where they are used ------------------------------------------------------


def test_initialisation_is_the_same_for_any_thread_count(monkeypatch):
    from reference import embeddings
    monkeypatch.setattr(embeddings, "init_block_rows", lambda dim: 5)  # many blocks, several per table
    sizes = [37, 3, 64, 11]
    ranges, offset = [], 0
    for t, n in enumerate(sizes):
        ranges.append(embeddings.RowRange(offset, t, n, 0, n))
        offset += n
    one = torch.empty(offset, 4)
    embeddings.init_rows(one, 9, ranges, threads=1)
    for threads in (2, 7):
        many = torch.empty(offset, 4)
        embeddings.init_rows(many, 9, ranges, threads=threads)
        assert torch.equal(one, many)
    assert torch.equal(one, embeddings.FusedEmbeddingBag(sizes, 4, seed=9).weight)


def comm_of(rank: int, device: str) -> SimpleNamespace:
    """What building one rank's shards reads of its communicator (a lookup alone sends nothing)."""
    return SimpleNamespace(rank=rank, device=torch.device(device))


@needs_cuda
def test_tables_built_on_the_gpu_equal_the_hosts():
    from reference.distributed.planner import plan_tables
    from reference.distributed.sharded import ShardedEmbeddings
    from reference.embeddings import FusedEmbeddingBag
    sizes = [70_000, 3, 25_000, 7]
    host = FusedEmbeddingBag(sizes, 16, seed=5)
    gpu = FusedEmbeddingBag(sizes, 16, seed=5, device="cuda")
    assert gpu.weight.is_cuda and torch.equal(gpu.weight.cpu(), host.weight)
    plan = plan_tables(sizes, 3, 16)
    for rank in range(3):
        a, b = (ShardedEmbeddings(plan, comm_of(rank, device), 5) for device in ("cpu", "cuda"))
        assert torch.equal(a.weight, b.weight.cpu())


# --- NCCL semantics --------------------------------------------------------------------


class Handle:
    def __init__(self, done):
        self.done = done

    def is_completed(self):
        return self.done


def test_a_collective_past_its_deadline_is_diagnosed_though_no_wait_raises():
    import threading
    import time

    from reference.distributed.monitor import CollectiveWatch
    fired, event = [], threading.Event()
    watch = CollectiveWatch(0.2, lambda what, cause: (fired.append((what, str(cause))), event.set()), poll=0.02)
    now = time.monotonic()
    watch.track("gradient all-reduce (bucket 0)", Handle(True).is_completed, now)
    watch.track("embedding all-to-all (backward)", Handle(False).is_completed, now)
    assert event.wait(5)
    assert fired == [("embedding all-to-all (backward)", "not complete within 0 s (dist_timeout)")]
    watch.close()


def test_collectives_that_complete_are_never_reported():
    import time

    from reference.distributed.monitor import CollectiveWatch
    fired = []
    watch = CollectiveWatch(0.15, lambda what, cause: fired.append(what), poll=0.02)
    for i in range(50):
        watch.track(f"all-reduce {i}", Handle(True).is_completed, time.monotonic())
    late = Handle(False)
    watch.track("slow all-to-all", late.is_completed, time.monotonic())
    late.done = True  # completes before its deadline
    time.sleep(0.4)
    watch.close()
    assert fired == []


def test_a_timed_out_collective_names_the_rank_and_ends_the_job():
    from reference.distributed.communicator import Communicator
    from reference.distributed.errors import DistributedError

    class Monitor:
        def __init__(self):
            self.reported, self.ended = [], []
            self.on_peer_failure = self.ended.append

        def failure(self, what, cause):
            return DistributedError(f"rank 1: {what} failed: rank(s) 0 are alive but stuck behind [{cause}]")

        def report_failure(self, message):
            self.reported.append(message)

    monitor = Monitor()
    comm = Communicator(monitor, 10.0)
    comm.rank = 1
    comm._timed_out("embedding all-to-all (forward)", TimeoutError("not complete within 10 s (dist_timeout)"))
    expected = ("rank 1: embedding all-to-all (forward) failed: rank(s) 0 are alive but stuck behind "
                "[not complete within 10 s (dist_timeout)]")
    assert monitor.reported == monitor.ended == [expected]


def test_barrier_on_a_gpu_waits_for_the_stream(monkeypatch):
    from reference.distributed.communicator import Communicator
    synced = []

    class Stream:
        def synchronize(self):
            synced.append("stream")

    class Done:
        def wait(self):
            synced.append("wait")

    comm = Communicator(None, 10.0)
    comm.device = torch.device("cuda", 0)
    monkeypatch.setattr(torch, "zeros", lambda *a, **k: torch.empty(0))
    monkeypatch.setattr(comm, "all_reduce", lambda tensor, what: Done())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: Stream())
    comm.barrier()
    assert synced == ["wait", "stream"]  # the host leaves only once the GPU has the result


# --- no host syncs in a step ---------------------------------------------------------------


@pytest.mark.parametrize("rank", [0, 1])
def test_split_tables_looked_up_without_nonzero_give_the_same_outputs_and_updates(rank):
    from reference.distributed.planner import plan_tables
    from reference.distributed.sharded import ShardedEmbeddings
    plan = plan_tables([3000, 40, 7], 2, 4)
    assert plan.split_tables() == [0]
    ids_all = torch.stack([torch.randint(0, n, (256,), generator=torch.Generator().manual_seed(n))
                           for n in (3000, 40, 7)], dim=1)
    results = []
    for sync_free in (False, True):
        emb = ShardedEmbeddings(plan, comm_of(rank, "cpu"), seed=2)
        emb.sync_free = sync_free  # the GPU's code, run on the host
        ids = ids_all[:, emb.columns]
        out = emb.lookup(ids)
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        (out * upstream).sum().backward()
        before = emb.weight.detach().clone()
        with torch.no_grad():
            emb.weight.add_(emb.weight.grad, alpha=-0.5)  # SGD's sparse update
        results.append((out.detach(), emb.weight.detach(), before))
    (out_a, w_a, _), (out_b, w_b, _) = results
    assert torch.equal(out_a, out_b) and torch.equal(w_a, w_b)


@needs_cuda
def test_a_training_step_on_the_gpu_does_not_sync_the_host(easy_data, tmp_path):
    from conftest import tiny_config
    from reference import train
    from reference.trainer import Trainer
    for optimizer in ("sgd", "rowwise_adagrad"):
        cfg = tiny_config(easy_data, tmp_path, device="cuda", optimizer=optimizer, submission_division="open")
        parallel = runtime.SingleProcess(cfg)
        sizes = train.resolve_table_sizes(cfg)
        model = parallel.build_model(cfg, sizes)
        data = train.open_split(cfg, cfg.train_file, cfg.batch_size, sizes)
        trainer = Trainer(cfg, model, data, data, None, parallel=parallel)
        with trainer.batches(data, range(6)) as batches:
            for i, batch in enumerate(batches):
                if i >= 2:  # after the warm-up steps (lazy optimiser state, cuBLAS handles)
                    torch.cuda.synchronize()
                    torch.cuda.set_sync_debug_mode("error")
                try:
                    trainer.train_step(batch)
                finally:
                    torch.cuda.set_sync_debug_mode("default")


# --- determinism and the one-shot check ----------------------------------------------------


@needs_cuda
def test_a_seed_repeats_its_losses_bit_for_bit_on_the_gpu(easy_data, tmp_path):
    from conftest import tiny_config
    from reference import train
    runs = [train.run(tiny_config(easy_data, tmp_path, device="cuda", optimizer="rowwise_adagrad",
                                  submission_division="open", log_every=1), out=open("/dev/null", "w"))
            for _ in range(2)]
    assert runs[0].losses == runs[1].losses and runs[0].final["auc"] == runs[1].final["auc"]


@pytest.mark.slow
def test_gpu_check_runs_what_the_cpu_can_check_and_says_why_it_skips_the_rest():
    import os
    import subprocess
    import sys

    from conftest import ROOT
    if os.environ.get("DLRM_IN_GPU_CHECK"):
        pytest.skip("run by gpu_check itself (it must not start itself again)")
    done = subprocess.run(["scripts/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "DLRM_PYTHON": sys.executable})
    assert done.returncode == 0, done.stdout + done.stderr
    nested = subprocess.run(["scripts/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "DLRM_PYTHON": sys.executable, "DLRM_IN_GPU_CHECK": "1"})
    assert nested.returncode == 2 and "refusing to run inside another gpu_check" in nested.stderr
    table = done.stdout.split("\ncheck ")[1]
    assert "1-rank run, table split in two shards, vs CPU" in table and "PASS" in table
    if not torch.cuda.is_available():
        assert table.count("SKIP    no CUDA device: torch sees no GPU here") == 4


def test_ranks_publish_their_gpus_and_a_shared_one_is_refused(monkeypatch):
    import torch.distributed as dist

    from reference.distributed.launch import LaunchInfo

    class Props:
        def __init__(self, uuid):
            self.uuid = uuid

    store = dist.HashStore()
    store.set("gpu/1", "node7\tGPU-aaaa")  # rank 1 already checked in, on GPU-aaaa
    info = LaunchInfo("SLURM", 0, 2, 0, 2, "node7", 29500)
    monkeypatch.setattr(runtime.socket, "gethostname", lambda: "node7")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props("GPU-bbbb"))
    runtime.check_gpus_distinct(store, info, torch.device("cuda", 0), 5.0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props("GPU-aaaa"))
    with pytest.raises(LaunchError, match=r"ranks 0 and 1 were bound to the same GPU \(GPU-aaaa on node7\)"):
        runtime.check_gpus_distinct(store, info, torch.device("cuda", 0), 5.0)
    lonely = dist.HashStore()
    with pytest.raises(LaunchError, match=r"rank 0: rank\(s\) 1 did not publish their GPU within 0 s"):
        runtime.check_gpus_distinct(lonely, info, torch.device("cuda", 0), 0.2)


def test_nccl_waits_are_tracked_by_an_event_not_the_handle(monkeypatch):
    # The handle keeps the collective's tensors alive; the event recorded after the wait does not.
    from reference.distributed.communicator import TorchCommunicator, Work
    tracked, recorded = [], []

    class Event:
        def record(self, stream):
            recorded.append(stream)

        def query(self):
            return True

    class Watch:
        def track(self, what, completed, issued):
            tracked.append((what, completed(), issued))

    class Waited:
        def wait(self):
            recorded.append("waited")

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: "stream")
    comm = object.__new__(TorchCommunicator)
    comm.watch, comm.device = Watch(), torch.device("cuda", 0)
    work = Work(comm, "embedding all-to-all (forward)", Waited())
    work.wait()
    assert recorded == ["waited", "stream"] and tracked == [("embedding all-to-all (forward)", True, work.issued)]


def test_the_deadline_runs_from_when_the_collective_was_issued():
    import threading
    import time

    from reference.distributed.monitor import CollectiveWatch
    event = threading.Event()
    watch = CollectiveWatch(30.0, lambda what, cause: event.set(), poll=0.02)
    watch.track("loss all-reduce", lambda: False, time.monotonic() - 31.0)  # waited on long after its start
    assert event.wait(5)
    watch.close()
