"""MLPerf compliance log (``:::MLLOG`` lines) written with ``mlperf_logging.mllog``.

The logger writes to one result file only (never to stdout or stderr, so
progress output cannot pollute it). A disabled logger accepts the same calls
and writes nothing: training never branches on whether logging is on.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from mlperf_logging.mllog import constants as C
from mlperf_logging.mllog.mllog import MLLogger as _MLLogger

from .mlperf_conventions import LogConvention
from .training_state import TrainingState

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class MLPerfLogger:
    def __init__(self, path: str | None):
        self.path = path
        # A private logging.Logger (not registered with logging.getLogger), so
        # two runs in one process never share handlers.
        logger = logging.Logger(f"mllog:{path}", level=logging.INFO)
        if path is not None:
            handler = logging.FileHandler(path, mode="x")
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)
        else:
            logger.addHandler(logging.NullHandler())
        self._logger = logger
        self._mllog = _MLLogger(logger=logger, default_stack_offset=2, root_dir=ROOT)

    def event(self, key, value=None, **metadata) -> None:
        self._mllog.event(key=key, value=value, metadata=metadata or None)

    def start(self, key, value=None, time_ms=None, **metadata) -> None:
        self._mllog.start(key=key, value=value, metadata=metadata or None, time_ms=time_ms)

    def end(self, key, value=None, time_ms=None, **metadata) -> None:
        self._mllog.end(key=key, value=value, metadata=metadata or None, time_ms=time_ms)

    def close(self) -> None:
        for handler in list(self._logger.handlers):
            handler.close()
            self._logger.removeHandler(handler)


class RunBracketing:
    """The timed part of the log: run_start/run_stop around it, an
    epoch_start/epoch_stop pair per whole epoch, a block_start/block_stop pair
    around the training between two evaluations (so a run that converges inside
    its first epoch still closes a block), and the evaluations; epoch_num as
    the benchmark's ``convention`` counts it."""

    def __init__(self, log: MLPerfLogger, batches_per_epoch: int, convention: LogConvention):
        self.log, self.batches_per_epoch, self.convention = log, batches_per_epoch, convention
        self._block_first: float | None = None  # epoch_num where the open block began

    def run_start(self) -> int:
        """Logs run_start; returns its time in ms (the time to train is run_stop minus it, one clock)."""
        now = int(time.time() * 1000)
        self.log.start(C.RUN_START, time_ms=now)
        return now

    def epoch_num(self, state: TrainingState) -> float:
        return self.convention.epoch_num(state, self.batches_per_epoch)

    def epoch_start(self, state: TrainingState) -> None:
        self.log.start(C.EPOCH_START, epoch_num=self.convention.epoch_index(state))

    def before_step(self, state: TrainingState, block_end: int) -> None:
        """Opens a block if none is open; ``block_end``: the batch in the epoch where it will end."""
        if self._block_first is None:
            self._block_first = self.epoch_num(state)
            self.log.start(C.BLOCK_START, first_epoch_num=self._block_first,
                           epoch_count=(block_end - state.batch_in_epoch) / self.batches_per_epoch)

    def evaluation(self, state: TrainingState, evaluate: Callable[[], dict]) -> dict:
        """Closes the open block, runs ``evaluate`` between eval_start and eval_stop, logs its AUC."""
        self._end_block()
        epoch_num = self.epoch_num(state)
        self.log.start(C.EVAL_START, epoch_num=epoch_num)
        metrics = evaluate()
        self.log.end(C.EVAL_STOP, epoch_num=epoch_num)
        self.log.event(C.EVAL_ACCURACY, metrics["auc"], epoch_num=epoch_num)
        return metrics

    def epoch_stop(self, state: TrainingState) -> None:
        self.log.end(C.EPOCH_STOP, epoch_num=self.convention.epoch_index(state))

    def run_stop(self, status: str) -> int:
        """Closes a block left open (a run stopped by max_steps between evaluations); returns the time in ms."""
        self._end_block()
        now = int(time.time() * 1000)
        self.log.end(C.RUN_STOP, time_ms=now, status=status)
        return now

    def _end_block(self) -> None:
        if self._block_first is not None:
            self.log.end(C.BLOCK_STOP, first_epoch_num=self._block_first)
            self._block_first = None


def log_submission(log: MLPerfLogger, cfg) -> None:
    """Submission keys; MLPerf requires them before init_stop."""
    log.event(C.SUBMISSION_BENCHMARK, cfg.submission_benchmark)
    log.event(C.SUBMISSION_ORG, cfg.submission_org)
    log.event(C.SUBMISSION_DIVISION, cfg.submission_division)
    log.event(C.SUBMISSION_STATUS, cfg.submission_status)
    log.event(C.SUBMISSION_PLATFORM, cfg.submission_platform)


def log_hyperparameters(log: MLPerfLogger, cfg, convention: LogConvention, train_samples: int,
                        eval_samples: int) -> None:
    """Each once, as both benchmarks' rules want (eval_samples: the samples one evaluation reads)."""
    log.event(C.SEED, cfg.seed)
    log.event(C.GLOBAL_BATCH_SIZE, cfg.batch_size)
    log.event(C.GRADIENT_ACCUMULATION_STEPS, 1)
    log.event(C.TRAIN_SAMPLES, train_samples)
    log.event(C.EVAL_SAMPLES, eval_samples)
    for key, value in convention.optimizer_keys(cfg).items():
        log.event(key, value)
