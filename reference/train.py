"""Train (or evaluate) DLRM on MLPerf binary data, with MLPerf logging.

    python -m reference.train --config configs/FILE.yaml [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from mlperf_logging.mllog import constants as C
from tqdm import tqdm

from . import checkpoint
from .config import Config, ConfigError, help_text
from .data.binary import DataError, load_counts
from .data.loader import BinaryDataset
from .data.pipeline import Batches
from .distributed import runtime
from .distributed.comm import DistributedError
from .distributed.launch import LaunchError, detect
from .distributed.planner import format_plan
from .jsonfile import write_json
from .loss_meter import LossMeter
from .mlperf_log import MLPerfLogger, log_hyperparameters, log_submission
from .model import DLRM
from .optim import build_optimizer, set_learning_rate
from .schedule import PolyWarmupSchedule
from .synthetic import read_meta


@dataclass
class Position:
    """Where training stands: optimiser steps taken, and the next batch."""
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


@dataclass
class RunResult:
    converged: bool
    status: str
    evaluations: list = field(default_factory=list)
    losses: list = field(default_factory=list)
    loss_curve: list = field(default_factory=list)  # (step, mean loss over the last log_every steps)
    steps: int = 0
    epoch_num: float = 0.0
    run_seconds: float = 0.0
    samples_per_second: float = 0.0
    log_path: str | None = None
    summary_path: str | None = None

    @property
    def final(self) -> dict:
        return self.evaluations[-1] if self.evaluations else {}


def resolve_table_sizes(cfg: Config) -> list[int]:
    """Table sizes from the config, else from the counts file, capped by max_ind_range."""
    if cfg.table_sizes is not None:
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


def open_split(cfg: Config, name: str, batch_size: int, table_sizes: list[int]) -> BinaryDataset:
    if cfg.data_dir is None:
        raise ConfigError(f"{cfg.where('data_dir')}: data_dir is not set; point it at the folder with "
                          f"{cfg.train_file} and {cfg.eval_file}")
    return BinaryDataset(os.path.join(cfg.data_dir, name), batch_size, table_sizes)


class Trainer:
    """The training loop: steps, periodic exact evaluation, early stopping,
    checkpoints and the MLPerf log. Every decision depends on the config and
    the data only; the logger and the progress bar only observe."""

    def __init__(self, cfg: Config, model: DLRM, train_data: BinaryDataset | None,
                 eval_data: BinaryDataset, log: MLPerfLogger, out=sys.stderr, parallel=None):
        self.cfg = cfg
        # One process or one rank of several: reads, losses and metrics go through it.
        self.parallel = parallel if parallel is not None else runtime.SingleProcess(cfg)
        self.device = self.parallel.device
        self.precision = self.parallel.precision
        self.model = model.to(self.device)
        self.train_data = train_data
        self.eval_data = eval_data
        self.log = log
        self.out = out
        self.optimizer = build_optimizer(cfg.optimizer, model, cfg.learning_rate, cfg.adagrad_eps,
                                         cfg.adagrad_lr_decay)
        self.schedule = PolyWarmupSchedule.from_config(cfg)
        self.position = Position()

    # --- pieces -----------------------------------------------------------
    def eval_interval(self) -> int:
        """Iterations between evaluations (0: only at epoch end)."""
        if self.cfg.eval_every:
            return self.cfg.eval_every
        if self.cfg.eval_every_epochs:
            assert self.train_data is not None, "only a training run evaluates by epochs"
            return max(1, round(self.cfg.eval_every_epochs * self.train_data.num_batches))
        return 0

    def batches(self, data: BinaryDataset, indices) -> Batches:
        """This process's part of each batch in ``indices``, read ahead and on the device."""
        return Batches(lambda i: self.parallel.batch(data, int(i)), indices, self.cfg.prefetch_batches,
                       self.device)

    def forward(self, batch) -> torch.Tensor:
        with self.precision.autocast():
            return self.model(batch.dense, batch.ids)

    def train_step(self, batch) -> torch.Tensor:
        """One optimiser step; returns this process's share of the loss, unread (see LossMeter)."""
        self.position.step += 1
        set_learning_rate(self.optimizer, self.schedule(self.position.step))
        self.optimizer.zero_grad(set_to_none=True)
        batch = batch.to(self.device)
        logits = self.forward(batch)
        # This process's share of the global batch mean: summed over ranks it is the mean.
        loss = F.binary_cross_entropy_with_logits(logits, batch.labels, reduction="sum") / batch.global_size
        self.parallel.backward(loss, self.position.step)
        self.optimizer.step()
        return loss.detach()

    @torch.no_grad()
    def evaluate(self) -> dict:
        self.model.eval()
        logits, labels = [], []
        with self.batches(self.eval_data, range(self.eval_data.num_batches)) as batches:
            for batch in batches:
                logits.append(self.forward(batch))
                labels.append(batch.labels)
        self.model.train()
        return self.parallel.metrics(torch.cat(logits), torch.cat(labels))

    def reached_target(self, metrics: dict) -> bool:
        cfg = self.cfg
        return ((cfg.auc_threshold is not None and metrics["auc"] >= cfg.auc_threshold)
                or (cfg.accuracy_threshold is not None and metrics["accuracy"] >= cfg.accuracy_threshold))

    def has_target(self) -> bool:
        return self.cfg.auc_threshold is not None or self.cfg.accuracy_threshold is not None

    def save_checkpoint(self) -> None:
        if self.cfg.checkpoint_path is None:
            return
        p = self.position
        checkpoint.save(self.cfg.checkpoint_path, self.model, self.optimizer, step=p.step, epoch=p.epoch,
                        batch_in_epoch=p.batch_in_epoch, config=self.cfg.as_dict(),
                        table_sizes=self.model.embeddings.table_sizes)

    def restore(self, data: dict) -> None:
        """Continue from a checkpoint saved by :meth:`save_checkpoint` (weights already loaded)."""
        if "optimizer" not in data:
            raise checkpoint.CheckpointError("the checkpoint has no optimiser state; it can initialise "
                                             "a model (load_checkpoint) but not resume a run")
        try:
            self.optimizer.load_state_dict(data["optimizer"])
        except (ValueError, KeyError) as e:
            raise checkpoint.CheckpointError(f"optimiser state does not match optimizer="
                                             f"{self.cfg.optimizer!r}: {e}") from None
        self.position = Position(int(data["step"]), int(data["epoch"]), int(data["batch_in_epoch"]))

    # --- the run ----------------------------------------------------------
    def _next_eval(self, i: int, nb: int, interval: int) -> int:
        """Batch index (within the epoch) of the evaluation that ends the block starting at i."""
        return min(nb, (i // interval + 1) * interval) if interval else nb

    def _evaluate_and_log(self, epoch_num: float, result: RunResult, bar) -> bool:
        """One evaluation, logged; returns whether the target is reached."""
        log = self.log
        log.start(C.EVAL_START, epoch_num=epoch_num)
        metrics = self.evaluate()
        log.end(C.EVAL_STOP, epoch_num=epoch_num)
        log.event(C.EVAL_ACCURACY, metrics["auc"], epoch_num=epoch_num)
        metrics.update(step=self.position.step, epoch_num=epoch_num)
        result.evaluations.append(metrics)
        if self.parallel.is_root:
            bar.write(f"eval @ epoch {epoch_num:.3f} (step {self.position.step}): AUC {metrics['auc']:.5f} "
                      f"accuracy {metrics['accuracy']:.5f} log loss {metrics['log_loss']:.5f}", file=self.out)
        return self.reached_target(metrics)

    def fit(self) -> RunResult:
        """Train until the target, ``epochs`` or ``max_steps``. MLPerf log:
        an epoch_start/epoch_stop pair per whole epoch, and a block_start/
        block_stop pair around the training between two evaluations, so a run
        that converges inside its first epoch still closes a block."""
        cfg, data, log = self.cfg, self.train_data, self.log
        assert data is not None, "fit() needs training data (an inference-only run only evaluates)"
        result = RunResult(converged=False, status=C.ABORTED)
        interval = self.eval_interval()
        nb = data.num_batches
        samples = 0
        meter = LossMeter(cfg.log_every, self.parallel.global_losses, cfg.batch_size)
        self.parallel.barrier()  # every rank starts the clock together
        # The time to train is run_stop minus run_start as logged, so take both from one clock.
        run_start_ms = int(time.time() * 1000)
        log.start(C.RUN_START, time_ms=run_start_ms)
        stop = False
        block_first = None  # 1-based epoch number where the open block began
        while self.position.epoch < cfg.epochs and not stop:
            epoch = self.position.epoch
            order = data.batch_order(epoch, cfg.shuffle_batches, cfg.seed)
            log.start(C.EPOCH_START, epoch_num=epoch + 1)
            bar = tqdm(total=nb, initial=self.position.batch_in_epoch, desc=f"epoch {epoch + 1}",
                       file=self.out, disable=not (cfg.progress and self.parallel.is_root), unit="it",
                       dynamic_ncols=True, mininterval=0.5 if self.out.isatty() else 30)
            with self.batches(data, order[self.position.batch_in_epoch:]) as batches:
                for batch in batches:
                    i = self.position.batch_in_epoch
                    if block_first is None:
                        block_first = epoch + 1 + i / nb
                        log.start(C.BLOCK_START, first_epoch_num=block_first,
                                  epoch_count=(self._next_eval(i, nb, interval) - i) / nb)
                    loss = self.train_step(batch)
                    self.position.batch_in_epoch = i = i + 1
                    samples += batch.global_size
                    bar.update(1)
                    window = meter.add(self.position.step, loss)
                    if window is not None:
                        bar.set_postfix(loss=f"{window[0]:.4f}", samples_per_s=f"{window[1]:,.0f}")
                    if (interval and i % interval == 0) or i == nb:
                        log.end(C.BLOCK_STOP, first_epoch_num=block_first)
                        block_first = None
                        stop = self._evaluate_and_log(epoch + 1 + i / nb, result, bar)
                        result.converged = stop
                    if cfg.checkpoint_every and self.position.step % cfg.checkpoint_every == 0:
                        self.save_checkpoint()
                    if cfg.max_steps and self.position.step >= cfg.max_steps:
                        stop = True
                    if stop:
                        break
            bar.close()
            if self.position.batch_in_epoch == nb:
                log.end(C.EPOCH_STOP, epoch_num=epoch + 1)
                self.position.epoch += 1
                self.position.batch_in_epoch = 0
        if block_first is not None:  # stopped by max_steps between evaluations
            log.end(C.BLOCK_STOP, first_epoch_num=block_first)
        result.status = C.SUCCESS if result.converged or not self.has_target() else C.ABORTED
        run_stop_ms = int(time.time() * 1000)
        log.end(C.RUN_STOP, time_ms=run_stop_ms, status=result.status)
        result.run_seconds = (run_stop_ms - run_start_ms) / 1000
        meter.flush()
        result.losses, result.loss_curve = meter.losses, meter.curve
        self.save_checkpoint()
        result.steps = self.position.step
        result.epoch_num = result.evaluations[-1]["epoch_num"] if result.evaluations else 0.0
        result.samples_per_second = samples / max(result.run_seconds, 1e-9)
        return result


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
                  linear_kernel: str = "aten") -> None:
    summary = {
        "config": cfg.as_dict(), "config_name": cfg.name, "table_sizes": table_sizes, "world_size": world_size,
        "linear_kernel": linear_kernel,
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


def run(cfg: Config, out=sys.stderr, parallel=None) -> RunResult:
    """Everything between the command line and the result: the MLPerf
    init phase (data, model), the timed run, and the outputs. With several
    ranks only rank 0 writes the log, the summary and the progress."""
    parallel = parallel if parallel is not None else runtime.SingleProcess(cfg)
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
        eval_data = open_split(cfg, cfg.eval_file, cfg.eval_batch_size, table_sizes)
        train_data = None if cfg.inference_only else open_split(cfg, cfg.train_file, cfg.batch_size, table_sizes)
        parallel.check_data(train_data, eval_data)
        assert cfg.data_dir is not None, "open_split() refuses a run without data_dir"
        meta = read_meta(cfg.data_dir)
        if root and meta is not None and "best_auc_test" in meta:
            print(f"synthetic data: the teacher's AUC on the test split (the best achievable) is "
                  f"{meta['best_auc_test']:.4f}", file=out)
        model = parallel.build_model(cfg, table_sizes)
        if root:
            print(describe_dense_compute(cfg, parallel.linear_kernel, parallel.kernel_reason), file=out)
        for name in model.mlperf_tensor_names():
            log.event(C.WEIGHTS_INITIALIZATION, tensor=name)
        trainer = Trainer(cfg, model, train_data, eval_data, log, out=out, parallel=parallel)
        source = cfg.resume or cfg.load_checkpoint
        if source is not None:
            data = checkpoint.load_weights(source, model)
            if cfg.resume is not None and not cfg.inference_only:
                trainer.restore(data)
                print(f"resumed from {cfg.resume} at step {trainer.position.step} "
                      f"(epoch {trainer.position.epoch + 1}, batch {trainer.position.batch_in_epoch})", file=out)
            del data  # the loaded tensors (a copy of the tables) must not stay referenced during fit()
        if cfg.inference_only:
            started = time.time()
            metrics = trainer.evaluate()
            metrics["seconds"] = time.time() - started
            if root:
                print(json.dumps(metrics), file=sys.stdout)
            return RunResult(converged=trainer.reached_target(metrics), status="inference",
                             evaluations=[metrics])
        assert train_data is not None, "opened for every run that is not inference-only"
        log_hyperparameters(log, cfg, train_data.num_samples, eval_data.num_samples)
        log.end(C.INIT_STOP)
        result = trainer.fit()
        if summary_path is not None:  # rank 0
            result.log_path, result.summary_path = log_path, summary_path
            write_summary(summary_path, cfg, result, table_sizes, parallel.world_size, parallel.linear_kernel)
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
        return 0 if result.status in ("success", "inference") else 1
    if result.status == "inference":
        return 0
    final = result.final
    print(f"RESULT: status={result.status} converged={result.converged} steps={result.steps} "
          f"epoch={result.epoch_num:.3f} auc={final.get('auc', float('nan')):.5f} "
          f"time_to_train_s={result.run_seconds:.1f} samples_per_s={result.samples_per_second:,.0f} "
          f"ranks={parallel.world_size}")
    print(f"MLPerf log: {result.log_path}")
    print(f"summary:    {result.summary_path}")
    return 0 if result.status == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
