"""Train (or evaluate) DLRM on MLPerf binary data, with MLPerf logging.

    python -m reference.train --config configs/FILE.yaml [key=value ...]

The command line, its exit codes, and the run around the training loop
(reference/trainer.py): the MLPerf init phase (data, model, checkpoint) and
the outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

import torch
from mlperf_logging.mllog import constants as C

from . import checkpoint
from .config import Config, ConfigError, help_text
from .data.binary import DataError, load_counts
from .data.loader import BinaryDataset, Dataset
from .data.multihot import load_multihot_sizes
from .data.multihot_dataset import MultiHotDataset
from .data.random_batches import RandomDataset, RandomSpec
from .distributed import runtime
from .distributed.errors import DistributedError
from .distributed.launch import LaunchError, detect
from .distributed.planner import format_plan
from .jsonfile import write_json
from .malloc import keep_freed_memory
from .mlperf_conventions import convention_for
from .mlperf_log import MLPerfLogger, log_hyperparameters, log_submission
from .model import DLRM
from .quantize import embedding_bytes, mlp_bytes, quantize_model
from .synthetic import read_meta
from .trainer import RunResult, RunStatus, Trainer


def resolve_table_sizes(cfg: Config) -> list[int]:
    """Table sizes from the config, else from the counts file, capped by max_ind_range."""
    if cfg.data_mode == "random":  # the config requires table_sizes: no file is read
        assert cfg.table_sizes is not None, "Config.validate() refuses data_mode=random without table_sizes"
        sizes = list(cfg.table_sizes)
    elif cfg.table_sizes is not None:
        sizes = list(cfg.table_sizes)
        if cfg.data_dir is not None:
            path = os.path.join(cfg.data_dir, cfg.counts_file)
            if os.path.isfile(path):
                counts = load_counts(path)
                if len(counts) != len(sizes):
                    raise ConfigError(f"{cfg.where('table_sizes')}: table_sizes lists {len(sizes)} tables, "
                                      f"{path} has {len(counts)}")
    else:
        if cfg.data_dir is None:
            raise ConfigError(f"{cfg.where('table_sizes')}: table_sizes is null, so data_dir must name "
                              f"the folder with {cfg.counts_file}")
        sizes = load_counts(os.path.join(cfg.data_dir, cfg.counts_file))
    if cfg.max_ind_range > 0:
        sizes = [min(n, cfg.max_ind_range) for n in sizes]
    return sizes


def resolve_multihot_sizes(cfg: Config, table_sizes: list[int]) -> list[int]:
    """The bag length of every table: the config's, else the counts file's; the two must agree."""
    path = os.path.join(cfg.data_dir or "", cfg.counts_file)
    stored = load_multihot_sizes(path) if cfg.multihot_sizes is None or os.path.isfile(path) else None
    sizes = list(cfg.multihot_sizes) if cfg.multihot_sizes is not None else stored
    assert sizes is not None, "read from the counts file when the config has none"
    if stored is not None and stored != sizes:
        raise ConfigError(f"{cfg.where('multihot_sizes')}: multihot_sizes {sizes} differ from those the data was "
                          f"made with ({path}: {stored})")
    if len(sizes) != len(table_sizes):
        raise ConfigError(f"{cfg.where('multihot_sizes')}: multihot_sizes lists {len(sizes)} tables, the model has "
                          f"{len(table_sizes)}")
    return sizes


def open_split(cfg: Config, name: str, batch_size: int, table_sizes: list[int]) -> Dataset:
    if cfg.data_dir is None:
        raise ConfigError(f"{cfg.where('data_dir')}: data_dir is not set; point it at the folder with "
                          f"{cfg.train_file} and {cfg.eval_file}")
    path = os.path.join(cfg.data_dir, name)
    if cfg.data_format == "multihot":
        return MultiHotDataset(path, batch_size, resolve_multihot_sizes(cfg, table_sizes), table_sizes)
    return BinaryDataset(path, batch_size, table_sizes, cfg.dense_transform)


def open_data(cfg: Config, table_sizes: list[int]) -> tuple[Dataset | None, Dataset]:
    """The training batches (None when only evaluating) and the evaluation batches."""
    if cfg.data_mode == "random":
        spec = RandomSpec(table_sizes, cfg.bottom_mlp[0], cfg.bag_size, cfg.bag_size_fixed,
                          None if cfg.bag_sizes is None else tuple(cfg.bag_sizes))
        train = None if cfg.inference_only else RandomDataset(spec, cfg.batch_size, cfg.random_train_batches,
                                                              cfg.seed, "train")
        return train, RandomDataset(spec, cfg.eval_batch_size, cfg.random_eval_batches, cfg.seed, "eval")
    eval_data = open_split(cfg, cfg.eval_file, cfg.eval_batch_size, table_sizes)
    train_data = None if cfg.inference_only else open_split(cfg, cfg.train_file, cfg.batch_size, table_sizes)
    return train_data, eval_data


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m reference.train",
        description="Train DLRM on MLPerf binary Criteo data (or evaluate a checkpoint), writing an "
                    "MLPerf log. Options come from --config and key=value overrides. Under torchrun, "
                    "mpirun or srun every process is one rank: tables are split across ranks, the MLPs "
                    "replicated.",
        epilog=help_text(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML file in configs/ (default: the built-in defaults)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override a configuration key")
    p.add_argument("--data-dir", help="same as data_dir=DIR")
    p.add_argument("--results-dir", help="same as results_dir=DIR")
    p.add_argument("--seed", type=int, help="same as seed=N")
    p.add_argument("--resume", metavar="CKPT", help="same as resume=CKPT")
    p.add_argument("--load-checkpoint", metavar="CKPT", help="same as load_checkpoint=CKPT")
    p.add_argument("--inference-only", action="store_true", help="same as inference_only=true")
    p.add_argument("--dist-backend", help="same as dist_backend=NAME (auto, gloo, nccl, mpi)")
    p.add_argument("--plan-only", action="store_true",
                   help="print where each embedding table goes and the memory per rank, then exit "
                        "(allocates nothing; runs without a launcher)")
    p.add_argument("--world-size", type=int, metavar="N",
                   help="with --plan-only: the number of ranks to plan for (default: the launcher's, or 1)")
    return p


def config_from_args(argv=None) -> tuple[Config, argparse.Namespace]:
    args = build_parser().parse_intermixed_args(argv)
    overrides = list(args.overrides)
    for flag, key in (("data_dir", "data_dir"), ("results_dir", "results_dir"), ("seed", "seed"),
                      ("resume", "resume"), ("load_checkpoint", "load_checkpoint"),
                      ("dist_backend", "dist_backend")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.inference_only:
        overrides.append("inference_only=true")
    if args.world_size is not None and not args.plan_only:
        raise ConfigError("command line: --world-size only goes with --plan-only; a run takes its world "
                          "size from the launcher (torchrun, mpirun, srun)")
    if args.world_size is not None and args.world_size < 1:
        raise ConfigError(f"command line: --world-size must be >= 1, got {args.world_size}")
    return Config.from_sources(args.config, overrides), args


def output_paths(cfg: Config) -> tuple[str, str]:
    os.makedirs(cfg.results_dir, exist_ok=True)
    base = cfg.run_name or f"{cfg.name}-seed{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    stem, n = base, 1
    while os.path.exists(os.path.join(cfg.results_dir, stem + ".log")):
        n += 1
        stem = f"{base}-{n}"
    return os.path.join(cfg.results_dir, stem + ".log"), os.path.join(cfg.results_dir, stem + ".json")


def write_summary(path: str, cfg: Config, result: RunResult, table_sizes: list[int], world_size: int = 1,
                  linear_kernel: str = "aten", sparse_update_kernel: str = "torch",
                  interaction_kernel: str = "torch") -> None:
    summary = {
        "config": cfg.as_dict(), "config_name": cfg.name, "table_sizes": table_sizes, "world_size": world_size,
        "linear_kernel": linear_kernel, "sparse_update_kernel": sparse_update_kernel,
        "interaction_kernel": interaction_kernel,
        "converged": result.converged, "status": result.status, "steps": result.steps,
        "epoch_num": result.epoch_num, "run_seconds": result.run_seconds,
        "samples_per_second": result.samples_per_second, "evaluations": result.evaluations,
        "loss_curve": result.loss_curve, "mlperf_log": result.log_path,
    }
    write_json(path, summary)


def describe_dense_compute(cfg: Config, kernel: str, reason: str) -> str:
    if cfg.precision == "fp32":
        return f"dense compute: precision fp32, MLP GEMMs on {kernel} ({reason})"
    return (f"dense compute: precision {cfg.precision} (autocast: {cfg.precision} GEMMs accumulating in fp32; "
            f"fp32 weights, tables and logits)")


def run(cfg: Config, out=sys.stderr, parallel: runtime.Parallel | None = None) -> RunResult:
    """Everything between the command line and the result: the MLPerf
    init phase (data, model), the timed run, and the outputs. With several
    ranks only rank 0 writes the log, the summary and the progress."""
    parallel = parallel if parallel is not None else runtime.SingleProcess(cfg)
    # Every step frees and allocates again activations and gradients of up to tens of MB; kept in
    # the heap they are reused instead of faulted in afresh (reference/malloc.py).
    keep_freed_memory()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    root = parallel.is_root
    log_path, summary_path = output_paths(cfg) if root else (None, None)
    log = MLPerfLogger(None if cfg.inference_only else log_path)
    try:
        log.event(C.CACHE_CLEAR, cfg.cache_cleared)
        log.start(C.INIT_START)
        log_submission(log, cfg)
        log.event("world_size", parallel.world_size)
        table_sizes = resolve_table_sizes(cfg)
        parallel.check_memory(cfg, table_sizes)
        train_data, eval_data = open_data(cfg, table_sizes)
        parallel.check_data(train_data, eval_data)
        meta = read_meta(cfg.data_dir) if cfg.data_mode == "files" and cfg.data_dir is not None else None
        if root and meta is not None and "best_auc_test" in meta:
            print(f"synthetic data: the teacher's AUC on the test split (the best achievable) is "
                  f"{meta['best_auc_test']:.4f}", file=out)
        model = parallel.build_model(cfg, table_sizes)
        if root:
            print(describe_dense_compute(cfg, parallel.linear_kernel, parallel.kernel_reason), file=out)
        for name in model.mlperf_tensor_names():
            log.event(C.WEIGHTS_INITIALIZATION, tensor=name)
        trainer = Trainer(cfg, model, train_data, eval_data, log, out=out, parallel=parallel)
        if root and not cfg.inference_only:
            print(f"sparse updates: {trainer.sparse_update_kernel} ({trainer.sparse_update_reason})", file=out)
        if root and cfg.interaction == "dot":
            print(f"dot interaction: {trainer.interaction_kernel} ({trainer.interaction_reason})", file=out)
        # Every rank reads only its own rows; neither keeps the files mapped once it returns.
        source = cfg.resume or cfg.load_checkpoint
        if cfg.resume is not None and not cfg.inference_only:
            trainer.state = checkpoint.resume(cfg.resume, model, trainer.optimizer, cfg.optimizer)
            if root:
                print(f"resumed from {cfg.resume} at step {trainer.state.step} (epoch {trainer.state.epoch + 1}, "
                      f"batch {trainer.state.batch_in_epoch})", file=out)
        elif source is not None:
            checkpoint.load_weights(source, model)
        if cfg.inference_only:
            fp32_bytes = embedding_bytes(model), mlp_bytes(model)
            if cfg.quantize_embeddings or cfg.quantize_mlp:
                quantize_model(model, cfg.quantize_embeddings, cfg.quantize_mlp)
                if root:
                    print(f"quantized: tables {fp32_bytes[0]:,} -> {embedding_bytes(model):,} bytes, MLPs "
                          f"{fp32_bytes[1]:,} -> {mlp_bytes(model):,} bytes", file=out)
            started = time.time()
            metrics = trainer.evaluate()
            metrics["seconds"] = time.time() - started
            metrics.update(embedding_bytes=embedding_bytes(model), mlp_bytes=mlp_bytes(model),
                           quantize_embeddings=cfg.quantize_embeddings, quantize_mlp=cfg.quantize_mlp)
            if root:
                print(json.dumps(metrics), file=sys.stdout)
            return RunResult(converged=trainer.reached_target(metrics), status=RunStatus.INFERENCE,
                             evaluations=[metrics])
        assert train_data is not None, "opened for every run that is not inference-only"
        log_hyperparameters(log, cfg, convention_for(cfg.submission_benchmark), train_data.num_samples,
                            eval_data.num_samples)
        log.end(C.INIT_STOP)
        result = trainer.fit()
        if summary_path is not None:  # rank 0
            result.log_path, result.summary_path = log_path, summary_path
            write_summary(summary_path, cfg, result, table_sizes, parallel.world_size, parallel.linear_kernel,
                          trainer.sparse_update_kernel, trainer.interaction_kernel)
        return result
    finally:
        log.close()


def plan_only(cfg: Config, world_size: int | None, out=sys.stdout) -> None:
    info = detect()
    if world_size is None:
        world_size = info.world_size if info is not None else 1
    table_sizes = resolve_table_sizes(cfg)
    plan = runtime.make_plan(cfg, table_sizes, world_size)
    if info is None or info.rank == 0:  # under a launcher, one copy of the plan
        print(format_plan(plan, cfg.batch_size, DLRM.dense_parameter_count(cfg, len(table_sizes))), file=out)


def main(argv=None) -> int:
    try:
        cfg, args = config_from_args(argv)
        if args.plan_only:
            plan_only(cfg, args.world_size)
            return 0
        parallel = runtime.start(cfg)
    except (ConfigError, DataError, LaunchError, DistributedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        result = run(cfg, parallel=parallel)
        parallel.close()
    except (ConfigError, DataError, checkpoint.CheckpointError, LaunchError) as e:
        message = f"rank {parallel.rank}: {e}" if parallel.world_size > 1 else str(e)
        print(f"error: {message}", file=sys.stderr)
        parallel.fail(message)
        if parallel.world_size > 1:
            parallel.abort(2)  # the other ranks may be inside a collective: do not wait for them
        return 2
    except DistributedError as e:
        print(f"error: {e}", file=sys.stderr)
        parallel.fail(str(e))
        parallel.abort(1)
        return 1
    except Exception as e:
        if parallel.world_size == 1:
            raise
        # Anything else on one rank (out of memory, a full disk...) would leave the others
        # waiting in a collective: tell them, and end the job.
        traceback.print_exc()
        message = f"rank {parallel.rank}: {type(e).__name__}: {e}"
        print(f"error: {message}", file=sys.stderr)
        parallel.fail(message)
        parallel.abort(1)
        return 1
    if not parallel.is_root:
        return 0 if result.status in (RunStatus.SUCCESS, RunStatus.INFERENCE) else 1
    if result.status == RunStatus.INFERENCE:
        return 0
    final = result.final
    print(f"RESULT: status={result.status} converged={result.converged} steps={result.steps} "
          f"epoch={result.epoch_num:.3f} auc={final.get('auc', float('nan')):.5f} "
          f"time_to_train_s={result.run_seconds:.1f} samples_per_s={result.samples_per_second:,.0f} "
          f"ranks={parallel.world_size}")
    print(f"MLPerf log: {result.log_path}")
    print(f"summary:    {result.summary_path}")
    return 0 if result.status == RunStatus.SUCCESS else 1


if __name__ == "__main__":
    sys.exit(main())
