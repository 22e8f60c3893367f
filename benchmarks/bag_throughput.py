"""Training steps/s with bags of 1, 4 and 10 ids per table, on random batches
(data_mode=random), and the one-id path against the code before bags.

Configuration: 26 tables of 100,000 rows, dimension 128, bottom
13-512-256-128, top 1024-1024-512-256-1, SGD, batch 2048, fp32 (linear_kernel
as auto picks it here). Paths, each a full Trainer on its own copy of the model:

- ``one id (B, T), before``: the trainer of git revision ``--before`` (the
  code before bags, imported from ``git archive`` as another package), on the
  same one-id batches;
- ``one id (B, T)``: this code, one id per table (a plain gather);
- ``bags of 1 (jagged)``: the same ids as bags of one id (``embedding_bag``);
- ``bags of 4``, ``bags of 10``: every bag exactly that many ids.

A step includes drawing its random batch (as a run without read-ahead does).
The paths' steps are timed interleaved, step by step, each step starting at
another path, so a busy machine slows all of them alike; after each step, the same path's embedding lookup alone
(forward and backward, on the same batch) is timed too. Medians over steps.

    python -m benchmarks.bag_throughput [--before REV] [--steps 20] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from typing import Any

import torch

from benchmarks.train_throughput import build_trainer, cpu_description, import_before
from reference.config import Config
from reference.data.jagged import JaggedIds
from reference.data.loader import Batch
from reference.data.random_batches import RandomDataset, RandomSpec
from reference.jsonfile import write_json
from reference.model import resolve_linear_kernel
from reference.trainer import Trainer

SETTINGS = dict(embedding_dim=128, bottom_mlp=[13, 512, 256, 128], top_mlp=[1024, 1024, 512, 256, 1],
                optimizer="sgd", learning_rate=0.01, progress=False, submission_division="open")


def make_trainer(package: Any, sizes: list[int], batch_size: int, data: RandomDataset) -> Any:
    """A Trainer of ``package`` (this code's trainer module, or the revision's)."""
    return build_trainer(package, dict(SETTINGS, table_sizes=sizes, batch_size=batch_size), sizes, data)


def as_bags_of_one(batch: Batch) -> Batch:
    assert isinstance(batch.ids, torch.Tensor)
    return Batch(batch.dense, JaggedIds.from_dense(batch.ids), batch.labels, batch.global_size)


def embedding_step(trainer: Any, batch: Batch, upstream: torch.Tensor) -> None:
    """The tables' lookup forward and backward alone, to a sparse gradient: the
    native lookup of one id per table would otherwise step the tables in its
    backward (and change the trainer's weights), which the bags' lookup does not."""
    tables = trainer.model.embeddings
    update = getattr(tables, "update", None)
    if update is not None:
        tables.use_native_kernels(tables.kernels)
    try:
        tables.zero_grad(set_to_none=True)
        (tables(batch.ids) * upstream).sum().backward()
    finally:
        if update is not None:
            tables.use_native_kernels(tables.kernels, update)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", metavar="REV", help="git revision of the code before bags (default: not timed)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--table-rows", type=int, default=100_000)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    sizes = [args.table_rows] * 26
    batches = 8
    ones = RandomDataset(RandomSpec(sizes, 13), args.batch_size, batches, seed=0, split="train")
    # (name, trainer module, how a step reads batch i)
    paths: list[tuple[str, Any, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        this = sys.modules[Trainer.__module__]
        if args.before:
            paths.append(("one id (B, T), before", import_before(args.before, tmp), ones.batch))
        paths.append(("one id (B, T)", this, ones.batch))
        paths.append(("bags of 1 (jagged)", this, lambda i: as_bags_of_one(ones.batch(i))))
        for n in (4, 10):
            bags = RandomDataset(RandomSpec(sizes, 13, n, bag_size_fixed=True), args.batch_size, batches, 0, "train")
            paths.append((f"bags of {n}", this, bags.batch))
        trainers = [make_trainer(module, sizes, args.batch_size, ones) for _, module, _ in paths]
        upstream = torch.randn(args.batch_size, 26, 128)
        step_ms: list[list[float]] = [[] for _ in paths]
        lookup_ms: list[list[float]] = [[] for _ in paths]
        for i in range(args.warmup + args.steps):
            for j in range(len(paths)):
                k = (i + j) % len(paths)  # each step starts at another path: no path always runs first
                (_, _, read), trainer = paths[k], trainers[k]
                t0 = time.perf_counter()
                batch = read(i % batches)
                trainer.train_step(batch).item()
                t1 = time.perf_counter()
                embedding_step(trainer, batch, upstream)
                t2 = time.perf_counter()
                if i >= args.warmup:
                    step_ms[k].append((t1 - t0) * 1e3)
                    lookup_ms[k].append((t2 - t1) * 1e3)
    auto, reason = resolve_linear_kernel(Config().validate())
    info = {**cpu_description(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "batch_size": args.batch_size, "table_rows": args.table_rows, "steps": args.steps,
            "before": args.before, "linear_kernel": f"{auto} ({reason})"}
    base = statistics.median(step_ms[1 if args.before else 0])
    results = []
    for (name, _, _), steps, lookups in zip(paths, step_ms, lookup_ms, strict=True):
        step = statistics.median(steps)
        results.append({"path": name, "step_ms": round(step, 1), "steps_per_s": round(1e3 / step, 2),
                        "samples_per_s": round(args.batch_size / step * 1e3),
                        "lookup_ms": round(statistics.median(lookups), 1), "vs_one_id": round(step / base, 3)})
    print(f"# {json.dumps(info)}")
    print(f"{'path':<22} {'step ms':>8} {'steps/s':>8} {'samples/s':>10} {'lookup fwd+bwd ms':>18} {'vs one id':>10}")
    for r in results:
        print(f"{r['path']:<22} {r['step_ms']:>8} {r['steps_per_s']:>8} {r['samples_per_s']:>10,} "
              f"{r['lookup_ms']:>18} {r['vs_one_id']:>9}x")
    if args.json:
        write_json(args.json, {"info": info, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
