"""How the trainer runs: as one process, or as one of several ranks.

The Trainer talks to one of these two objects, through the interface they
share (:class:`Parallel`), and never branches on the world size itself: they
build the model, read this process's part of a batch, turn a local loss into
a global one with its gradients, and turn this process's evaluation scores
into the global metrics.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from datetime import timedelta
from typing import Protocol

import torch
import torch.distributed as dist

from ..config import Config, ConfigError
from ..data.binary import DataError
from ..data.loader import Batch, Dataset
from ..dot_kernels import resolve_interaction_kernel
from ..metrics import evaluate_scores
from ..model import DLRM, resolve_linear_kernel
from ..native_build import NativeKernelError
from ..precision import Precision, PrecisionError, build_precision
from ..row_kernels import resolve_sparse_update_kernel
from .communicator import Communicator, build_communicator
from .data_parallel import GradientReducer
from .gpu_binding import check_distinct, gpu_index
from .launch import LaunchError, LaunchInfo, detect
from .monitor import HEARTBEAT_SECONDS, FaultMonitor
from .planner import Plan, PlanError, plan_tables, state_bytes_per_row
from .rendezvous import agree, join, open_store
from .sharded import ShardedEmbeddings

GIB = 2 ** 30


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo; None where that is not known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# Kept free on a GPU beyond the tables: the CUDA context, activations, the all-to-all and
# gradient buffers, the allocator's slack (a fraction of the GPU, at least this much).
GPU_WORKSPACE_BYTES = 2 * GIB
GPU_WORKSPACE_SHARE = 0.05


def gpu_free_bytes(device: torch.device) -> tuple[int, int]:
    """(free, total) bytes of a GPU's memory, as the driver reports them."""
    return torch.cuda.mem_get_info(device)


def check_table_memory(cfg: Config, rows: int, processes_here: int = 1, what: str = "the embedding tables",
                       device: torch.device = torch.device("cpu")) -> None:
    """Refuse, before allocating, tables that cannot fit: the weights are
    allocated lazily (and the optimiser's state at the first step), so the
    failure would otherwise be an OOM kill, or a CUDA out-of-memory error, mid-run.
    On a GPU the tables live in the GPU's memory (one GPU per rank), on the host in RAM."""
    weights = rows * cfg.embedding_dim * 4
    state = rows * state_bytes_per_row(cfg.optimizer, cfg.embedding_dim)
    need = weights + state
    if device.type == "cuda":
        parts = (f"{rows:,} rows x {cfg.embedding_dim} x 4 B = {weights / GIB:.1f} GiB of weights, plus "
                 f"{state / GIB:.1f} GiB of {cfg.optimizer} state")
        free, total = gpu_free_bytes(device)
        reserve = max(GPU_WORKSPACE_BYTES, int(GPU_WORKSPACE_SHARE * total))
        if need > free - reserve:
            raise ConfigError(f"{cfg.where('table_sizes')}: {what} need {need / GIB:.1f} GiB of GPU memory "
                              f"({parts}) but {device} has {free / GIB:.1f} GiB free of {total / GIB:.1f} GiB, "
                              f"{reserve / GIB:.1f} GiB of it kept for activations and buffers; use more GPUs "
                              f"(ranks), rowwise_adagrad or sgd (optimizer) rather than adagrad, "
                              f"embedding_memory_per_rank, or a smaller max_ind_range")
        return
    have = available_memory_bytes()
    if have is not None and need * processes_here > have:
        share = f" ({processes_here} ranks on this machine)" if processes_here > 1 else ""
        raise ConfigError(f"{cfg.where('table_sizes')}: {what} need {need / GIB:.1f} GiB "
                          f"({rows:,} rows x {cfg.embedding_dim} x 4 B, plus {cfg.optimizer} state) but only "
                          f"{have / GIB:.1f} GiB of memory is available{share}; use a machine with more "
                          f"memory, more ranks or a smaller max_ind_range")


