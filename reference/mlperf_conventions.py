"""What each MLPerf recommendation benchmark's rules want in the log, chosen by
``submission_benchmark``.

The two generations disagree on what epoch_num means and on the optimizer keys:
- ``dlrm`` (training 0.7.0 - 2.1.0): epoch_num is 1-based and fractional (the
  first sample of the run is 1.0); SGD with polynomial decay, keys of
  closed_dlrm.yaml (sgd_opt_*, lr_decay_start_steps).
- ``dlrm_dcnv2`` (training 3.0.0 - 6.0.0): epoch_num is the fraction of the
  epoch trained, from 0 (the RCP checker takes the last eval_accuracy's
  epoch_num as the epochs to converge); Adagrad, the keys closed_dlrm_dcnv2.yaml
  checks, each once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mlperf_logging.mllog import constants as C

from .training_state import TrainingState


def _dlrm_optimizer_keys(cfg) -> dict:
    keys = {C.OPT_NAME: cfg.optimizer, C.OPT_BASE_LR: cfg.learning_rate, C.OPT_LR_WARMUP_STEPS: cfg.warmup_steps,
            "lr_decay_start_steps": cfg.decay_start_step}
    if cfg.optimizer == "sgd":
        keys.update({"sgd_opt_base_learning_rate": cfg.learning_rate,
                     "sgd_opt_learning_rate_decay_steps": cfg.decay_steps,
                     "sgd_opt_learning_rate_decay_poly_power": cfg.decay_power})
    else:
        keys.update({C.OPT_ADAGRAD_EPSILON: cfg.adagrad_eps, C.OPT_ADAGRAD_LR_DECAY: cfg.adagrad_lr_decay,
                     "opt_learning_rate_decay_steps": cfg.decay_steps,
                     "opt_learning_rate_decay_poly_power": cfg.decay_power})
    return keys


def _dcnv2_optimizer_keys(cfg) -> dict:
    # Weight decay and the initial accumulator are not settings of this package:
    # build_optimizer's Adagrad has none and starts every accumulator at 0.
    return {C.OPT_NAME: cfg.optimizer, C.OPT_BASE_LR: cfg.learning_rate,
            C.OPT_ADAGRAD_LR_DECAY: cfg.adagrad_lr_decay, C.OPT_WEIGHT_DECAY: 0,
            C.OPT_ADAGRAD_INITIAL_ACCUMULATOR_VALUE: 0, C.OPT_ADAGRAD_EPSILON: cfg.adagrad_eps,
            C.OPT_LR_WARMUP_STEPS: cfg.warmup_steps, C.OPT_LR_DECAY_START_STEP: cfg.decay_start_step,
            C.OPT_LR_DECAY_STEPS: cfg.decay_steps}


@dataclass(frozen=True)
class LogConvention:
    benchmark: str
    first_epoch_num: int                    # epoch_num of the run's first sample
    optimizer_keys: Callable[[object], dict]  # config -> the optimizer's logged keys, in order

    def epoch_num(self, state: TrainingState, batches_per_epoch: int) -> float:
        """epoch_num of the point ``state`` is at: fractional, from ``first_epoch_num``."""
        return self.first_epoch_num + state.epochs_trained(batches_per_epoch)

    def epoch_index(self, state: TrainingState) -> int:
        """epoch_num of the epoch ``state`` is in (epoch_start and epoch_stop)."""
        return self.first_epoch_num + state.epoch


CONVENTIONS = {
    "dlrm": LogConvention("dlrm", 1, _dlrm_optimizer_keys),
    "dlrm_dcnv2": LogConvention("dlrm_dcnv2", 0, _dcnv2_optimizer_keys),
}


def convention_for(benchmark: str) -> LogConvention:
    """Raises ValueError for a benchmark this package does not log."""
    if benchmark not in CONVENTIONS:
        raise ValueError(f"submission_benchmark {benchmark!r}: the MLPerf log knows {', '.join(CONVENTIONS)}")
    return CONVENTIONS[benchmark]
