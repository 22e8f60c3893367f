"""Training throughput of the MLPerf architecture per dense-compute path, side
by side in one run, and the share of each step that is not the dense MLPs.

Configuration: 26 tables of 100,000 rows, dimension 128, bottom
13-512-256-128, top 1024-1024-512-256-1, batch 2048, random ids, read through
the real binary loader. Paths (each a full Trainer on its own copy of the
model):

- ``fp32 aten``:   precision fp32, linear_kernel=aten (plain ``nn.Linear``: torch's BLAS);
- ``fp32 onednn``: precision fp32, linear_kernel=onednn (the exact oneDNN kernel);
- ``bf16``:        precision bf16 (autocast), where the CPU has native bf16.

For each optimiser the paths' training steps (loader + embeddings +
interaction + MLPs + optimiser) are timed interleaved, step by step, so a busy
machine slows all of them alike; after each step the same path's MLP
forward+backward alone on the same batch (its floor: what is left is dense
compute) is timed too. Medians over steps; every ratio compares figures of
this run. The header names the CPU, its relevant flags, and which kernel
``linear_kernel=auto`` picks here.

    python -m benchmarks.train_throughput [--steps 20] [--optimizers sgd rowwise_adagrad] [--profile N]
        [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

from reference.config import Config
from reference.cpuinfo import cpu_info
from reference.data.binary import write_binary
from reference.data.loader import BinaryDataset
from reference.jsonfile import write_json
from reference.linear import onednn_available
from reference.malloc import keep_freed_memory
from reference.mlperf_log import MLPerfLogger
from reference.model import DLRM, resolve_linear_kernel
from reference.precision import cpu_bf16_support
from reference.trainer import Trainer

PATHS = {"fp32 aten": dict(precision="fp32", linear_kernel="aten"),
         "fp32 onednn": dict(precision="fp32", linear_kernel="onednn"),
         "bf16": dict(precision="bf16")}
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx_vnni")


def cpu_description() -> dict:
    info = cpu_info()
    return {"cpu": info.model, "flags": [name for name in FLAGS if name in info.flags],
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def random_file(path: str, rows: int, table_rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    data = np.empty((rows, 40), dtype=np.int32)
    data[:, 0] = rng.integers(0, 2, rows)
    data[:, 1:14] = rng.integers(0, 5000, (rows, 13))
    data[:, 14:] = rng.integers(0, table_rows, (rows, 26))
    write_binary(path, iter([data]))


def mlp_only_step(trainer: Trainer, batch, pairs: torch.Tensor) -> None:
    """Bottom and top MLP forward+backward with the interaction's output
    replaced by a constant, in the trainer's precision: what is left is the
    dense compute."""
    model = trainer.model
    model.zero_grad(set_to_none=True)
    with trainer.precision.autocast():
        x = model.bottom_mlp(batch.dense)
        logits = model.top_mlp(torch.cat([x, pairs.to(x.dtype)], dim=1)).squeeze(1)
    torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels).backward()


def make_trainer(optimizer: str, settings: dict, data: BinaryDataset, sizes: list[int], batch_size: int) -> Trainer:
    cfg = Config()
    cfg.update(dict(optimizer=optimizer, batch_size=batch_size, learning_rate=0.01, progress=False,
                    submission_division="open", **settings), origin="benchmark")
    cfg.validate()
    return Trainer(cfg, DLRM.from_config(cfg, sizes), data, data, MLPerfLogger(None))


def measure(optimizer: str, paths: list[str], path: str, args) -> list[dict]:
    sizes = [args.table_rows] * 26
    data = BinaryDataset(path, args.batch_size, sizes)
    trainers = {name: make_trainer(optimizer, PATHS[name], data, sizes, args.batch_size) for name in paths}
    pairs = torch.randn(args.batch_size, 27 * 26 // 2)
    step_ms = {name: [] for name in paths}
    mlp_ms = {name: [] for name in paths}
    for i in range(args.warmup + args.steps):
        index = i % data.num_batches
        for name, trainer in trainers.items():
            t0 = time.perf_counter()
            trainer.train_step(data.batch(index)).item()  # the loader's read is part of the step
            t1 = time.perf_counter()
            mlp_only_step(trainer, data.batch(index), pairs)
            t2 = time.perf_counter()
            if i >= args.warmup:
                step_ms[name].append((t1 - t0) * 1e3)
                mlp_ms[name].append((t2 - t1) * 1e3)
    base = statistics.median(step_ms[paths[0]])
    results = []
    for name in paths:
        step, mlp = statistics.median(step_ms[name]), statistics.median(mlp_ms[name])
        results.append({"optimizer": optimizer, "path": name, "step_ms": round(step, 1),
                        "mlp_only_ms": round(mlp, 1), "samples_per_s": round(args.batch_size / step * 1e3),
                        "non_mlp_share": round(1 - mlp / step, 3), "step_vs_floor": round(step / mlp, 2),
                        "step_vs_fp32_aten": round(step / base, 3)})
    return results


def profile_steps(optimizer: str, paths: list[str], path: str, args) -> dict[str, list[tuple[str, float]]]:
    """Per path, the operators that take the most time in a training step
    (torch.profiler, self CPU ms per step, top ``args.profile``)."""
    from torch.profiler import profile

    sizes = [args.table_rows] * 26
    data = BinaryDataset(path, args.batch_size, sizes)
    out = {}
    for name in paths:
        trainer = make_trainer(optimizer, PATHS[name], data, sizes, args.batch_size)
        for i in range(args.warmup):
            trainer.train_step(data.batch(i % data.num_batches))
        steps = 5
        with profile() as prof:
            for i in range(steps):
                trainer.train_step(data.batch(i % data.num_batches)).item()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        out[name] = [(e.key, round(e.self_cpu_time_total / 1e3 / steps, 2)) for e in events[:args.profile]]
        del trainer
    return out


def auto_verdicts(results: list[dict], auto: str) -> list[str]:
    """Whether linear_kernel=auto's choice is the faster fp32 path on this CPU, per optimiser."""
    notes = []
    for optimizer in dict.fromkeys(r["optimizer"] for r in results):
        fp32 = {r["path"]: r["step_ms"] for r in results if r["optimizer"] == optimizer and r["path"] != "bf16"}
        if len(fp32) < 2:
            continue
        fastest = min(fp32, key=fp32.get)
        verdict = "the faster" if fastest == f"fp32 {auto}" else f"not the faster ({fastest} is)"
        notes.append(f"{optimizer}: linear_kernel=auto picks {auto}, {verdict} on this CPU")
    return notes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--table-rows", type=int, default=100_000)
    p.add_argument("--optimizers", nargs="+", default=["sgd", "rowwise_adagrad"])
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also print the N operators that take the most time per step, per path (first optimiser)")
    args = p.parse_args(argv)
    keep_freed_memory()  # as reference.train does: a step's buffers are reused, not faulted in again
    paths = ["fp32 aten"]
    notes = []
    if onednn_available():
        paths.append("fp32 onednn")
    else:
        notes.append("fp32 onednn: not measured, this torch build has no oneDNN")
    missing = cpu_bf16_support()
    if missing is None:
        paths.append("bf16")
    else:
        notes.append(f"bf16: not measured, the CPU lacks {missing}")
    auto, reason = resolve_linear_kernel(Config().validate())
    info = {**cpu_description(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "batch_size": args.batch_size, "table_rows": args.table_rows, "steps": args.steps,
            "linear_kernel_auto": f"{auto} ({reason})"}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "random.bin")
        random_file(path, 16 * args.batch_size, args.table_rows)
        results = [r for name in args.optimizers for r in measure(name, paths, path, args)]
        profiles = profile_steps(args.optimizers[0], paths, path, args) if args.profile else {}
    notes += auto_verdicts(results, auto)
    print(f"# {json.dumps(info)}")
    for note in notes:
        print(f"# {note}")
    print(f"{'optimizer':<16} {'path':<12} {'step ms':>8} {'MLP-only ms':>12} {'samples/s':>10} "
          f"{'non-MLP share':>14} {'step/floor':>11} {'vs fp32 aten':>13}")
    for r in results:
        print(f"{r['optimizer']:<16} {r['path']:<12} {r['step_ms']:>8} {r['mlp_only_ms']:>12} "
              f"{r['samples_per_s']:>10,} {r['non_mlp_share']:>14.1%} {r['step_vs_floor']:>10}x "
              f"{r['step_vs_fp32_aten']:>12}x")
    for name, ops in profiles.items():
        print(f"# {args.optimizers[0]}, {name}: self CPU ms per step: "
              + ", ".join(f"{op} {ms}" for op, ms in ops))
    if args.json:
        write_json(args.json, {"info": info, "notes": notes, "results": results, "profiles": profiles})
    return 0


if __name__ == "__main__":
    sys.exit(main())