def make_precision(cfg: Config, device: torch.device) -> Precision:
    try:
        return build_precision(cfg.precision, device)
    except PrecisionError as e:
        raise ConfigError(f"{cfg.where('precision')}: precision: {e}") from None


def make_linear_kernel(cfg: Config) -> tuple[str, str]:
    try:
        return resolve_linear_kernel(cfg)
    except ValueError as e:
        raise ConfigError(f"{cfg.where('linear_kernel')}: linear_kernel: {e}") from None


def make_sparse_update_kernel(cfg: Config, device: torch.device) -> tuple[str, str]:
    """The optimiser's kernel for the embedding rows and why (each rank updates its own rows)."""
    try:
        return resolve_sparse_update_kernel(cfg.sparse_update_kernel, device)
    except NativeKernelError as e:
        raise ConfigError(f"{cfg.where('sparse_update_kernel')}: sparse_update_kernel: {e}") from None


def make_interaction_kernel(cfg: Config, device: torch.device) -> tuple[str, str]:
    """The dot interaction's kernel and why (each rank computes its own samples' interaction)."""
    try:
        return resolve_interaction_kernel(cfg.interaction_kernel, cfg.interaction, device, cfg.precision)
    except NativeKernelError as e:
        raise ConfigError(f"{cfg.where('interaction_kernel')}: interaction_kernel: {e}") from None


def make_plan(cfg: Config, table_sizes: list[int], world_size: int) -> Plan:
    budget = None if cfg.embedding_memory_per_rank is None else int(cfg.embedding_memory_per_rank * GIB)
    try:
        return plan_tables(table_sizes, world_size, cfg.embedding_dim, cfg.optimizer, budget)
    except PlanError as e:
        raise ConfigError(f"{cfg.where('embedding_memory_per_rank')}: {e}") from None


def bind_device(cfg: Config, rank: int = 0, local_rank: int = 0, local_world_size: int = 1,
                env=os.environ) -> torch.device:
    """This process's device, made current (see gpu_binding), with the CUDA settings of the config."""
    if not cfg.device.startswith("cuda"):
        return torch.device("cpu")
    apply_cuda_settings(cfg, env)
    index = gpu_index(cfg.device, rank, local_rank, local_world_size, torch.cuda.device_count(),
                      env.get("CUDA_VISIBLE_DEVICES"))
    device = torch.device("cuda", index)
    try:
        torch.cuda.set_device(device)
    except RuntimeError as e:
        raise LaunchError(f"rank {rank}: cannot use {device}: {e}") from None
    return device


def apply_cuda_settings(cfg: Config, env=os.environ) -> None:
    """TF32 and determinism, before the first CUDA kernel (cuBLAS reads its
    workspace setting when its first handle is made)."""
    torch.backends.cuda.matmul.allow_tf32 = cfg.allow_tf32
    torch.backends.cudnn.allow_tf32 = cfg.allow_tf32
    torch.use_deterministic_algorithms(cfg.deterministic)
    if cfg.deterministic:
        env.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # Determinism is what is asked for, not NaN-filled fresh buffers (a pass over every allocation).
        # A property of the module's class (torch/utils/deterministic.py), which mypy does not see.
        torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]


def check_gpus_distinct(store, info: LaunchInfo, device: torch.device, timeout: float) -> None:
    """Every rank publishes its GPU's UUID; two ranks of one machine on one GPU are refused."""
    store.set(f"gpu/{info.rank}", f"{socket.gethostname()}\t{torch.cuda.get_device_properties(device).uuid}")
    keys = [f"gpu/{r}" for r in range(info.world_size)]
    try:
        store.wait(keys, timedelta(seconds=timeout))
    except (RuntimeError, dist.DistStoreError) as e:
        missing = [r for r, k in enumerate(keys) if not store.check([k])]
        raise LaunchError(f"rank {info.rank}: rank(s) {', '.join(map(str, missing))} did not publish their GPU "
                          f"within {timeout:.0f} s (dist_timeout): {e}") from None
    check_distinct([(r, *store.get(k).decode().split("\t", 1)) for r, k in enumerate(keys)])


