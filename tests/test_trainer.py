"""The training loop's collaborators, each on its own; tests/test_train.py runs whole trainings."""

import json

import pytest

from reference.checkpoint import CheckpointPolicy
from reference.mlperf_conventions import convention_for
from reference.mlperf_log import RunBracketing
from reference.trainer import EvalSchedule, RunStatus
from reference.training_state import TrainingState


@pytest.mark.parametrize("interval,due,next_after", [
    (0, [10], {0: 10, 9: 10}),
    (4, [4, 8, 10], {0: 4, 3: 4, 4: 8, 8: 10, 9: 10}),
    (5, [5, 10], {0: 5, 5: 10}),
])
def test_eval_schedule(interval, due, next_after):
    evals = EvalSchedule(interval, batches_per_epoch=10)
    assert [n for n in range(1, 11) if evals.due(n)] == due
    assert {i: evals.next_after(i) for i in next_after} == next_after


def test_checkpoint_policy():
    assert [s for s in range(1, 13) if CheckpointPolicy("c.pt", 5).due(s)] == [5, 10]
    assert not any(CheckpointPolicy("c.pt", 0).due(s) for s in range(1, 13))
    assert not any(CheckpointPolicy(None, 5).due(s) for s in range(1, 13))
    assert CheckpointPolicy("c.pt", 0).at_end and not CheckpointPolicy(None, 5).at_end


class RecordingLog:
    def __init__(self):
        self.calls = []

    def start(self, key, value=None, time_ms=None, **metadata):
        self.calls.append(("start", key, metadata))

    def end(self, key, value=None, time_ms=None, **metadata):
        self.calls.append(("end", key, metadata))

    def event(self, key, value=None, **metadata):
        self.calls.append(("event", key, value, metadata))


@pytest.mark.parametrize("benchmark, first", [("dlrm", 1), ("dlrm_dcnv2", 0)])  # where each counts epoch_num from
def test_bracketing_opens_a_block_per_evaluation_and_closes_one_left_open(benchmark, first):
    log = RecordingLog()
    mlperf = RunBracketing(log, batches_per_epoch=4, convention=convention_for(benchmark))
    state = TrainingState()
    mlperf.run_start()
    mlperf.epoch_start(state)
    for _ in range(3):  # evaluation after batch 2, then stopped after batch 3 (max_steps)
        mlperf.before_step(state, block_end=2 if state.batch_in_epoch < 2 else 4)
        state.step += 1
        state.batch_in_epoch += 1
        if state.batch_in_epoch == 2:
            assert mlperf.evaluation(state, lambda: {"auc": 0.75}) == {"auc": 0.75}
    mlperf.run_stop(RunStatus.ABORTED)
    assert [c[:2] for c in log.calls] == [
        ("start", "run_start"), ("start", "epoch_start"), ("start", "block_start"), ("end", "block_stop"),
        ("start", "eval_start"), ("end", "eval_stop"), ("event", "eval_accuracy"), ("start", "block_start"),
        ("end", "block_stop"), ("end", "run_stop")]
    blocks = [c[2] for c in log.calls if c[1] == "block_start"]
    assert blocks == [{"first_epoch_num": first, "epoch_count": 0.5},
                      {"first_epoch_num": first + 0.5, "epoch_count": 0.5}]
    assert log.calls[1][2] == {"epoch_num": first}
    assert log.calls[6] == ("event", "eval_accuracy", 0.75, {"epoch_num": first + 0.5})
    assert log.calls[-1][2]["status"] == "aborted"


def test_run_statuses_are_the_strings_mlperf_logs():
    assert json.dumps({"status": RunStatus.SUCCESS}) == '{"status": "success"}'
    assert RunStatus.ABORTED == "aborted" and f"{RunStatus.INFERENCE}" == "inference"
