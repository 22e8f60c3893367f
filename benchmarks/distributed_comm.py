"""Distributed training: bytes moved per iteration, 1 vs 2 ranks, per-byte
costs, and a scaling estimate for 8 and 64 ranks.

MLPerf architecture (dim 128, bottom 13-512-256-128, top 1024-1024-512-256-1,
batch 2048, SGD), 26 tables of 100,000 rows (random ids through the real
binary loader), on this machine:

* computed: all-to-all bytes per rank per iteration from the placement plan
  of the Criteo 1TB tables (forward and backward), all-reduce bytes of the
  replicated MLPs (ring: 2 (N-1)/N of the gradient per rank);
* measured: training steps of 1 process and of 2 ranks (gloo via torchrun,
  mpi4py via mpirun), the bytes each rank sent (counted in the communicator),
  and the time of one all-to-all and one all-reduce of those sizes;
* estimated: an iteration at 8 and 64 ranks = the 1-process compute divided
  by N plus the bytes of that world size times the measured per-byte costs.

    python -m benchmarks.distributed_comm [--steps 15]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import yaml

from benchmarks.train_throughput import random_file
from reference.config import Config
from reference.data.loader import BinaryDataset
from reference.distributed import runtime
from reference.distributed.launch import detect
from reference.distributed.planner import plan_tables
from reference.mlperf_log import MLPerfLogger
from reference.model import DLRM
from reference.trainer import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRITEO = yaml.safe_load(open(os.path.join(ROOT, "configs", "mlperf_closed.yaml")))["table_sizes"]


def bench_config(backend: str, batch: int) -> Config:
    cfg = Config()
    cfg.update(dict(batch_size=batch, learning_rate=0.01, progress=False, dist_backend=backend,
                    dist_timeout=120.0), origin="benchmark")
    return cfg.validate()


def computed_bytes(world: int, batch: int, dense_parameters: int) -> dict:
    plan = plan_tables(CRITEO, world, 128, "sgd")
    a2a = 2 * plan.alltoall_bytes(batch)  # forward and backward
    allreduce = 2 * (world - 1) * dense_parameters * 4 // world
    return {"world": world, "alltoall_bytes": a2a, "allreduce_bytes": allreduce}


def timed(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def worker(args) -> dict:
    """One rank (or the single process): training steps, then the collectives alone."""
    cfg = bench_config(args.backend, args.batch_size)
    parallel = runtime.start(cfg, detect())
    sizes = [args.table_rows] * 26
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "random.bin")
        random_file(path, 8 * args.batch_size, args.table_rows)  # same seed: the same file on every rank
        data = BinaryDataset(path, args.batch_size, sizes)
        parallel.check_memory(cfg, sizes)
        model = parallel.build_model(cfg, sizes)
        trainer = Trainer(cfg, model, data, data, MLPerfLogger(None), parallel=parallel)
        step_s = []
        for i in range(args.warmup + args.steps):
            if i == args.warmup and parallel.world_size > 1:
                parallel.comm.bytes_all_to_all = parallel.comm.bytes_all_reduce = 0
            t0 = time.perf_counter()
            trainer.train_step(parallel.batch(data, i % data.num_batches))
            if i >= args.warmup:
                step_s.append(time.perf_counter() - t0)
    result = {"world": parallel.world_size, "backend": args.backend if parallel.world_size > 1 else "none",
              "threads": torch.get_num_threads(), "step_ms": statistics.median(step_s) * 1e3}
    result["samples_per_s"] = args.batch_size / result["step_ms"] * 1e3
    if parallel.world_size > 1:
        comm = parallel.comm
        result["alltoall_bytes_per_iter"] = comm.bytes_all_to_all / args.steps
        result["allreduce_bytes_per_iter"] = comm.bytes_all_reduce / args.steps
        n = comm.world_size
        # One forward all-to-all of this plan's size, and one all-reduce of all MLP gradients.
        per_peer = args.batch_size // n * len(parallel.plan.shards_of(comm.rank)) * 128
        send, recv = torch.randn(per_peer * n), torch.empty(per_peer * n)
        a2a_s = timed(lambda: comm.all_to_all(recv, send, [per_peer] * n, [per_peer] * n).wait(), args.reps)
        grads = torch.randn(DLRM.dense_parameter_count(cfg, 26))
        ar_s = timed(lambda: comm.all_reduce(grads).wait(), args.reps)
        result.update(alltoall_ms=a2a_s * 1e3, alltoall_sent_bytes=per_peer * (n - 1) * 4,
                      allreduce_ms=ar_s * 1e3, allreduce_bytes=grads.numel() * 4)
        parallel.close()
    return result


def launch(kind: str, ranks: int, args) -> dict:
    out = tempfile.mktemp(suffix=".json")
    common = ["-m", "benchmarks.distributed_comm", "--worker", "--out", out, "--steps", str(args.steps),
              "--batch-size", str(args.batch_size), "--table-rows", str(args.table_rows), "--reps", str(args.reps)]
    bindir = os.path.dirname(sys.executable)
    env = dict(os.environ)
    if kind == "torchrun":
        cmd = [os.path.join(bindir, "torchrun"), "--nproc-per-node", str(ranks)] + common + ["--backend", "gloo"]
    elif kind == "mpirun":
        cmd = [os.path.join(bindir, "mpirun"), "-np", str(ranks), sys.executable] + common + ["--backend", "mpi"]
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    else:
        cmd = [sys.executable] + common + ["--backend", "gloo"]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    with open(out) as f:
        result = json.load(f)
    os.unlink(out)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--table-rows", type=int, default=100_000)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--backend", default="gloo", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if args.worker:
        result = worker(args)
        if result is not None and (detect() is None or detect().rank == 0):
            with open(args.out, "w") as f:
                json.dump(result, f)
        return 0

    dense = DLRM.dense_parameter_count(Config(), 26)
    computed = [computed_bytes(n, args.batch_size, dense) for n in (2, 8, 64)]
    runs = [launch("single", 1, args), launch("torchrun", 2, args), launch("mpirun", 2, args)]
    single = runs[0]
    print(f"# batch {args.batch_size}, 26 x {args.table_rows:,} rows, dim 128, {dense:,} MLP parameters")
    print("\ncomputed per rank per iteration (Criteo 1TB plan): world, all-to-all MiB (fwd+bwd), all-reduce MiB")
    for c in computed:
        print(f"  {c['world']:>3}  {c['alltoall_bytes'] / 2**20:8.2f}  {c['allreduce_bytes'] / 2**20:8.2f}")
    own = 2 * plan_tables([args.table_rows] * 26, 2, 128, "sgd").alltoall_bytes(args.batch_size)
    print(f"  the benchmark's own tables at 2 ranks: all-to-all {own / 2**20:.2f} MiB (compare the measured count)")
    print("\nmeasured: ranks, backend, threads/rank, step ms, samples/s, vs 1 process, "
          "all-to-all MiB/iter sent, all-reduce MiB/iter, a2a ms (MiB), all-reduce ms (MiB)")
    for r in runs:
        line = (f"  {r['world']}  {r['backend']:<5} {r['threads']}  {r['step_ms']:7.1f}  {r['samples_per_s']:8,.0f}  "
                f"{r['samples_per_s'] / single['samples_per_s']:5.2f}x")
        if r["world"] > 1:
            line += (f"  {r['alltoall_bytes_per_iter'] / 2**20:6.2f}  {r['allreduce_bytes_per_iter'] / 2**20:6.2f}"
                     f"  {r['alltoall_ms']:6.2f} ({r['alltoall_sent_bytes'] / 2**20:.2f})"
                     f"  {r['allreduce_ms']:6.2f} ({r['allreduce_bytes'] / 2**20:.2f})")
        print(line)
    print("\nestimate (1-process compute / N + bytes x measured per-byte cost), per backend:")
    estimates = []
    for r in runs[1:]:
        a2a_cost = r["alltoall_ms"] / r["alltoall_sent_bytes"]
        ar_cost = r["allreduce_ms"] / r["allreduce_bytes"]  # 2 ranks: ring traffic = the gradient once
        for c in computed[1:]:
            compute = single["step_ms"] / c["world"]
            comm_ms = c["alltoall_bytes"] * a2a_cost + c["allreduce_bytes"] * ar_cost
            total = compute + comm_ms
            estimates.append({"backend": r["backend"], "world": c["world"], "compute_ms": compute,
                              "comm_ms": comm_ms, "samples_per_s": args.batch_size / total * 1e3})
            print(f"  {r['backend']:<5} {c['world']:>3} ranks: compute {compute:6.1f} ms + communication "
                  f"{comm_ms:6.1f} ms -> {args.batch_size / total * 1e3:9,.0f} samples/s "
                  f"({args.batch_size / total * 1e3 / single['samples_per_s']:.1f}x one process)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"computed": computed, "runs": runs, "estimates": estimates}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