class Parallel(Protocol):
    """What the trainer and ``train.run`` use of the runtime: :class:`SingleProcess`,
    or :class:`MultiProcess` (one rank of several)."""

    device: torch.device  # where the model and the batches live
    precision: Precision
    rank: int
    world_size: int
    is_root: bool  # rank 0: the one that writes the log, the summary and the progress
    linear_kernel: str  # the MLPs' GEMM kernel (the same on every rank), and why it was chosen
    kernel_reason: str

    def check_memory(self, cfg: Config, table_sizes: list[int]) -> None:
        """Refuse, before allocating them, tables (this process's shards of them) that cannot fit."""

    def check_data(self, *datasets: Dataset | None) -> None:
        """Refuse data whose batches cannot be shared out over the ranks."""

    def build_model(self, cfg: Config, table_sizes: list[int]) -> DLRM:
        """The model this process trains: every table, or this rank's shards of them."""

    def batch(self, data: Dataset, index: int) -> Batch:
        """This process's part of batch ``index``: its samples, and the ids its tables look up."""

    def backward(self, loss: torch.Tensor, step: int) -> None:
        """The gradients of the global batch from this process's share of its loss."""

    def global_losses(self, local: torch.Tensor) -> list[float]:
        """Training losses of consecutive steps, from this process's shares (one host read)."""

    def metrics(self, logits: torch.Tensor, labels: torch.Tensor) -> dict:
        """The exact evaluation metrics of every process's scores, on every process."""

    def barrier(self) -> None:
        """Return once every process has reached it."""

    def fail(self, message: str) -> None:
        """Tell the other processes why this one is about to end."""

    def abort(self, code: int) -> None:
        """End this process at once (the others may be waiting in a collective)."""

    def close(self) -> None:
        """The end of a run that went well: leave together, release the communicator."""


class SingleProcess:
    """The whole batch and the whole model in this process."""

    rank, world_size, is_root = 0, 1, True

    def __init__(self, cfg: Config):
        self.device = bind_device(cfg)
        self.precision = make_precision(cfg, self.device)
        self.linear_kernel, self.kernel_reason = make_linear_kernel(cfg)

    def check_memory(self, cfg: Config, table_sizes: list[int]) -> None:
        check_table_memory(cfg, sum(table_sizes), device=self.device)

    def check_data(self, *datasets: Dataset | None) -> None:
        pass

    def build_model(self, cfg: Config, table_sizes: list[int]) -> DLRM:
        return DLRM.from_config(cfg, table_sizes, self.linear_kernel, self.device)

    def batch(self, data: Dataset, index: int) -> Batch:
        return data.batch(index)

    def backward(self, loss: torch.Tensor, step: int) -> None:
        loss.backward()

    def global_losses(self, local: torch.Tensor) -> list[float]:
        """Training losses of consecutive steps, from this process's shares (one host read)."""
        return local.tolist()

    def metrics(self, logits: torch.Tensor, labels: torch.Tensor) -> dict:
        return evaluate_scores(logits, labels)  # on the device: the exact AUC's sort runs on the GPU

    def barrier(self) -> None:
        pass

    def fail(self, message: str) -> None:
        pass

    def abort(self, code: int) -> None:
        sys.exit(code)

    def close(self) -> None:
        pass


def resolve_backend(cfg: Config) -> str:
    if cfg.dist_backend != "auto":
        return cfg.dist_backend
    return "nccl" if cfg.device.startswith("cuda") else "gloo"


