"""The training loop: steps, periodic exact evaluation, early stopping,
checkpoints and the MLPerf log.

Every decision depends on the config and the data only; the MLPerf log, the
loss meter and the progress bar observe the run and never steer it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from enum import StrEnum

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import checkpoint
from .config import Config
from .data.loader import Dataset
from .data.pipeline import Batches
from .distributed import runtime
from .dot_kernels import native_dot_kernels
from .embeddings import FusedEmbeddingBag
from .interaction import DotInteraction
from .loss_meter import LossMeter
from .mlperf_conventions import convention_for
from .mlperf_log import MLPerfLogger, RunBracketing
from .model import DLRM
from .optim import backward_row_update, build_optimizer, set_learning_rate
from .row_kernels import native_row_kernels
from .schedule import PolyWarmupSchedule
from .training_state import TrainingState


class RunStatus(StrEnum):
    """How a run ended; the first two are MLPerf's run_stop statuses."""
    SUCCESS = "success"      # reached the target, or had none and ran its length
    ABORTED = "aborted"      # ran its length without reaching the target
    INFERENCE = "inference"  # evaluated a loaded model, trained nothing


@dataclass
class RunResult:
    converged: bool
    status: RunStatus
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


@dataclass(frozen=True)
class EvalSchedule:
    """Evaluations every ``interval`` batches of an epoch (0: none inside it) and at every epoch's end."""
    interval: int
    batches_per_epoch: int

    def due(self, batches_done: int) -> bool:
        return (self.interval > 0 and batches_done % self.interval == 0) or batches_done == self.batches_per_epoch

    def next_after(self, batch: int) -> int:
        """Batches done in the epoch at the evaluation that follows ``batch``."""
        if not self.interval:
            return self.batches_per_epoch
        return min(self.batches_per_epoch, (batch // self.interval + 1) * self.interval)


class Trainer:
    def __init__(self, cfg: Config, model: DLRM, train_data: Dataset | None,
                 eval_data: Dataset, log: MLPerfLogger, out=sys.stderr,
                 parallel: runtime.Parallel | None = None):
        self.cfg = cfg
        # One process or one rank of several: reads, losses and metrics go through it.
        self.parallel: runtime.Parallel = parallel if parallel is not None else runtime.SingleProcess(cfg)
        self.device = self.parallel.device
        self.precision = self.parallel.precision
        self.model = model.to(self.device)
        self.train_data = train_data
        self.eval_data = eval_data
        self.log = log
        self.out = out
        self.sparse_update_kernel, self.sparse_update_reason = runtime.make_sparse_update_kernel(cfg, self.device)
        self.optimizer = build_optimizer(cfg.optimizer, model, cfg.learning_rate, cfg.adagrad_eps,
                                         cfg.adagrad_lr_decay, self.sparse_update_kernel)
        tables = self.model.embeddings
        if self.sparse_update_kernel == "native" and isinstance(tables, FusedEmbeddingBag):
            # The lookup and the tables' step in its backward, on the same kernels (reference/embeddings.py).
            tables.use_native_kernels(native_row_kernels(), backward_row_update(self.optimizer, tables.weight))
            self.sparse_update_reason += ("; a lookup of one id per table is native too, the tables stepped in "
                                          "its backward")
        self.interaction_kernel, self.interaction_reason = runtime.make_interaction_kernel(cfg, self.device)
        if self.interaction_kernel == "native" and isinstance(self.model.interaction, DotInteraction):
            self.model.interaction.use_native_kernels(native_dot_kernels(self.precision.dtype))
        self.schedule = PolyWarmupSchedule.from_config(cfg)
        self.checkpoints = checkpoint.CheckpointPolicy(cfg.checkpoint_path, cfg.checkpoint_every)
        self.state = TrainingState()
        self.saved_step: int | None = None  # the step of this run's last checkpoint

    # --- pieces -----------------------------------------------------------
    def eval_schedule(self, data: Dataset) -> EvalSchedule:
        if self.cfg.eval_every:
            interval = self.cfg.eval_every
        elif self.cfg.eval_every_epochs:
            interval = max(1, round(self.cfg.eval_every_epochs * data.num_batches))
        else:
            interval = 0
        return EvalSchedule(interval, data.num_batches)

    def batches(self, data: Dataset, indices) -> Batches:
        """This process's part of each batch in ``indices``, read ahead and on the device."""
        return Batches(lambda i: self.parallel.batch(data, int(i)), indices, self.cfg.prefetch_batches,
                       self.device)

    def forward(self, batch) -> torch.Tensor:
        with self.precision.autocast():
            return self.model(batch.dense, batch.ids)

    def train_step(self, batch) -> torch.Tensor:
        """One optimiser step; returns this process's share of the loss, unread (see LossMeter)."""
        self.state.step += 1
        set_learning_rate(self.optimizer, self.schedule(self.state.step))
        self.optimizer.zero_grad(set_to_none=True)
        batch = batch.to(self.device)
        logits = self.forward(batch)
        # This process's share of the global batch mean: summed over ranks it is the mean.
        loss = F.binary_cross_entropy_with_logits(logits, batch.labels, reduction="sum") / batch.global_size
        self.parallel.backward(loss, self.state.step)
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

    def out_of_steps(self) -> bool:
        return self.cfg.max_steps > 0 and self.state.step >= self.cfg.max_steps

    def save_checkpoint(self) -> None:
        assert self.cfg.checkpoint_path is not None, "the checkpoint policy saves only with a path"
        checkpoint.save(self.cfg.checkpoint_path, self.model, self.optimizer, self.state,
                        config=self.cfg.as_dict(), table_sizes=self.model.embeddings.table_sizes, group=self.parallel)
        self.saved_step = self.state.step

    def progress_bar(self, total: int) -> tqdm:
        return tqdm(total=total, initial=self.state.batch_in_epoch, desc=f"epoch {self.state.epoch + 1}",
                    file=self.out, disable=not (self.cfg.progress and self.parallel.is_root), unit="it",
                    dynamic_ncols=True, mininterval=0.5 if self.out.isatty() else 30)

    def evaluate_and_log(self, mlperf: RunBracketing, result: RunResult, bar: tqdm) -> bool:
        """One evaluation, logged and recorded; returns whether the target is reached."""
        metrics = mlperf.evaluation(self.state, self.evaluate)
        epoch_num = mlperf.epoch_num(self.state)
        metrics.update(step=self.state.step, epoch_num=epoch_num)
        result.evaluations.append(metrics)
        if self.parallel.is_root:
            bar.write(f"eval @ epoch {epoch_num:.3f} (step {self.state.step}): AUC {metrics['auc']:.5f} "
                      f"accuracy {metrics['accuracy']:.5f} log loss {metrics['log_loss']:.5f}", file=self.out)
        return self.reached_target(metrics)

    # --- the run ----------------------------------------------------------
    def fit(self) -> RunResult:
        """Train from ``self.state`` until the target, ``epochs`` or ``max_steps``."""
        cfg, data = self.cfg, self.train_data
        assert data is not None, "fit() needs training data (an inference-only run only evaluates)"
        evals = self.eval_schedule(data)
        mlperf = RunBracketing(self.log, data.num_batches, convention_for(cfg.submission_benchmark))
        meter = LossMeter(cfg.log_every, self.parallel.global_losses)
        result = RunResult(converged=False, status=RunStatus.ABORTED)
        self.parallel.barrier()  # every rank starts the clock together
        run_start_ms = mlperf.run_start()
        while self.state.epoch < cfg.epochs and not (result.converged or self.out_of_steps()):
            mlperf.epoch_start(self.state)
            order = data.batch_order(self.state.epoch, cfg.shuffle_batches, cfg.seed)
            with self.progress_bar(data.num_batches) as bar, \
                    self.batches(data, order[self.state.batch_in_epoch:]) as batches:
                for batch in batches:
                    mlperf.before_step(self.state, evals.next_after(self.state.batch_in_epoch))
                    loss = self.train_step(batch)
                    self.state.batch_in_epoch += 1
                    bar.update(1)
                    window = meter.add(self.state.step, loss, batch.global_size)
                    if window is not None:
                        bar.set_postfix(loss=f"{window[0]:.4f}", samples_per_s=f"{window[1]:,.0f}")
                    if evals.due(self.state.batch_in_epoch):
                        result.converged = self.evaluate_and_log(mlperf, result, bar)
                    if self.checkpoints.due(self.state.step):
                        self.save_checkpoint()
                    if result.converged or self.out_of_steps():
                        break
            if self.state.batch_in_epoch == data.num_batches:
                mlperf.epoch_stop(self.state)
                self.state.next_epoch()
        result.status = RunStatus.SUCCESS if result.converged or not self.has_target() else RunStatus.ABORTED
        run_stop_ms = mlperf.run_stop(result.status)
        meter.flush()
        if self.checkpoints.at_end and self.saved_step != self.state.step:  # not twice the same weights
            self.save_checkpoint()
        result.run_seconds = (run_stop_ms - run_start_ms) / 1000
        result.losses, result.loss_curve = meter.losses, meter.curve
        result.steps = self.state.step
        result.epoch_num = result.final.get("epoch_num", 0.0)
        result.samples_per_second = meter.samples / max(result.run_seconds, 1e-9)
        return result
