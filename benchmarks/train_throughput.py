"""Training throughput of the MLPerf architecture, and the share of a step
that is not the dense MLPs.

Configuration (issue #2): 26 tables of 100,000 rows, dimension 128, bottom
13-512-256-128, top 1024-1024-512-256-1, batch 2048, random ids, read through
the real binary loader. For each optimiser it times full training steps
(loader + embeddings + interaction + MLPs + optimiser) and, interleaved in the
same run, the dense MLP forward+backward alone on the same batch (the floor no
implementation goes under on this CPU). Median over steps.

    python -m benchmarks.train_throughput [--steps 20] [--optimizers sgd rowwise_adagrad]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

from reference.config import Config
from reference.data.binary import write_binary
from reference.data.loader import BinaryDataset
from reference.mlperf_log import MLPerfLogger
from reference.model import DLRM
from reference.train import Trainer

# The seed (dlrm_s_pytorch.py) on this configuration and machine type: ~700 ms
# per iteration, ~2,900 samples/s (../shared/REFERENCE.md, "Measured here").
SEED_SAMPLES_PER_S = 2900


def random_file(path: str, rows: int, table_rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    data = np.empty((rows, 40), dtype=np.int32)
    data[:, 0] = rng.integers(0, 2, rows)
    data[:, 1:14] = rng.integers(0, 5000, (rows, 13))
    data[:, 14:] = rng.integers(0, table_rows, (rows, 26))
    write_binary(path, iter([data]))


def mlp_only_step(model: DLRM, batch, pairs: torch.Tensor) -> None:
    """Bottom and top MLP forward+backward with the interaction's output
    replaced by a constant: what is left is the dense compute."""
    model.zero_grad(set_to_none=True)
    x = model.bottom_mlp(batch.dense)
    logits = model.top_mlp(torch.cat([x, pairs], dim=1)).squeeze(1)
    torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels).backward()


def measure(optimizer: str, path: str, args) -> dict:
    cfg = Config()
    cfg.update(dict(optimizer=optimizer, batch_size=args.batch_size, learning_rate=0.01, progress=False,
                    submission_division="open"), origin="benchmark")
    cfg.validate()
    sizes = [args.table_rows] * 26
    data = BinaryDataset(path, args.batch_size, sizes)
    model = DLRM.from_config(cfg, sizes)
    trainer = Trainer(cfg, model, data, data, MLPerfLogger(None))
    pairs = torch.randn(args.batch_size, 27 * 26 // 2)
    step_ms, mlp_ms = [], []
    for i in range(args.warmup + args.steps):
        index = i % data.num_batches
        t0 = time.perf_counter()
        trainer.train_step(data.batch(index))  # the loader's read is part of the step
        t1 = time.perf_counter()
        mlp_only_step(model, data.batch(index), pairs)
        t2 = time.perf_counter()
        if i >= args.warmup:
            step_ms.append((t1 - t0) * 1e3)
            mlp_ms.append((t2 - t1) * 1e3)
    step, mlp = statistics.median(step_ms), statistics.median(mlp_ms)
    return {"optimizer": optimizer, "step_ms": round(step, 1), "mlp_only_ms": round(mlp, 1),
            "samples_per_s": round(args.batch_size / step * 1e3),
            "non_mlp_share": round(1 - mlp / step, 3),
            "speedup_vs_seed": round(args.batch_size / step * 1e3 / SEED_SAMPLES_PER_S, 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--table-rows", type=int, default=100_000)
    p.add_argument("--optimizers", nargs="+", default=["sgd", "rowwise_adagrad"])
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "random.bin")
        random_file(path, 16 * args.batch_size, args.table_rows)
        results = [measure(name, path, args) for name in args.optimizers]
    info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor()
            or platform.machine(), "batch_size": args.batch_size, "table_rows": args.table_rows,
            "steps": args.steps}
    print(f"# {json.dumps(info)}")
    print(f"{'optimizer':<16} {'step ms':>8} {'MLP-only ms':>12} {'samples/s':>10} {'non-MLP share':>14} {'vs seed':>8}")
    for r in results:
        print(f"{r['optimizer']:<16} {r['step_ms']:>8} {r['mlp_only_ms']:>12} {r['samples_per_s']:>10,} "
              f"{r['non_mlp_share']:>14.1%} {r['speedup_vs_seed']:>7}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
