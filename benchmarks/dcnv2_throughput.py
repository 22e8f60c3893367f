"""DLRMv2 training steps/s: the dlrm_dcnv2 model and optimiser on random
multi-hot batches of the reference's per-table bag sizes, fp32 and bf16.

Configuration: configs/dlrm_dcnv2_closed.yaml's model (26 tables of dimension
128, bottom 13-512-256-128, cross network 3 x rank 512 over 3456, top
1024-1024-512-256-1) and optimiser (Adagrad lr 0.004, eps 1e-8, element-wise
on the tables), with the tables capped at ``--table-rows`` (the reference's
five 40M-row tables and its 3M one would need 209 GB with Adagrad's state),
batch 2048, bags of exactly 3,2,1,2,6,1,1,1,1,7,3,8,1,6,9,5,1,1,1,12,100,27,10,3,1,1
ids (214 per sample; ``bag_sizes``), drawn in memory (data_mode=random).
Paths, each a full Trainer on its own copy of the model (same seed):

- ``dcnv2 fp32``: the fp32 GEMM kernel ``linear_kernel=auto`` picks here;
- ``dcnv2 fp32, torch rows``: the same with the tables' Adagrad on torch's
  sparse ops (``sparse_update_kernel=torch``) instead of the kernel auto picks;
- ``dcnv2 bf16``: ``precision=bf16`` (autocast), where the CPU has native bf16;
- ``dot (v1) fp32``: the v1 interaction on the same multi-hot batches, for scale.

A step includes drawing its batch. Steps are timed interleaved, each step
starting at another path, so a busy machine slows all alike. After each step
the cross network alone (forward and backward on the step's x0) is timed
too. Medians over steps.

    python -m benchmarks.dcnv2_throughput [--steps 20] [--table-rows 100000] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

from benchmarks.train_throughput import cpu_description
from reference.config import Config
from reference.data.random_batches import RandomDataset, RandomSpec
from reference.jsonfile import write_json
from reference.mlperf_log import MLPerfLogger
from reference.model import DLRM, resolve_linear_kernel
from reference.precision import cpu_bf16_support
from reference.trainer import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLOSED = os.path.join(ROOT, "configs", "dlrm_dcnv2_closed.yaml")
BAG_SIZES = [3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10, 3, 1, 1]


def path_config(table_rows: int, batch_size: int, **overrides) -> Config:
    reference = Config.from_sources(CLOSED)
    sizes = [min(n, table_rows) for n in reference.table_sizes or []]
    return Config.from_sources(CLOSED, [f"table_sizes={'-'.join(map(str, sizes))}", "data_mode=random",
                                        f"bag_sizes={'-'.join(map(str, BAG_SIZES))}", f"batch_size={batch_size}",
                                        "auc_threshold=null", "submission_division=open", "progress=false"]
                               + [f"{k}={v}" for k, v in overrides.items()])


def cross_step(model: DLRM, trainer: Trainer, x0: torch.Tensor) -> None:
    """The cross network's forward and backward alone, in the trainer's precision."""
    model.zero_grad(set_to_none=True)
    with trainer.precision.autocast():
        out = model.interaction.cross(x0)
    out.float().sum().backward()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--table-rows", type=int, default=100_000)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    paths = {"dcnv2 fp32": {}, "dcnv2 fp32, torch rows": {"sparse_update_kernel": "torch"}}
    bf16_missing = cpu_bf16_support()
    if bf16_missing is None:
        paths["dcnv2 bf16"] = {"precision": "bf16"}
    paths["dot (v1) fp32"] = {"interaction": "dot"}
    configs = {name: path_config(args.table_rows, args.batch_size, **o) for name, o in paths.items()}
    first = next(iter(configs.values()))
    assert first.table_sizes is not None and first.bag_sizes is not None
    batches = 8
    data = RandomDataset(RandomSpec(first.table_sizes, 13, bag_sizes=tuple(first.bag_sizes)), args.batch_size,
                         batches, seed=0, split="train")
    trainers = {}
    for name, cfg in configs.items():
        model = DLRM.from_config(cfg, cfg.table_sizes or [])
        trainers[name] = Trainer(cfg, model, data, data, MLPerfLogger(None))
    x0 = torch.randn(args.batch_size, 3456)
    names = list(trainers)
    step_ms: dict[str, list[float]] = {n: [] for n in names}
    cross_ms: dict[str, list[float]] = {n: [] for n in names}
    for i in range(args.warmup + args.steps):
        for j in range(len(names)):
            name = names[(i + j) % len(names)]  # each step starts at another path
            trainer = trainers[name]
            t0 = time.perf_counter()
            trainer.train_step(data.batch(i % batches)).item()
            t1 = time.perf_counter()
            if configs[name].interaction == "dcn":
                cross_step(trainer.model, trainer, x0)
            t2 = time.perf_counter()
            if i >= args.warmup:
                step_ms[name].append((t1 - t0) * 1e3)
                cross_ms[name].append((t2 - t1) * 1e3)
    kernel, reason = resolve_linear_kernel(first)
    info = {**cpu_description(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "batch_size": args.batch_size, "table_rows": args.table_rows,
            "rows": sum(first.table_sizes), "steps": args.steps, "warmup": args.warmup,
            "linear_kernel_fp32": f"{kernel} ({reason})", "bf16": bf16_missing or "native",
            "sparse_update_kernel_auto": f"{trainers[names[0]].sparse_update_kernel} "
                                         f"({trainers[names[0]].sparse_update_reason})",
            "dense_parameters": DLRM.dense_parameter_count(first, 26)}
    results = []
    for name in names:
        step = statistics.median(step_ms[name])
        cross = statistics.median(cross_ms[name]) if configs[name].interaction == "dcn" else None
        results.append({"path": name, "step_ms": round(step, 1), "steps_per_s": round(1e3 / step, 2),
                        "samples_per_s": round(args.batch_size / step * 1e3),
                        "cross_ms": None if cross is None else round(cross, 1)})
    print(f"# {json.dumps(info)}")
    width = max(len(name) for name in names)
    print(f"{'path':<{width}} {'step ms':>8} {'steps/s':>8} {'samples/s':>10} {'cross fwd+bwd ms':>17}")
    for r in results:
        print(f"{r['path']:<{width}} {r['step_ms']:>8} {r['steps_per_s']:>8} {r['samples_per_s']:>10,} "
              f"{'-' if r['cross_ms'] is None else r['cross_ms']:>17}")
    if args.json:
        write_json(args.json, {"info": info, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
