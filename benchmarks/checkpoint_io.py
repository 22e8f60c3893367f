"""Checkpoint figures (issue #13): save and load time and size at 1 and 2
ranks for the benchmark configuration, and the peak memory of each rank
loading an original dlrm_s_pytorch.py checkpoint against its share.

    python -m benchmarks.checkpoint_io io [--ranks 1 2] [--rows 100000]
    python -m benchmarks.checkpoint_io original [--gib 4] [--ranks 1 2]

``io``: the benchmark configuration of train_throughput.py (26 tables of
``--rows`` rows, dimension 128, the MLPerf MLPs, row-wise Adagrad); each
rank takes one step, then saves (timed from a barrier to the last rank's
return) and resumes into a fresh model (timed the same way; warm page cache).
``original``: writes an original-format file of 26 tables (Criteo's sizes
scaled to ``--gib``), then runs ``--load-checkpoint FILE --inference-only`` as
N ranks (real processes, gloo) and records each rank's peak RSS (VmHWM,
file pages it mapped included) against its share of the tables.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import torch
import torch.multiprocessing as mp
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRITEO = yaml.safe_load(open(os.path.join(ROOT, "configs", "mlperf_closed.yaml")))["table_sizes"]
DIM = 128


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


# --- io: save and load of the benchmark configuration ------------------------------------------


def io_config(data_dir: str):
    from reference.config import Config
    cfg = Config()
    cfg.update(dict(optimizer="rowwise_adagrad", learning_rate=0.1, batch_size=2048, eval_batch_size=2048,
                    data_dir=data_dir, train_file="synthetic_train.bin", eval_file="synthetic_test.bin",
                    counts_file="synthetic_fea_count.npz", progress=False, submission_division="open",
                    num_threads=max(1, (os.cpu_count() or 1) // 2), dist_timeout=600), origin="benchmark")
    return cfg.validate()


def io_rank(rank: int, world: int, port: int, data_dir: str, out: str) -> None:
    from reference import checkpoint
    from reference.distributed import runtime
    from reference.distributed.launch import LaunchInfo
    from reference.mlperf_log import MLPerfLogger
    from reference.train import open_split, resolve_table_sizes
    from reference.trainer import Trainer

    cfg = io_config(data_dir)
    info = LaunchInfo("benchmark", rank, world, rank, world, "127.0.0.1", port)
    parallel = runtime.start(cfg, info) if world > 1 else runtime.SingleProcess(cfg)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    sizes = resolve_table_sizes(cfg)
    parallel.check_memory(cfg, sizes)
    data = open_split(cfg, cfg.train_file, cfg.batch_size, sizes)

    def trainer() -> Trainer:
        return Trainer(cfg, parallel.build_model(cfg, sizes), data, data, MLPerfLogger(None), parallel=parallel)

    first = trainer()
    first.train_step(parallel.batch(data, 0))  # the optimiser's state exists from the first step
    path = os.path.join(out, "ckpt")
    parallel.barrier()
    t0 = time.perf_counter()
    checkpoint.save(path, first.model, first.optimizer, first.state, config=cfg.as_dict(), table_sizes=sizes,
                    group=parallel)
    parallel.barrier()
    saved = time.perf_counter() - t0
    second = trainer()
    parallel.barrier()
    t0 = time.perf_counter()
    checkpoint.resume(path, second.model, second.optimizer, cfg.optimizer)
    parallel.barrier()
    loaded = time.perf_counter() - t0
    assert torch.equal(second.model.embeddings.weight, first.model.embeddings.weight)
    if rank == 0:
        with open(os.path.join(out, f"io-{world}.json"), "w") as f:
            json.dump({"ranks": world, "save_s": saved, "load_s": loaded, "bytes": folder_bytes(path),
                       "files": sorted(os.listdir(checkpoint_folder(path)))}, f)
    if world > 1:
        parallel.close()


def checkpoint_folder(path: str) -> str:
    from reference.checkpoint import folder
    return folder.find(path)


def run_io(args) -> list[dict]:
    from reference.synthetic import SyntheticSpec, generate
    work = tempfile.mkdtemp(prefix="ckpt-io-", dir=args.work)
    try:
        generate(work, SyntheticSpec(train_samples=4096, eval_samples=2048, table_sizes=[args.rows] * 26, seed=1,
                                     chunk_rows=4096), log=lambda *a: None)
        results = []
        for world in args.ranks:
            out = os.path.join(work, f"r{world}")
            os.makedirs(out)
            if world == 1:
                io_rank(0, 1, 0, work, out)
            else:
                mp.start_processes(io_rank, args=(world, free_port(), work, out), nprocs=world, start_method="spawn")
            with open(os.path.join(out, f"io-{world}.json")) as f:
                results.append(json.load(f))
            shutil.rmtree(out)
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- original: an original-format file into N ranks -------------------------------------------


def scaled_sizes(gib: float) -> list[int]:
    rows = gib * 2**30 / (DIM * 4)
    return [max(3, round(n * rows / sum(CRITEO))) for n in CRITEO]


def write_original(path: str, sizes: list[int], cfg) -> None:
    """An original dlrm_s_pytorch.py checkpoint, its tables filled in place in the
    file (streamed, as reference/checkpoint/files.py saves), never whole in memory."""
    from reference.model import DLRM
    mlps = DLRM.from_config(cfg, [3] * len(sizes))  # the MLPs do not depend on the tables' sizes
    state = {f"emb_l.{t}.weight": torch.empty(n, DIM) for t, n in enumerate(sizes)}  # never touched: not resident
    for ours, theirs in (("bottom_mlp", "bot_l"), ("top_mlp", "top_l")):
        for key, value in getattr(mlps, ours).state_dict().items():
            state[f"{theirs}.{key}"] = value
    top = {"epoch": 0, "nepochs": 1, "nbatches": 1, "iter": 0, "state_dict": state, "opt_state_dict": {}}
    with torch.serialization.skip_data():
        torch.save(top, path)
    with torch.serialization.set_default_mmap_options(mmap.MAP_SHARED):
        placed = torch.load(path, mmap=True, weights_only=True)
    g = torch.Generator().manual_seed(0)
    for key, value in state.items():
        target = placed["state_dict"][key]
        if key.startswith("emb_l."):
            for lo in range(0, len(target), 1 << 16):
                target[lo:lo + (1 << 16)].uniform_(-0.01, 0.01, generator=g)
        else:
            target.copy_(value)
    del placed


def original_config(path: str, data_dir: str, results: str) -> str:
    config = dict(embedding_dim=DIM, bottom_mlp="13-64-128", top_mlp="64-1", batch_size=2048, eval_batch_size=4096,
                  data_dir=data_dir, train_file="synthetic_train.bin", eval_file="synthetic_test.bin",
                  counts_file="synthetic_fea_count.npz", progress=False, submission_division="open",
                  results_dir=results, run_name="run", dist_timeout=600)
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    return path


def rank_main(argv: list[str]) -> int:
    """One rank of ``original``: the trainer's command line, then this process's peak RSS."""
    from reference import train
    from reference.distributed.launch import detect
    baseline = _vm_hwm()
    code = train.main(argv)
    info = detect()
    rank = info.rank if info is not None else 0
    with open(os.path.join(os.environ["BENCH_OUT"], f"rss-{rank}.json"), "w") as f:
        json.dump({"rank": rank, "peak_rss": _vm_hwm(), "baseline_rss": baseline, "code": code}, f)
    return code


def _vm_hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_original(args) -> list[dict]:
    from reference.config import Config
    from reference.distributed.planner import plan_tables
    from reference.synthetic import SyntheticSpec, generate
    sizes = scaled_sizes(args.gib)
    work = tempfile.mkdtemp(prefix="ckpt-original-", dir=args.work)
    try:
        generate(work, SyntheticSpec(train_samples=4096, eval_samples=8192, table_sizes=sizes, seed=1,
                                     chunk_rows=8192), log=lambda *a: None)
        cfg_path = original_config(os.path.join(work, "c.yaml"), work, os.path.join(work, "results"))
        cfg = Config.from_sources(cfg_path, [])
        path = os.path.join(work, "original.pt")
        t0 = time.perf_counter()
        write_original(path, sizes, cfg)
        written = time.perf_counter() - t0
        results = []
        for world in args.ranks:
            plan = plan_tables(sizes, world, DIM, "sgd")
            out = os.path.join(work, f"out{world}")
            os.makedirs(out)
            port, procs = free_port(), []
            t0 = time.perf_counter()
            for r in range(world):
                env = dict(os.environ, BENCH_OUT=out, OMP_NUM_THREADS="1")
                if world > 1:
                    env.update(RANK=str(r), WORLD_SIZE=str(world), LOCAL_RANK=str(r), LOCAL_WORLD_SIZE=str(world),
                               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
                procs.append(subprocess.Popen([sys.executable, "-m", "benchmarks.checkpoint_io", "rank", "--config",
                                               cfg_path, "--load-checkpoint", path, "--inference-only"], cwd=ROOT,
                                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
            outputs = [p.communicate()[0] for p in procs]
            seconds = time.perf_counter() - t0
            if any(p.returncode for p in procs):
                raise SystemExit("\n".join(outputs))
            for r in range(world):
                with open(os.path.join(out, f"rss-{r}.json")) as f:
                    rss = json.load(f)
                share = sum(s.rows for s in plan.shards_of(r)) * DIM * 4
                results.append({"ranks": world, "rank": r, "file_bytes": os.path.getsize(path), "share": share,
                                "peak_rss": rss["peak_rss"], "baseline_rss": rss["baseline_rss"],
                                "seconds": seconds, "write_s": written})
            metrics = [line for line in outputs[0].splitlines() if line.startswith("{")]
            results[-world]["auc"] = json.loads(metrics[-1])["auc"]  # rank 0 prints the evaluation
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "rank":
        return rank_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m benchmarks.checkpoint_io")
    p.add_argument("what", choices=["io", "original"])
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rows", type=int, default=100_000, help="io: rows per table")
    p.add_argument("--gib", type=float, default=4.0, help="original: size of the tables in the file")
    p.add_argument("--work", default=None, help="folder for the temporary files (default: the system's)")
    args = p.parse_args(argv)
    results = run_io(args) if args.what == "io" else run_original(args)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