class MultiProcess:
    """One rank of several: this rank's table shards for the global batch,
    its share of the samples for the MLPs (see reference/distributed/)."""

    def __init__(self, cfg: Config, info: LaunchInfo, comm: Communicator, device: torch.device, store=None):
        self.cfg, self.info, self.comm, self.device = cfg, info, comm, device
        self.store = store  # the rendezvous store (rank 0 hosts it outside torchrun: alive as long as the run)
        self.rank, self.world_size, self.is_root = info.rank, info.world_size, info.rank == 0
        self.plan: Plan | None = None
        self.columns: list[int] = []
        self.reducer: GradientReducer | None = None
        self.precision = make_precision(cfg, device)
        self.linear_kernel, self.kernel_reason = make_linear_kernel(cfg)

    @classmethod
    def start(cls, cfg: Config, info: LaunchInfo) -> MultiProcess:
        for key, on, what in (("qr_threshold", cfg.qr_threshold > 0, "QR and MD tables"),
                              ("md_temperature", cfg.md_temperature > 0, "QR and MD tables"),
                              ("quantize_embeddings", cfg.quantize_embeddings > 0, "quantized tables")):
            if on:
                raise ConfigError(f"{cfg.where(key)}: {key}: {what} run in one process only for now "
                                  f"(this run has {info.world_size} ranks)")
        backend = resolve_backend(cfg)
        device = bind_device(cfg, info.rank, info.local_rank, info.local_world_size)
        if cfg.num_threads == 0:  # launchers set one thread per process; use this machine's share of cores
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // info.local_world_size))
        store = open_store(info, cfg.dist_timeout)
        settings = {k: v for k, v in cfg.as_dict().items() if k != "run_name"}
        join(store, info, settings, cfg.dist_timeout)
        if device.type == "cuda":
            check_gpus_distinct(store, info, device, cfg.dist_timeout)
        monitor = FaultMonitor(store, info.rank, info.world_size, cfg.dist_timeout)
        try:
            comm = build_communicator(backend, info, store, cfg.dist_timeout, device, monitor)
        except Exception as e:  # the others would wait in the process group's setup until the timeout
            monitor.report_failure(f"rank {info.rank}: {e}")
            raise
        runtime = cls(cfg, info, comm, device, store)
        monitor.on_peer_failure = runtime._peer_failed
        return runtime

    def check_memory(self, cfg: Config, table_sizes: list[int]) -> None:
        # Table sizes may come from each machine's own counts file: a different copy
        # would give a different plan, and all-to-alls of mismatched sizes.
        agree(self.store, self.info, "table sizes", {"table_sizes": table_sizes}, cfg.dist_timeout,
              f"every rank must read the same counts file ({cfg.counts_file}) or table_sizes")
        self.plan = make_plan(cfg, table_sizes, self.world_size)
        rows = sum(s.rows for s in self.plan.shards_of(self.rank))
        check_table_memory(cfg, rows, self.info.local_world_size, what=f"rank {self.rank}'s table shards "
                           f"({len(self.plan.shards_of(self.rank))} of the plan's {len(self.plan.shards)}; "
                           f"--plan-only prints the plan)", device=self.device)

    def check_data(self, *datasets: Dataset | None) -> None:
        cfg = self.cfg
        if cfg.batch_size % self.world_size:
            raise ConfigError(f"{cfg.where('batch_size')}: batch_size {cfg.batch_size} does not divide by the "
                              f"world size {self.world_size}; every rank must compute on the same number of "
                              f"samples")
        for data in datasets:
            if data is not None and data.num_samples < self.world_size:
                raise DataError(f"{data.path}: {data.num_samples} samples for {self.world_size} ranks; "
                                f"every rank needs at least one")

    def build_model(self, cfg: Config, table_sizes: list[int]) -> DLRM:
        if self.plan is None:
            self.plan = make_plan(cfg, table_sizes, self.world_size)
        self.linear_kernel = self._agreed_kernel()
        embeddings = ShardedEmbeddings(self.plan, self.comm, cfg.seed)
        model = DLRM.from_config(cfg, table_sizes, self.linear_kernel, embeddings=embeddings).to(self.device)
        self.columns = embeddings.columns
        self.reducer = GradientReducer(model.dense_parameters(), self.comm)
        return model

    def _agreed_kernel(self) -> str:
        """Rank 0's kernel for every rank: machines of a job may differ, the replicated MLPs must not."""
        choices = ("aten", "onednn")
        choice = torch.tensor([choices.index(self.linear_kernel)], dtype=torch.int64, device=self.device)
        self.comm.broadcast(choice, 0, "linear kernel broadcast")
        return choices[int(choice.item())]

    def batch(self, data: Dataset, index: int) -> Batch:
        return data.batch_part(index, self.rank, self.world_size, self.columns)

    def backward(self, loss: torch.Tensor, step: int) -> None:
        assert self.reducer is not None, "build_model() makes the reducer"
        self._monitor().progress = step
        self.reducer.start()
        loss.backward()
        self.reducer.finish()

    def global_losses(self, local: torch.Tensor) -> list[float]:
        """Training losses of consecutive steps: every rank's shares summed in one all-reduce."""
        total = local.detach().clone()
        self.comm.all_reduce(total, "loss all-reduce").wait()
        return total.tolist()

    def metrics(self, logits: torch.Tensor, labels: torch.Tensor) -> dict:
        """Scores and labels of every rank to rank 0 only, which computes the
        exact metrics once; every rank gets the result (to stop together)."""
        counts = self.comm_counts(labels.numel())
        local = torch.stack([logits.float(), labels.float()], dim=1).reshape(-1).contiguous()
        root = self.is_root
        gathered = local.new_empty(2 * sum(counts) if root else 0)
        self.comm.all_to_all(gathered, local, [2 * c for c in counts] if root else [0] * self.world_size,
                             [local.numel() if q == 0 else 0 for q in range(self.world_size)],
                             "evaluation gather").wait()
        result = torch.zeros(4, dtype=torch.float64, device=self.device)
        if root:
            pairs = gathered.view(-1, 2)  # the metrics on rank 0's device (its GPU sorts in milliseconds)
            m = evaluate_scores(pairs[:, 0].contiguous(), pairs[:, 1].contiguous())
            result = torch.tensor([m["auc"], m["accuracy"], m["log_loss"], m["samples"]], dtype=torch.float64,
                                  device=self.device)
        self.comm.broadcast(result, 0, "evaluation result broadcast")
        auc, accuracy, log_loss, samples = result.cpu().tolist()
        return {"auc": auc, "accuracy": accuracy, "log_loss": log_loss, "samples": int(samples)}

    def comm_counts(self, mine: int) -> list[int]:
        """Evaluation samples held by every rank."""
        counts = torch.zeros(self.world_size, dtype=torch.int64, device=self.device)
        counts[self.rank] = mine
        self.comm.all_reduce(counts, "evaluation counts").wait()
        return counts.cpu().tolist()

    def barrier(self) -> None:
        self.comm.barrier()

    def fail(self, message: str) -> None:
        """Tell the other ranks (their heartbeat threads end them with this message)."""
        self._monitor().report_failure(message)

    def _monitor(self) -> FaultMonitor:
        monitor = self.comm.monitor
        assert monitor is not None, "from_env() gives every rank's communicator a fault monitor"
        return monitor

    def _peer_failed(self, message: str) -> None:
        print(f"error: {message}", file=sys.stderr)
        self.abort(1)

    def abort(self, code: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        if self.rank == 0:  # it may host the store: let the others read why before it goes
            time.sleep(2 * HEARTBEAT_SECONDS)
        self.comm.abort(code)
        os._exit(code)

    def close(self) -> None:
        self.comm.barrier("end-of-run barrier")
        self.comm.close()


def start(cfg: Config, info: LaunchInfo | None = None) -> Parallel:
    """The runtime for this process, from the launcher's environment."""
    info = info if info is not None else detect()
    if info is None or info.world_size == 1:
        return SingleProcess(cfg)
    return MultiProcess.start(cfg, info)

