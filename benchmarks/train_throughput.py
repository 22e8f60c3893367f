"""Training throughput of the MLPerf architecture per dense-compute path, side
by side in one run, and the share of each step that is not the dense MLPs.

Configuration: 26 tables of 100,000 rows, dimension 128, bottom
13-512-256-128, top 1024-1024-512-256-1, batch 2048, random ids, read through
the real binary loader. Paths (each a full Trainer on its own copy of the
model):

- ``fp32 aten``:   precision fp32, linear_kernel=aten (plain ``nn.Linear``: torch's BLAS);
- ``fp32 onednn``: precision fp32, linear_kernel=onednn (the exact oneDNN kernel);
- ``bf16``:        precision bf16 (autocast), where the CPU has native bf16.

With ``--before REV`` the fp32 aten and bf16 paths of git revision REV
(``git archive``, imported beside this code as ``reference_before``) run on
the same batches too: a before/after of the whole step within one run
(``--before-paths``: other paths of REV, ``fp32 onednn`` among them).
``--interaction-kernel`` sets this code's ``interaction_kernel`` on every
path (``native``: fp32's opt-in kernels; beside ``--before`` a revision
on torch's, the change within one run).

For each optimiser the paths' training steps (loader + embeddings +
interaction + MLPs + optimiser) are timed interleaved, step by step, each
step starting at another path, so a busy machine slows all of them alike
and none always runs first; after each step the same path's MLP
forward+backward alone on the same batch (its floor: what is left is dense
compute) is timed too. Then each path's evaluation (forward, scores, exact
metrics over the file's samples) at each ``--eval-batch-sizes``, interleaved.
``--phases`` splits a step into its parts (lookup, each MLP, the
interaction, each backward part, the optimiser) with module hooks.
Medians over steps; every ratio compares figures of this run. The header
names the CPU, its relevant flags, and which kernel ``linear_kernel=auto``
picks here.

    python -m benchmarks.train_throughput [--steps 20] [--optimizers sgd rowwise_adagrad] [--profile N]
        [--phases] [--before REV] [--eval-batch-sizes 2048 16384] [--interaction-kernel auto] [--json FILE]
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from typing import Any

import numpy as np
import torch

from reference import trainer as trainer_module
from reference.config import INTERACTION_KERNELS, Config
from reference.cpuinfo import cpu_info
from reference.data.binary import write_binary
from reference.data.loader import BinaryDataset
from reference.dot_kernels import resolve_interaction_kernel
from reference.jsonfile import write_json
from reference.linear import onednn_available
from reference.malloc import keep_freed_memory
from reference.model import resolve_linear_kernel
from reference.precision import cpu_bf16_support
from reference.row_kernels import resolve_sparse_update_kernel
from reference.trainer import Trainer

PATHS = {"fp32 aten": dict(precision="fp32", linear_kernel="aten"),
         "fp32 onednn": dict(precision="fp32", linear_kernel="onednn"),
         "bf16": dict(precision="bf16")}
BEFORE_PATHS = ("fp32 aten", "bf16")  # timed for --before REV too, unless --before-paths says otherwise
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


def import_before(revision: str, into: str) -> Any:
    """The package ``reference`` of ``revision``, importable as ``reference_before``
    (its imports are relative, so it runs beside this one)."""
    proc = subprocess.run(["git", "archive", revision, "reference"], capture_output=True)
    if proc.returncode:
        raise SystemExit(f"--before {revision}: git archive failed: {proc.stderr.decode().strip()}")
    archive = proc.stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    os.rename(os.path.join(into, "reference"), os.path.join(into, "reference_before"))
    sys.path.insert(0, into)
    return importlib.import_module("reference_before.trainer")


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


def build_trainer(package: Any, settings: dict, sizes: list[int], data: Any) -> Any:
    """A Trainer of ``package`` (``reference.trainer``, or a revision's from :func:`import_before`) with
    the config ``settings``, training and evaluating on ``data``."""
    root = package.__name__.rsplit(".", 1)[0]
    config, model, log = (importlib.import_module(f"{root}.{name}") for name in ("config", "model", "mlperf_log"))
    cfg = config.Config()
    cfg.update(settings, origin="benchmark")
    cfg.validate()
    return package.Trainer(cfg, model.DLRM.from_config(cfg, sizes), data, data, log.MLPerfLogger(None))


def path_settings(name: str, args) -> dict:
    """This code's config for path ``name``: its own settings and ``--interaction-kernel`` (a
    revision's trainer, for ``--before``, keeps its defaults)."""
    return {**PATHS[name], "interaction_kernel": args.interaction_kernel}


def make_trainer(optimizer: str, settings: dict, data: BinaryDataset, sizes: list[int], batch_size: int,
                 package: Any = trainer_module) -> Trainer:
    return build_trainer(package, dict(optimizer=optimizer, batch_size=batch_size, learning_rate=0.01,
                                       progress=False, submission_division="open", **settings), sizes, data)


def measure(optimizer: str, paths: list[str], path: str, args, before: Any = None) -> list[dict]:
    sizes = [args.table_rows] * 26
    data = BinaryDataset(path, args.batch_size, sizes)
    trainers = {name: make_trainer(optimizer, path_settings(name, args), data, sizes, args.batch_size)
                for name in paths}
    if before is not None:
        for name in args.before_paths:
            if name in paths:
                trainers[f"{name} @ {args.before}"] = make_trainer(optimizer, PATHS[name], data, sizes,
                                                                   args.batch_size, before)
    names = list(trainers)
    pairs = torch.randn(args.batch_size, 27 * 26 // 2)
    step_ms = {name: [] for name in names}
    mlp_ms = {name: [] for name in names}
    for i in range(args.warmup + args.steps):
        index = i % data.num_batches
        # Each step starts at another path: whichever runs first after the others' memory traffic pays for it.
        for name in names[i % len(names):] + names[:i % len(names)]:
            trainer = trainers[name]
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
    for name in names:
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
        trainer = make_trainer(optimizer, path_settings(name, args), data, sizes, args.batch_size)
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


PHASES = ("lookup", "bottom MLP", "interaction", "top MLP + loss", "backward: top MLP", "backward: interaction",
          "backward: bottom MLP + tables", "optimizer", "rest (read, zero_grad)")


def phase_breakdown(optimizer: str, paths: list[str], path: str, args) -> dict[str, dict[str, float]]:
    """Per path, median ms per step in each part of a training step, from timestamps taken by
    module and optimiser hooks around the unchanged ``train_step`` (one trainer at a time). Unlike
    the profiler's per-operator times these include what each part leaves behind in the caches."""
    sizes = [args.table_rows] * 26
    data = BinaryDataset(path, args.batch_size, sizes)
    out = {}
    for name in paths:
        trainer = make_trainer(optimizer, path_settings(name, args), data, sizes, args.batch_size)
        model, marks = trainer.model, {}

        def mark(key: str, marks: dict = marks):
            return lambda *_: marks.__setitem__(key, time.perf_counter())

        for key, module in (("lookup", model.embeddings), ("bottom", model.bottom_mlp),
                            ("interaction", model.interaction), ("top", model.top_mlp)):
            module.register_forward_pre_hook(mark(key + " in"))
            module.register_forward_hook(mark(key + " out"))
        model.top_mlp.register_full_backward_hook(mark("top back"))
        model.interaction.register_full_backward_hook(mark("interaction back"))
        trainer.optimizer.register_step_pre_hook(mark("step in"))
        trainer.optimizer.register_step_post_hook(mark("step out"))
        edges = [("lookup in", "lookup out"), ("bottom in", "bottom out"), ("interaction in", "interaction out"),
                 ("top in", "top back"), ("top back", "interaction back"), ("interaction back", "step in"),
                 ("step in", "step out")]
        times: dict[str, list[float]] = {phase: [] for phase in PHASES}
        for i in range(args.warmup + args.steps):
            batch = data.batch(i % data.num_batches)
            start = time.perf_counter()
            trainer.train_step(batch).item()
            total = time.perf_counter() - start
            if i < args.warmup:
                continue
            # "top" runs from the top MLP's input to its input gradient: its forward, the loss, its backward.
            top_forward = marks["top out"] - marks["top in"]
            spans = [marks[b] - marks[a] for a, b in edges]
            parts = spans[:3] + [top_forward, spans[3] - top_forward] + spans[4:]
            for phase, seconds in zip(PHASES, [*parts, total - sum(parts)], strict=True):
                times[phase].append(seconds * 1e3)
        out[name] = {phase: round(statistics.median(v), 2) for phase, v in times.items()}
        del trainer
    return out


def measure_evaluation(paths: list[str], path: str, args) -> list[dict]:
    """Evaluation samples/s (forward, scores, exact metrics) per path and evaluation batch size,
    the sizes interleaved pass by pass; the file holds 16 training batches of samples."""
    sizes = [args.table_rows] * 26
    train = BinaryDataset(path, args.batch_size, sizes)
    trainers = {name: make_trainer("sgd", path_settings(name, args), train, sizes, args.batch_size) for name in paths}
    evaluation_data = {b: BinaryDataset(path, b, sizes) for b in args.eval_batch_sizes}
    seconds: dict[tuple[str, int], list[float]] = {(n, b): [] for n in paths for b in args.eval_batch_sizes}
    for i in range(1 + args.eval_passes):  # the first pass is warm-up
        for name, batch_size in seconds:
            trainer = trainers[name]
            trainer.eval_data = evaluation_data[batch_size]
            t0 = time.perf_counter()
            trainer.evaluate()
            if i:
                seconds[(name, batch_size)].append(time.perf_counter() - t0)
    largest = max(args.eval_batch_sizes)
    rate = {key: train.num_samples / statistics.median(v) for key, v in seconds.items()}
    return [{"path": name, "eval_batch_size": b, "samples_per_s": round(rate[(name, b)]),
             "vs_largest": round(rate[(name, b)] / rate[(name, largest)], 2)} for name, b in seconds]


def auto_verdicts(results: list[dict], auto: str) -> list[str]:
    """Whether linear_kernel=auto's choice is the faster fp32 path on this CPU, per optimiser."""
    notes = []
    for optimizer in dict.fromkeys(r["optimizer"] for r in results):
        fp32 = {r["path"]: r["step_ms"] for r in results
                if r["optimizer"] == optimizer and r["path"] in ("fp32 aten", "fp32 onednn")}
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
    p.add_argument("--before", metavar="REV",
                   help="also time paths of git revision REV (imported beside this code; --before-paths)")
    p.add_argument("--before-paths", nargs="+", choices=list(PATHS), default=list(BEFORE_PATHS), metavar="PATH",
                   help=f"the paths of REV that --before times (default: {', '.join(BEFORE_PATHS)}; "
                        f"any of {', '.join(PATHS)})")
    p.add_argument("--eval-batch-sizes", type=int, nargs="*", default=[2048, 16384],
                   help="also time the evaluation at these batch sizes (none: skip)")
    p.add_argument("--eval-passes", type=int, default=3, help="evaluation passes per path and batch size")
    p.add_argument("--interaction-kernel", choices=INTERACTION_KERNELS, default="auto",
                   help="this code's interaction_kernel on every path (native: fp32's opt-in kernels too)")
    p.add_argument("--phases", action="store_true",
                   help="also print where a step's time goes, per path (first optimiser; module hooks)")
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
            "batch_size": args.batch_size, "table_rows": args.table_rows, "steps": args.steps, "before": args.before,
            "before_paths": args.before_paths if args.before else [],
            "interaction_kernel": args.interaction_kernel,
            "linear_kernel_auto": f"{auto} ({reason})",
            "sparse_update_kernel_auto": "{} ({})".format(*resolve_sparse_update_kernel("auto", "cpu")),
            **{f"interaction_kernel_auto_{p}": "{} ({})".format(*resolve_interaction_kernel("auto", "dot", "cpu", p))
               for p in ("fp32", "bf16")}}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "random.bin")
        random_file(path, 16 * args.batch_size, args.table_rows)
        before = import_before(args.before, tmp) if args.before else None
        results = [r for name in args.optimizers for r in measure(name, paths, path, args, before)]
        evaluation = measure_evaluation(paths, path, args) if args.eval_batch_sizes else []
        phases = phase_breakdown(args.optimizers[0], paths, path, args) if args.phases else {}
        profiles = profile_steps(args.optimizers[0], paths, path, args) if args.profile else {}
    notes += auto_verdicts(results, auto)
    print(f"# {json.dumps(info)}")
    for note in notes:
        print(f"# {note}")
    width = max(len(r["path"]) for r in results)
    print(f"{'optimizer':<16} {'path':<{width}} {'step ms':>8} {'MLP-only ms':>12} {'samples/s':>10} "
          f"{'non-MLP share':>14} {'step/floor':>11} {'vs fp32 aten':>13}")
    for r in results:
        print(f"{r['optimizer']:<16} {r['path']:<{width}} {r['step_ms']:>8} {r['mlp_only_ms']:>12} "
              f"{r['samples_per_s']:>10,} {r['non_mlp_share']:>14.1%} {r['step_vs_floor']:>10}x "
              f"{r['step_vs_fp32_aten']:>12}x")
    if evaluation:
        print(f"{'evaluation':<16} {'path':<{width}} {'batch':>8} {'samples/s':>12} {'vs largest':>11}")
        for r in evaluation:
            print(f"{'':<16} {r['path']:<{width}} {r['eval_batch_size']:>8} {r['samples_per_s']:>12,} "
                  f"{r['vs_largest']:>10}x")
    if phases:
        print(f"{'phase (' + args.optimizers[0] + ', ms)':<32}" + "".join(f"{name:>13}" for name in phases))
        for phase in PHASES:
            print(f"{phase:<32}" + "".join(f"{phases[name][phase]:>13}" for name in phases))
    for name, ops in profiles.items():
        print(f"# {args.optimizers[0]}, {name}: self CPU ms per step: "
              + ", ".join(f"{op} {ms}" for op, ms in ops))
    if args.json:
        write_json(args.json, {"info": info, "notes": notes, "results": results, "evaluation": evaluation,
                               "phases": phases, "profiles": profiles})
    return 0


if __name__ == "__main__":
    sys.exit(main())
